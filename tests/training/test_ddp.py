"""Two processes on the CPU (gloo): training runs, checkpoints are written once, and validation metrics,
reduced across processes, equal a single process's on the same weights."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_args


def _cli(tmp_path: Path, tiny_dir: Path, data: Path, subcommand: str, *args: str) -> subprocess.CompletedProcess:
    command = tiny_args(
        subcommand, "configs/tiny/dpo.yaml", tiny_dir, data, tmp_path, "--data.val_batch_size", "5", *args
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hhalign.cli", *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def _last_val(run_dir: Path) -> dict[str, float]:
    with open(run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/reward_accuracy")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


@pytest.mark.slow
def test_ddp_two_processes_match_a_single_process(tmp_path: Path, tiny_dir: Path, small_jsonl: Path, tiny_judge: Path):
    fit = _cli(
        tmp_path,
        tiny_dir,
        small_jsonl,
        "fit",
        "--trial_name",
        "ddp",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "2",
        "--trainer.callbacks+=hhalign.tools.evaluate.EvaluateAtFitEnd",  # one process evaluates, the other waits
        f"--trainer.callbacks.judge={tiny_judge}",
        "--trainer.callbacks.prompts=4",
        "--trainer.callbacks.max_new_tokens=4",
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    run_dir = tmp_path / "tiny" / "ddp"
    assert json.loads((run_dir / "eval" / "evaluation.json").read_text())["prompts"] == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best-step=2.ckpt",
        "last.ckpt",
        "step=2.ckpt",
    ]
    with open(run_dir / "metrics.csv") as handle:  # rank 0 alone writes the log: each step once
        steps = [int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    assert steps == [0, 1]
    with open(run_dir / "metrics.csv") as handle:
        assert sum(1 for r in csv.DictReader(handle) if r.get("eval/kl")) == 1

    single = _cli(
        tmp_path,
        tiny_dir,
        small_jsonl,
        "validate",
        "--trial_name",
        "single",
        "--ckpt_path",
        str(run_dir / "checkpoints" / "last.ckpt"),
    )
    assert single.returncode == 0, single.stderr[-3000:]
    distributed, alone = _last_val(run_dir), _last_val(tmp_path / "tiny" / "single")
    assert set(distributed) == set(alone) and "val/reward_accuracy" in alone
    for key, value in alone.items():  # 12 validation pairs in 3 batches: uneven shards, no pair twice
        assert distributed[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


@pytest.mark.slow
def test_ddp_online_ranks_sample_disjoint_prompts_whole_groups_and_sync_metrics(tmp_path: Path, tiny_dir: Path):
    """RLOO over 2 processes, two optimizer steps (minibatches) on each rollout: at each rollout the ranks draw
    other prompts, each rank samples all K completions of its prompts, and the logged validation reward is the
    mean over both ranks' samples."""
    from tests.conftest import write_jsonl

    data = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"\n\nHuman: tell me {i}\n\nAssistant:"} for i in range(16)]
    )
    probe = tmp_path / "probe"
    command = tiny_args(
        "fit", "configs/tiny/rloo.yaml", tiny_dir, data, tmp_path, "--trial_name", "online-ddp",
        "--model.reward_model", "null", "--model.reward_functions", "[tests.online_rewards:share_of_e]",
        "--model.max_completion_length", "4", "--data.batch_size", "2", "--data.val_batch_size", "2",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_steps", "4",
        "--model.num_minibatches", "2", "--trainer.val_check_interval", "2",
        "--trainer.callbacks+=tests.probes.RecordRollouts",
        f"--trainer.callbacks.out={probe}",
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    fit = subprocess.run(
        [sys.executable, "-m", "hhalign.cli", *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    ranks = [
        [json.loads(line) for line in (probe / f"rollouts-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)
    ]
    for step in (0, 2):
        drawn = [[tuple(p) for row in rows if row["training"] and row["step"] == step for p in row["prompts"]]
                 for rows in ranks]  # fmt: skip
        assert len(drawn[0]) == len(drawn[1]) == 2 and not set(drawn[0]) & set(drawn[1]), step
    weights = [json.loads((probe / f"weights-rank{r}.json").read_text()) for r in (0, 1)]
    assert weights[0] == weights[1]  # each minibatch's gradient averaged over both ranks
    for rows in ranks:
        for row in rows:
            k = 4 if row["training"] else 1
            assert [len(r) for r in row["rewards"]] == [k] * len(row["prompts"])
    validated = [row for rows in ranks for row in rows if not row["training"]]
    held_out = [tuple(p) for row in validated for p in row["prompts"]]
    assert len(held_out) == len(set(held_out)) == 4  # 16 prompts, a quarter held out, each once over both ranks
    rewards = [r for row in validated for group in row["rewards"] for r in group]
    with open(tmp_path / "tiny" / "online-ddp" / "metrics.csv") as handle:
        logged = [float(r["val/reward"]) for r in csv.DictReader(handle) if r.get("val/reward")]
    assert logged == pytest.approx([sum(rewards) / len(rewards)], abs=1e-6)


@pytest.mark.slow
def test_ddp_ppo_keeps_policy_and_critic_equal_on_both_ranks(tmp_path: Path, tiny_dir: Path):
    """PPO over 2 processes, two minibatches a rollout: the critic's gradient is averaged with the policy's, so
    both ranks end with the same weights, having sampled other prompts."""
    from tests.conftest import write_jsonl

    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"\n\nHuman: say {i}\n\nAssistant:"} for i in range(16)])
    probe = tmp_path / "probe"
    command = tiny_args(
        "fit", "configs/tiny/ppo.yaml", tiny_dir, data, tmp_path, "--trial_name", "ppo-ddp",
        "--model.reward_model", "null", "--model.reward_functions", "[tests.online_rewards:count_of_e]",
        "--model.max_completion_length", "4", "--data.batch_size", "2", "--data.val_batch_size", "2",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_steps", "4",
        "--model.num_minibatches", "2", "--trainer.val_check_interval", "2",
        "--trainer.callbacks+=tests.probes.RecordRollouts", f"--trainer.callbacks.out={probe}",
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    fit = subprocess.run(
        [sys.executable, "-m", "hhalign.cli", *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    weights = [json.loads((probe / f"weights-rank{r}.json").read_text()) for r in (0, 1)]
    assert weights[0] == weights[1]
    drawn = [{tuple(p) for line in (probe / f"rollouts-rank{r}.jsonl").read_text().splitlines()
              for p in json.loads(line)["prompts"] if json.loads(line)["training"]} for r in (0, 1)]  # fmt: skip
    assert len(drawn[0]) == len(drawn[1]) == 4 and not drawn[0] & drawn[1]
