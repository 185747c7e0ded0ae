"""vLLM as the rollout engine, the real one, on this CPU: it samples what the policy would (its log-probs are the
policy's own), the weights it samples with are the policy's after every optimizer step (LoRA merged), an online
fit logs the engine–trainer gap, survives SIGTERM and resumes, and leaves no process behind."""

from __future__ import annotations

import copy
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hhalign.models.engines import HFEngine, open_engine
from hhalign.models.generation import completion_logps
from hhalign.models.loading import load_model
from hhalign.models.sampling import Sampling
from tests.conftest import REPO, tiny_fit_args, write_jsonl

pytestmark = pytest.mark.engine

TOLERANCE = 1e-3
"""Engine against trainer, nats per sequence of up to 12 tokens in fp32: measured here at most 1.3e-5."""

QUESTIONS = ("How do I bake bread?", "Hi", "What is the capital of France, and why?")


@pytest.fixture(scope="module")
def engine():
    started = open_engine("vllm")
    yield started
    started.close()


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return load_model(str(tiny_dir)).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(f"\n\nHuman: {q}\n\nAssistant:")["input_ids"] for q in QUESTIONS]


def _gap(engine, model, prompts, completions) -> float:
    engine_side = engine.logps_of(model, prompts, completions)
    trainer_side = completion_logps(model, prompts, completions)
    return max(abs(a - b) for a, b in zip(engine_side, trainer_side, strict=True))


def test_the_engine_samples_with_the_policys_own_log_probs_seeded(engine, policy, prompts, tokenizer):
    stop, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    groups = engine.sample(policy, prompts, 2, Sampling(12), stop, pad, seed=5)
    assert [len(g) for g in groups] == [2, 2, 2]
    flat = [c for g in groups for c in g]
    repeated = [p for p in prompts for _ in range(2)]
    trainer_side = completion_logps(policy, repeated, [c.tokens for c in flat])
    for completion, expected in zip(flat, trainer_side, strict=True):
        assert len(completion.logps) == len(completion.tokens) > 0
        assert sum(completion.logps) == pytest.approx(expected, abs=TOLERANCE)
    assert engine.sample(policy, prompts, 2, Sampling(12), stop, pad, seed=5) == groups  # the same draws
    assert engine.sample(policy, prompts, 2, Sampling(12), stop, pad, seed=6) != groups
    assert all(g[0].tokens != g[1].tokens for g in groups)  # K samples of a prompt are K draws


def _drift(model, prompts, groups) -> tuple[float, float]:
    """Σ_t (log p(x_t | x_<t) + H_t) of each sampled completion, ``H_t`` the entropy of the model's distribution at
    token t: zero in expectation when every token is drawn from that distribution, at every position (a sharper or
    flatter sampler moves it). Its mean over the completions and the mean's standard error."""
    values = []
    with torch.no_grad():
        for prompt, group in zip(prompts, groups, strict=True):
            for completion in group:
                ids = torch.tensor([[*prompt, *completion.tokens]])
                logps = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
                drawn = logps.gather(1, torch.tensor(completion.tokens)[:, None]).squeeze(1)
                entropy = -(logps.exp() * logps).sum(-1)
                values.append(float((drawn + entropy).sum()))
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5


@pytest.mark.parametrize("engine_name", ["hf", "vllm"])
def test_each_engine_draws_every_token_from_the_policys_distribution(engine, engine_name, policy, prompts, tokenizer):
    """Both engines train alike only if both sample the policy itself, at every position, not just the first: 192
    completions of 12 tokens, and the same statistic of a sampler at temperature 0.9 as the check's own check.
    (SmolLM2, 256 completions of 48 tokens each, measured here: hf 0.42 ± 1.00, vLLM 0.49 ± 0.99.)"""
    sampler = HFEngine() if engine_name == "hf" else engine
    peaked = copy.deepcopy(policy)
    with torch.no_grad():
        peaked.lm_head.weight.mul_(4.0)  # the tiny model is near uniform, where any sampler would pass
    stop, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    drift, error = _drift(peaked, prompts, sampler.sample(peaked, prompts, 64, Sampling(12), stop, pad, seed=3))
    assert abs(drift) < 4 * error
    sharper, error = _drift(peaked, prompts, sampler.sample(peaked, prompts, 64, Sampling(12, 0.9), stop, pad, seed=3))
    assert sharper > 4 * error


