"""Exact resume: a run killed mid-epoch and resumed logs the same per-step losses as one never killed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_fit_args


def _run(
    tmp_path: Path, tiny_dir: Path, data: Path, trial: str, *extra: str, config: str = "configs/tiny/dpo.yaml"
) -> subprocess.CompletedProcess:
    checkpoint_every_2 = (
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps",
        "2",
        "--trainer.callbacks.save_last",
        "true",
    )
    args = tiny_fit_args(
        tmp_path,
        tiny_dir,
        data,
        config,
        *checkpoint_every_2,
        *extra,
        trial=trial,
        steps=8,
        val_every=100,
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hhalign.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def _train_rows(run_dir: Path) -> dict[int, dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {int(r["step"]): r for r in rows}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> tuple[Path, Path]:
    """One run of 8 steps never stopped: the reference the interrupted runs must reproduce."""
    from tests.conftest import shipped_records, write_jsonl

    root = tmp_path_factory.mktemp("resume")
    data = write_jsonl(root / "pairs.jsonl", shipped_records(48))
    whole = _run(root, tiny_dir, data, "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    return root, data


def _assert_same_steps(run_dir: Path, reference_dir: Path) -> None:
    expected, got = _train_rows(reference_dir), _train_rows(run_dir)
    assert sorted(got) == sorted(expected) == list(range(8))
    for step in range(8):
        assert float(got[step]["train/loss"]) == pytest.approx(float(expected[step]["train/loss"]), abs=1e-6), step
    assert got[7]["train/pairs_seen"] == expected[7]["train/pairs_seen"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(uninterrupted: tuple[Path, Path], tiny_dir: Path):
    root, data = uninterrupted
    # 36 training pairs in batches of 8: 5 batches an epoch, so step 3 is mid-epoch; the last checkpoint is step 2
    killed = _run(
        root, tiny_dir, data, "killed", "--trainer.callbacks+=tests.faults.KillAtStep", "--trainer.callbacks.step", "3"
    )
    assert killed.returncode == -signal.SIGKILL
    resumed = _run(root, tiny_dir, data, "killed", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_steps(root / "tiny" / "killed", root / "tiny" / "whole")


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_signal_writes_a_checkpoint_at_the_current_step(
    uninterrupted: tuple[Path, Path], tiny_dir: Path, signal_name: str
):
    import torch

    root, data = uninterrupted
    stopped = _run(
        root,
        tiny_dir,
        data,
        signal_name.lower(),
        "--trainer.callbacks+=tests.faults.KillAtStep",
        "--trainer.callbacks.step",
        "3",
        "--trainer.callbacks.signal_name",
        signal_name,
    )
    assert stopped.returncode == 128 + getattr(signal, signal_name), stopped.stderr[-3000:]
    assert f"stopped by {signal_name} after step 3" in stopped.stderr and "--ckpt_path last" in stopped.stderr
    acknowledged = stopped.stderr.index(f"hhalign: {signal_name} received: stopping after this step")
    assert acknowledged < stopped.stderr.index("stopped by")  # said by the handler, before the stop
    assert "Traceback" not in stopped.stderr
    last = root / "tiny" / signal_name.lower() / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    resumed = _run(root, tiny_dir, data, signal_name.lower(), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_steps(root / "tiny" / signal_name.lower(), root / "tiny" / "whole")


ONLINE = (
    "--model.reward_model", "null", "--model.reward_functions", "[tests.online_rewards:share_of_e]",
    "--model.max_completion_length", "6", "--data.batch_size", "2", "--model.log_samples_every_n_steps", "1",
)  # fmt: skip


def _samples_by_step(run_dir: Path) -> dict[int, list[dict]]:
    """The samples logged at each step; a step re-run after a resume logs again, and its last rows count."""
    by_step: dict[int, list[dict]] = {}
    for line in (run_dir / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["prompt_index"] == 0 and row["sample"] == 0:
            by_step[row["step"]] = []
        by_step[row["step"]].append(row)
    return by_step


@pytest.mark.slow
@pytest.mark.parametrize(
    ("objective", "iterations", "minibatches", "signal_name", "stop_at"),
    [("rloo", 1, 1, "SIGKILL", 3), ("rloo", 2, 2, "SIGTERM", 4), ("ppo", 1, 2, "SIGTERM", 2)],
)
def test_online_run_stopped_then_resumed_draws_the_same_samples_and_losses(
    tmp_path: Path, tiny_dir: Path, objective: str, iterations: int, minibatches: int, signal_name: str, stop_at: int
):
    """RLOO with one optimizer step per rollout, or four (2 passes of 2 minibatches), and PPO (its critic and
    both parameter groups' optimizer state in the checkpoint): killed at step 3 (resumed from step 2) or stopped
    by SIGTERM after a rollout, the resumed run must draw what the uninterrupted one drew and log the same
    numbers, rollout for rollout."""
    from tests.conftest import write_jsonl

    prompts = [{"prompt": f"\n\nHuman: tell me about {w}\n\nAssistant:"} for w in "abcdefghijklmnop"]
    data = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    online = {"config": f"configs/tiny/{objective}.yaml"}
    options = (*ONLINE, "--model.num_iterations", str(iterations), "--model.num_minibatches", str(minibatches))
    options += ("--model.epsilon", "0.01")
    whole = _run(tmp_path, tiny_dir, data, "whole", *options, **online)
    assert whole.returncode == 0, whole.stderr[-3000:]
    kill = ("--trainer.callbacks+=tests.faults.KillAtStep", "--trainer.callbacks.step", str(stop_at))
    kill += ("--trainer.callbacks.signal_name", signal_name)
    stopped = _run(tmp_path, tiny_dir, data, "stopped", *options, *kill, **online)
    code = -signal.SIGKILL if signal_name == "SIGKILL" else 128 + signal.SIGTERM
    assert stopped.returncode == code, stopped.stderr[-3000:]
    resumed = _run(tmp_path, tiny_dir, data, "stopped", *options, "--ckpt_path", "last", **online)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = _train_rows(tmp_path / "tiny" / "whole"), _train_rows(tmp_path / "tiny" / "stopped")
    updates = iterations * minibatches
    assert sorted(got) == sorted(expected) == list(range(updates - 1, 8, updates))
    for step in expected:
        for name in ("train/loss", "train/reward", "train/kl_k1", "train/clip_fraction", "train/grad_norm"):
            assert float(got[step][name]) == pytest.approx(float(expected[step][name]), abs=1e-6), (step, name)
    samples = _samples_by_step(tmp_path / "tiny" / "stopped")
    assert samples == _samples_by_step(tmp_path / "tiny" / "whole")
    assert sorted(samples) == list(range(0, 8, updates))
