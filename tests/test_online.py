"""The online objectives' foundations: prompts as examples, prompt-only records, a short RLOO fit on a reward
function (its metrics, its reference untouched), and the bad inputs refused before any model loads."""

from __future__ import annotations

import csv

import pytest
import torch

from hhalign.data.prompts import PromptTokenizer
from hhalign.data.records import Record, to_record
from hhalign.errors import ConfigError
from tests.conftest import fit_tiny, write_jsonl


def test_each_distinct_prompt_once_bounded_to_leave_room_for_a_completion(tokenizer):
    records = [
        Record("\n\nHuman: hi\n\nAssistant: a", "\n\nHuman: hi\n\nAssistant: b", None, "x:1"),
        Record("\n\nHuman: hi\n\nAssistant: c", "\n\nHuman: hi\n\nAssistant: d", None, "x:2"),
        Record("", "", "\n\nHuman: what now?\n\nAssistant:", "x:3"),
        Record("", "", "\n\nHuman: " + "word " * 200 + "\n\nAssistant:", "x:4"),
    ]
    tokenize = PromptTokenizer(tokenizer, max_length=64, max_response_length=32)
    prompts = tokenize(records)
    assert len(prompts) == 2 and all(len(p.prompt) <= 32 for p in prompts)
    assert tokenize.counts["drop:repeated_prompt"] == 1 and tokenize.counts["drop:prompt_too_long"] == 1
    assert tokenizer.decode(prompts[0].prompt).endswith("Assistant:")


def test_prompt_only_records_read_and_pair_objectives_drop_them():
    record = to_record({"prompt": "\n\nHuman: hi\n\nAssistant:"}, "f.jsonl:3")
    assert (record.prompt, record.chosen, record.rejected) == ("\n\nHuman: hi\n\nAssistant:", "", "")
    with pytest.raises(Exception, match="f.jsonl:4: field 'prompt' must be a string"):
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