def test_a_rollout_larger_than_one_prefill_chunk_draws_every_seeded_sample(engine, policy, prompts, tokenizer):
    """256 seeded requests hold more prompt tokens than vLLM prefills in one step on a CPU: prefilled in chunks,
    a request's first draw is discarded and its generator rewound, which a CPU generator refuses ("CPU Generator
    does not use offset"), so the engine prefills whole prompts."""
    stop, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    groups = engine.sample(policy, [p * 4 for p in prompts], 96, Sampling(2), stop, pad, seed=1)
    assert [len(g) for g in groups] == [96] * 3 and len({tuple(c.tokens) for g in groups for c in g}) > 3


def test_greedy_replies_and_their_ends_are_those_of_generate(engine, policy, prompts, tokenizer):
    greedy, pad = Sampling(12, temperature=0.0), tokenizer.pad_token_id
    hf = HFEngine().sample(policy, prompts, 1, greedy, tokenizer.eos_token_id, pad)
    stop = hf[0][0].tokens[3]  # a token the first reply writes: with it as the stop token, that reply ends there
    hf = HFEngine().sample(policy, prompts, 1, greedy, stop, pad)
    ours = engine.sample(policy, prompts, 1, greedy, stop, pad)
    assert [(g[0].tokens, g[0].finished) for g in ours] == [(g[0].tokens, g[0].finished) for g in hf]
    assert ours[0][0].finished and ours[0][0].tokens[-1] == stop and len(ours[0][0].tokens) <= 4


def test_every_draw_samples_the_weights_as_they_are_now(engine, policy, prompts, tokenizer, monkeypatch):
    """Three optimizer steps move the policy; the engine's log-probs of fixed completions follow it (its prefix
    cache, filled before the steps, emptied). With the push broken, the same check fails by far."""
    completions = [tokenizer(" Knead it, then bake it.")["input_ids"]] * len(prompts)
    trained = copy.deepcopy(policy).train()
    assert _gap(engine, trained, prompts, completions) < TOLERANCE  # before: prompts cached in the engine
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-3)
    before = completion_logps(trained, prompts, completions)
    for _ in range(3):
        loss = -sum(completion_logps_with_grad(trained, prompts, completions))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = completion_logps(trained, prompts, completions)
    moved = max(abs(a - b) for a, b in zip(after, before, strict=True))
    assert moved > 1000 * TOLERANCE
    assert _gap(engine, trained, prompts, completions) < TOLERANCE
    monkeypatch.setattr(engine, "push", lambda model: None)  # a sync that silently does nothing
    assert _gap(engine, policy, prompts, completions) > 100 * TOLERANCE  # it samples the trained weights


def completion_logps_with_grad(model, prompts, completions) -> list[torch.Tensor]:
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        ids = torch.tensor([[*prompt, *completion]])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        out.append(logits.log_softmax(-1).gather(1, torch.tensor(completion)[:, None]).sum())
    return out


def test_a_lora_policy_is_pushed_merged_and_keeps_its_adapters(engine, policy, prompts, tokenizer):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = get_peft_model(copy.deepcopy(policy), config).eval()
    completions = [tokenizer(" Knead it.")["input_ids"]] * len(prompts)
    own = completion_logps(lora, prompts, completions)
    plain = completion_logps(policy, prompts, completions)
    assert max(abs(a - b) for a, b in zip(own, plain, strict=True)) > 10 * TOLERANCE  # the adapters matter
    assert _gap(engine, lora, prompts, completions) < TOLERANCE
    assert completion_logps(lora, prompts, completions) == own  # unmerged again: training goes on as before
    assert any("lora_A" in name for name, _ in lora.named_parameters())


