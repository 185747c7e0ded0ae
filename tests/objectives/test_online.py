"""The online objectives' foundations: prompts as examples, prompt-only records, a short RLOO fit on a reward
function (its metrics, its reference untouched), and the bad inputs refused before any model loads."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from hhalign.data.formats import to_record
from hhalign.data.prompts import PromptTokenizer
from hhalign.data.records import Record
from hhalign.errors import ConfigError
from tests.conftest import fit_tiny, tiny_fit_args, write_jsonl


def test_each_distinct_prompt_once_bounded_to_leave_room_for_a_completion(tokenizer):
    records = [
        Record("\n\nHuman: hi\n\nAssistant: a", "\n\nHuman: hi\n\nAssistant: b", None, "x:1"),
        Record("\n\nHuman: hi\n\nAssistant: c", "\n\nHuman: hi\n\nAssistant: d", None, "x:2"),
        Record(None, None, "\n\nHuman: what now?\n\nAssistant:", "x:3"),
        Record(None, None, "\n\nHuman: " + "word " * 200 + "\n\nAssistant:", "x:4"),
    ]
    tokenize = PromptTokenizer(tokenizer, max_length=64, max_response_length=32)
    prompts = tokenize(records)
    assert len(prompts) == 2 and all(len(p.prompt) <= 32 for p in prompts)
    assert tokenize.counts["drop:repeated_prompt"] == 1 and tokenize.counts["drop:prompt_too_long"] == 1
    assert tokenizer.decode(prompts[0].prompt).endswith("Assistant:")


def test_prompt_only_records_read_and_pair_objectives_drop_them():
    record = to_record({"prompt": "\n\nHuman: hi\n\nAssistant:"}, "f.jsonl:3")
    assert (record.prompt, record.chosen, record.rejected) == ("\n\nHuman: hi\n\nAssistant:", None, None)
    with pytest.raises(Exception, match="f.jsonl:4: field 'prompt' must be a string or a list"):
        to_record({"prompt": 3}, "f.jsonl:4")


def test_rloo_fit_on_a_reward_function_logs_the_online_metrics_and_leaves_the_reference(tmp_path, tiny_dir):
    from hhalign.models.loading import load_model
    from hhalign.training.checkpointing import weights_fingerprint

    data = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": f"\n\nHuman: say {w}\n\nAssistant:"}
            for w in ("yes", "no", "maybe", "please", "thanks", "hello", "bye", "ok")
        ],
    )
    run = fit_tiny(
        tmp_path, tiny_dir, data, "configs/tiny/rloo.yaml",
        "--model.reward_model", "null", "--model.reward_functions", "[tests.online_rewards:share_of_e]",
        "--model.max_completion_length", "8", "--data.batch_size", "2", "--data.valid_fraction", "0.25",
        steps=2, val_every=2,
    )  # fmt: skip
    with (run / "metrics.csv").open() as handle:
        table = list(csv.DictReader(handle))
    train = [r for r in table if r.get("train/loss")]
    assert len(train) == 2
    for name in ("reward", "kl_k1", "kl_k3", "entropy", "completion_length", "eos_share", "advantage_std",
                 "zero_advantage_share", "clip_fraction", "reward_share_of_e", "sampling_seconds"):  # fmt: skip
        assert train[-1][f"train/{name}"] != "", name
    assert float(train[-1]["train/clip_fraction"]) == 0.0  # one optimizer step per sample: the ratio is 1
    assert float(train[0]["train/kl_k3"]) == pytest.approx(0.0, abs=1e-6)  # step 0: policy = reference
    assert any(r.get("val/reward") for r in table)
    assert (run / "samples.jsonl").read_text().count("\n") == 2 * 4  # two prompts x K at step 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(k.startswith("ref.") for k in ckpt["state_dict"])
    assert weights_fingerprint(load_model(str(tiny_dir))) == ckpt["hhalign_fingerprints"]["reference"]


def test_num_iterations_samples_every_prompt_of_the_epoch_once_and_clips_the_second_pass(tmp_path, tiny_dir):
    """6 training prompts, 2 a rollout, ``num_iterations 2`` and 2 minibatches: an epoch is 3 rollouts of 4
    optimizer steps each (``global_step`` 12), every prompt sampled exactly once; with ε 0 the first step of a
    rollout is on-policy (nothing clips) and later ones clip; the log has one row per rollout."""
    data = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"\n\nHuman: say {w}\n\nAssistant:"} for w in "abcdefgh"]
    )
    probe = tmp_path / "probe"
    run = fit_tiny(
        tmp_path, tiny_dir, data, "configs/tiny/rloo.yaml",
        "--model.reward_model", "null", "--model.reward_functions", "[tests.online_rewards:share_of_e]",
        "--model.max_completion_length", "8", "--data.batch_size", "2", "--data.valid_fraction", "0.25",
        "--model.num_iterations", "2", "--model.num_minibatches", "2", "--model.epsilon", "0.0",
        "--model.optimizer.init_args.lr", "1e-2", "--model.log_samples_every_n_steps", "4",
        "--trainer.callbacks+=tests.probes.RecordRollouts", f"--trainer.callbacks.out={probe}", steps=12, val_every=3,
    )  # fmt: skip
    rows = [json.loads(line) for line in (probe / "rollouts-rank0.jsonl").read_text().splitlines()]
    training = [row for row in rows if row["training"]]
    assert [row["step"] for row in training] == [0, 4, 8]
    prompts = [tuple(p) for row in training for p in row["prompts"]]
    assert len(prompts) == len(set(prompts)) == 6
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    with (run / "metrics.csv").open() as handle:
        train = [r for r in csv.DictReader(handle) if r.get("train/loss")]
    assert len(train) == 3
    assert all(float(r["train/clip_fraction"]) > 0 for r in train)  # steps 2-4 of each rollout clip at ε 0
    steps = {json.loads(line)["step"] for line in (run / "samples.jsonl").read_text().splitlines()}
    assert steps == {0, 4, 8}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reward_functions": ["tests.online_rewards:nope"]}, "has no 'nope'"),
        ({"reward_functions": ["no_such_module_here:f"]}, "cannot import"),
        ({}, "needs a reward"),
        ({"reward_functions": ["tests.online_rewards:constant"], "num_generations": 1}, "K >= 2"),
        ({"reward_functions": ["tests.online_rewards:constant"], "reward_weights": [1.0, 2.0]}, "one weight per"),
    ],
)
def test_bad_online_options_are_one_clear_error_before_any_model_loads(options, message):
    from hhalign.objectives.rloo import RLOOModule

    with pytest.raises(ConfigError, match=message):
        RLOOModule("no/such/model/anywhere", **options)


def test_a_causal_lm_as_reward_model_is_refused(tiny_dir):
    from hhalign.errors import UserError
    from hhalign.rewards.model import RewardModel

    with pytest.raises(UserError, match="is not a reward model"):
        RewardModel.load(str(tiny_dir))


def _online_fail(tmp_path: Path, tiny_dir: Path, *args: str) -> str:
    """Run an RLOO fit expecting a user error: one ``hhalign: error:`` line, an earlier run left as it was."""
    from hhalign.cli import main

    earlier = tmp_path / "tiny" / "earlier" / "metrics.csv"
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_text("step,train/loss\n0,0.69\n")
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"\n\nHuman: say {i}\n\nAssistant:"} for i in range(8)])
    with pytest.raises(SystemExit) as exited:
        main(tiny_fit_args(tmp_path, tiny_dir, data, "configs/tiny/rloo.yaml", "--model.max_completion_length", "4",
                           "--data.batch_size", "2", *args, steps=1, val_every=1))  # fmt: skip
    assert earlier.read_text() == "step,train/loss\n0,0.69\n"
    message = str(exited.value.code)
    assert message.startswith("hhalign: error: ") and "\n" not in message.strip(), message
    return message


def test_a_reward_model_with_another_tokenizer_is_refused(tmp_path, tiny_dir, tiny_judge):
    from hhalign.models.loading import load_tokenizer

    other = tmp_path / "other-judge"
    shutil.copytree(tiny_judge, other)
    tokenizer = load_tokenizer(str(other))
    tokenizer.add_tokens(["<|not-the-policys|>"])
    tokenizer.save_pretrained(other)
    message = _online_fail(tmp_path, tiny_dir, "--model.reward_model", str(other))
    assert "uses another tokenizer than the policy" in message and str(other) in message


def test_a_reward_function_of_the_wrong_shape_is_one_line_naming_it(tmp_path, tiny_dir):
    message = _online_fail(
        tmp_path, tiny_dir, "--model.reward_model", "null", "--model.reward_functions",
        "[tests.online_rewards:wrong_shape]",
    )  # fmt: skip
    assert "tests.online_rewards:wrong_shape" in message and "one number per completion" in message


def test_completions_end_at_their_first_eos_when_pad_is_eos(tiny_dir, tokenizer):
    from hhalign.models.generation import Sampling, sample_groups
    from hhalign.models.loading import load_model

    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the tiny tokenizer pads with EOS, as SmolLM2's does
    model = load_model(str(tiny_dir))
    eos = tokenizer.eos_token_id

    def likelier_eos(module, args, logits):  # about 1 in 8 a token, so that a batch holds both kinds of completion
        logits[..., eos] += 6.0
        return logits

    model.lm_head.register_forward_hook(likelier_eos)
    prompts = [tokenizer.encode(f"\n\nHuman: tell me {w}\n\nAssistant:") for w in ("a story", "why", "more")]
    groups = sample_groups(model, prompts, 4, Sampling(12), eos, tokenizer.pad_token_id, seed=3, batch_size=12)
    completions = [c for group in groups for c in group]
    assert {c.finished for c in completions} == {True, False}
    assert len({len(c.tokens) for c in completions}) > 2
    for c in completions:
        assert c.tokens.count(eos) == (1 if c.finished else 0)
        assert c.finished == (c.tokens[-1] == eos)


def test_a_mixed_length_group_batch_scores_as_each_completion_alone(tiny_dir, tiny_judge, tokenizer):
    """Policy log-probs and reward-model scores of K completions packed behind one prompt, in a batch of
    prompts of other lengths padded with EOS, equal those of each prompt + completion computed alone."""
    from hhalign.data.batches import collate_groups
    from hhalign.models.generation import completion_logps
    from hhalign.models.loading import load_model
    from hhalign.objectives.rloo import RLOOModule
    from hhalign.rewards.model import RewardModel

    eos = tokenizer.eos_token_id
    prompts = [
        tokenizer.encode("\n\nHuman: hi\n\nAssistant:"),
        tokenizer.encode("\n\nHuman: a longer question here?\n\nAssistant:"),
    ]
    words = [[" yes", " no thanks", " well, maybe later"], [" sure thing, friend", " ok", " never"]]
    completions = [[tokenizer.encode(w) + ([eos] if j != 1 else []) for j, w in enumerate(g)] for g in words]
    module = RLOOModule(str(tiny_dir), reward_functions=["tests.online_rewards:constant"])
    module.configure_model()
    module.eval()
    batch = collate_groups(prompts, completions, tokenizer.pad_token_id)
    with torch.no_grad():
        logps, mask = module.token_logps(module.policy, batch)
    flat = [c for g in completions for c in g]
    assert mask.sum(1).tolist() == [len(c) for c in flat]
    alone = completion_logps(load_model(str(tiny_dir)), [p for p in prompts for _ in range(3)], flat, batch_size=1)
    torch.testing.assert_close((logps * mask).sum(1), torch.tensor(alone), rtol=1e-5, atol=1e-5)

    judge = RewardModel.load(str(tiny_judge))
    packed = judge.score_groups(prompts, completions)
    one_at_a_time = torch.cat([judge.score([p + c]) for p, g in zip(prompts, completions, strict=True) for c in g])
    torch.testing.assert_close(packed.flatten(), one_at_a_time, rtol=1e-5, atol=1e-5)


def test_a_group_shares_its_prompts_prefill_and_draws_what_plain_copies_draw(tiny_dir, tokenizer):
    """The prefill computed once per prompt and its cache repeated K times gives, from the same seed, the very
    completions that K left-padded copies of each prompt give (prompts of several lengths, pad == EOS)."""
    from hhalign.models.generation import Sampling, sample_completions, sample_groups
    from hhalign.models.loading import load_model

    model = load_model(str(tiny_dir))
    texts = ["hi", "tell me a long story about the sea and its ships", "why?", "what is the best tea to drink"]
    prompts = [tokenizer.encode(f"\n\nHuman: {t}\n\nAssistant:") for t in texts]
    assert len({len(p) for p in prompts}) > 2
    eos, pad, k = tokenizer.eos_token_id, tokenizer.pad_token_id, 4
    groups = sample_groups(model, prompts, k, Sampling(10), eos, pad, seed=5, batch_size=8)
    copies = sample_completions(model, [p for p in prompts for _ in range(k)], Sampling(10), eos, pad, 5, 8)
    assert groups == [copies[i * k : (i + 1) * k] for i in range(len(prompts))]
    assert len({tuple(c.tokens) for g in groups for c in g}) > len(prompts)  # the K samples of a prompt differ


def test_the_shared_prefill_cache_gives_the_logits_of_the_whole_prompt(tiny_dir, tokenizer):
    """The next-token logits read through the repeated cache equal a plain forward of each left-padded prompt,
    for every one of its K copies: the samples above are the same because the distributions are."""
    from hhalign.data.batches import collate_sequences
    from hhalign.models.generation import _shared_prefill
    from hhalign.models.loading import load_model

    model = load_model(str(tiny_dir)).eval()
    prompts = [
        tokenizer.encode(t) for t in ("\n\nHuman: hi\n\nAssistant:", "\n\nHuman: a much longer one?\n\nAssistant:")
    ]
    batch = collate_sequences(prompts, None, tokenizer.pad_token_id, padding_side="left")
    ids, mask, k = batch.input_ids, batch.attention_mask, 3
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        cache = _shared_prefill(model, ids, mask, k)
        last = model(
            input_ids=ids[:, -1:].repeat_interleave(k, 0),
            attention_mask=mask.repeat_interleave(k, 0),
            position_ids=positions[:, -1:].repeat_interleave(k, 0),
            past_key_values=cache,
        ).logits[:, -1]
        whole = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    torch.testing.assert_close(last, whole.repeat_interleave(k, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_samples_go_to_a_wandb_table_when_wandb_is_on(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"\n\nHuman: say {i}\n\nAssistant:"} for i in range(8)])
    run = fit_tiny(
        tmp_path, tiny_dir, data, "configs/tiny/rloo.yaml", "--wandb_mode", "offline",
        "--model.reward_model", "null", "--model.reward_functions", "[tests.online_rewards:share_of_e]",
        "--model.max_completion_length", "4", "--data.batch_size", "2", "--model.log_samples_every_n_steps", "1",
        steps=1, val_every=1,
    )  # fmt: skip
    tables = list((run / "wandb").rglob("samples_*.table.json"))
    assert tables, sorted(p.name for p in (run / "wandb").rglob("*"))[:40]
    table = json.loads(tables[0].read_text())
    logged = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert "completion" in table["columns"] and len(table["data"]) == len(logged) == 2 * 4
    column = table["columns"].index("completion")
    assert [row[column] for row in table["data"]] == [row["completion"] for row in logged]


@pytest.mark.parametrize(("objective", "temperature"), [("RLOOModule", 0.7), ("OnlineDPOModule", 0.9)])
def test_the_engine_gap_is_to_the_distribution_sampled_from(tiny_dir, tokenizer, objective, temperature):
    """An engine whose log-probs are exactly the policy's at the sampling temperature has no gap and importance
    weights of 1, also for online DPO, whose own log-probs are at temperature 1 (they are not what was sampled)."""
    import hhalign

    module = getattr(hhalign, objective)(
        str(tiny_dir), reward_functions=["tests.online_rewards:constant"], temperature=temperature,
        max_completion_length=6, importance_sampling_cap=2.0,
    )  # fmt: skip
    module.configure_model()
    prompts = [tokenizer.encode(f"\n\nHuman: say {w}\n\nAssistant:") for w in ("yes", "something longer")]
    rollout = module.rollout(prompts, 2, seed=3)
    with torch.no_grad():
        rollout.engine_logps = module.token_logps(module.policy, rollout.batch, temperature)[0]  # a perfect engine
        prepared, metrics = module._prepared(rollout, module.forwards(rollout.batch))
    assert metrics["engine_logp_gap"][0].item() < 1e-6
    assert metrics["engine_kl"][0].abs().max().item() < 1e-5
    if objective == "RLOOModule":
        torch.testing.assert_close(prepared["engine_weights"], torch.ones(4))  # per completion (loss sequence)