def _fit(tmp_path: Path, tiny_dir: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    args = tiny_fit_args(
        tmp_path, tiny_dir, data, "configs/tiny/rloo.yaml",
        "--model.reward_model", "null", "--model.reward_functions", "[tests.online_rewards:share_of_e]",
        "--model.max_completion_length", "8", "--data.batch_size", "2", "--model.rollout_engine", "vllm",
        "--model.importance_sampling_cap", "2.0", "--trainer.callbacks+=tests.probes.RecordChildren",
        "--trainer.callbacks.out", str(tmp_path / "children"), *extra, steps=4, val_every=2,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hhalign", *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_an_online_fit_on_the_engine_logs_the_gap_stops_on_sigterm_resumes_and_leaves_no_process(tmp_path, tiny_dir):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"\n\nHuman: say {w}\n\nAssistant:"} for w in "abcdefgh"])
    kill = ("--trainer.callbacks+=tests.faults.KillAtStep", "--trainer.callbacks.step", "2")
    stopped = _fit(tmp_path, tiny_dir, data, *kill, "--trainer.callbacks.signal_name", "SIGTERM")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "hhalign: stopped by SIGTERM after step 2" in stopped.stderr
    resumed = _fit(tmp_path, tiny_dir, data, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with (tmp_path / "tiny" / "t" / "metrics.csv").open() as handle:
        train = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    assert [int(row["step"]) for row in train] == [0, 1, 2, 3]
    for row in train:
        assert float(row["train/engine_logp_gap"]) < 1e-4  # per token
        assert abs(float(row["train/engine_kl"])) < TOLERANCE
    counts = (tmp_path / "children").read_text().split()
    assert len(counts) >= 4 and set(counts) == {"0"}  # after every step: no worker process to orphan


def test_generate_and_evaluate_sample_through_the_engine_as_through_generate(engine, policy, prompts, tokenizer):
    """Greedy, so both engines must give the same replies: ``generate``'s reply, and an evaluation's samples of a
    policy and of another model as its reference (the engine takes each one's weights in turn)."""
    from types import SimpleNamespace

    from hhalign.tools.judging import Judge, evaluate
    from hhalign.tools.use import generate_reply

    greedy = Sampling(8, temperature=0.0)
    assert generate_reply(policy, tokenizer, "Hi", greedy, engine=engine) == generate_reply(
        policy, tokenizer, "Hi", greedy
    )
    other = copy.deepcopy(policy)
    with torch.no_grad():
        other.lm_head.weight.mul_(1.5)  # tied to the embeddings: another model of the same shapes
    judge = Judge(lambda sequences: [float(len(s)) for s in sequences], "length")
    pairs = [SimpleNamespace(prompt=p) for p in prompts]
    stop, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    by_engine = evaluate(policy, other, judge, pairs, greedy, stop, pad, progress=False, engine=engine)
    by_generate = evaluate(policy, other, judge, pairs, greedy, stop, pad, progress=False)
    keys = ("prompt_index", "policy", "reference", "policy_finished", "reference_finished")
    assert [{k: r[k] for k in keys} for r in by_engine.rows] == [{k: r[k] for k in keys} for r in by_generate.rows]
    assert any(r["policy"] != r["reference"] for r in by_engine.rows)  # two models were sampled, not one twice


@pytest.mark.sharded
@pytest.mark.parametrize("strategy", ["fsdp-lora"])  # DDP too (measured here); left out of the suite for its time
def test_each_rank_samples_from_its_own_engine_with_the_weights_of_every_step(tmp_path, tiny_dir, strategy):
    """Two training processes, an engine in each over the trainer's process group: under FSDP the full weights
    are gathered on every rank before each step (LoRA merged by hand from the gathered state), under DDP (the
    ``ddp`` parameter) each rank pushes its own copy. The engine-trainer gap stays at float noise through steps
    that move the policy, which it would not if a step's weights were missed (a large learning rate makes each
    step count)."""
    from tests.sharded import fsdp_overlay, run_cli, train_rows

    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"\n\nHuman: say {w}\n\nAssistant:"} for w in "abcdefgh"])
    parallel = ["--config", str(fsdp_overlay(tmp_path)), "--model.lora_rank", "4"] if strategy == "fsdp-lora" else [
        "--trainer.strategy", "ddp", "--trainer.devices", "2"]  # fmt: skip
    args = tiny_fit_args(
        tmp_path, tiny_dir, data, "configs/tiny/rloo.yaml", *parallel,
        "--model.reward_model", "null", "--model.reward_functions", "[tests.online_rewards:share_of_e]",
        "--model.max_completion_length", "8", "--data.batch_size", "2", "--data.val_batch_size", "1",
        "--model.rollout_engine", "vllm", "--model.optimizer.init_args.lr", "0.05", steps=3, val_every=3,
    )  # fmt: skip
    fit = run_cli(args)
    assert fit.returncode == 0, fit.stderr[-4000:]
    rows = train_rows(tmp_path / "tiny" / "t")
    assert sorted(rows) == [0, 1, 2]
    for row in rows.values():
        assert float(row["train/engine_logp_gap"]) < 1e-4, row  # per token
        assert abs(float(row["train/engine_kl"])) < TOLERANCE, row
    start, trained = (load_file(d / "model.safetensors") for d in (tiny_dir, tmp_path / "tiny" / "t" / "export"))
    moved = max(float((trained[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-3  # the steps changed what the engine had to follow
