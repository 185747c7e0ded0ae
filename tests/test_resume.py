"""Exact resume: a run killed mid-epoch and resumed logs the same per-step losses as one never killed."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _run(tmp_path: Path, tiny_dir: Path, data: Path, trial: str, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "hhalign.cli",
        "fit",
        "--config",
        str(REPO / "configs/tiny/dpo.yaml"),
        "--model.model_name_or_path",
        str(tiny_dir),
        "--data.path",
        str(data),
        "--data.max_length",
        "128",
        "--data.max_response_length",
        "64",
        "--data.valid_fraction",
        "0.25",
        "--output_dir",
        str(tmp_path),
        "--trial_name",
        trial,
        "--trainer.max_steps",
        "8",
        "--trainer.val_check_interval",
        "100",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps",
        "2",
        "--trainer.callbacks.save_last",
        "true",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _train_rows(run_dir: Path) -> dict[int, dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {int(r["step"]): r for r in rows}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    whole = _run(tmp_path, tiny_dir, small_jsonl, "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    # 36 training pairs in batches of 8: 5 batches an epoch, so step 3 is mid-epoch; the last checkpoint is step 2
    killed = _run(
        tmp_path,
        tiny_dir,
        small_jsonl,
        "killed",
        "--trainer.callbacks+=tests.faults.KillAtStep",
        "--trainer.callbacks.step",
        "3",
    )
    assert killed.returncode == -signal.SIGKILL
    resumed = _run(tmp_path, tiny_dir, small_jsonl, "killed", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = _train_rows(tmp_path / "tiny" / "whole"), _train_rows(tmp_path / "tiny" / "killed")
    assert sorted(got) == sorted(expected) == list(range(8))
    for step in range(8):
        assert float(got[step]["train/loss"]) == pytest.approx(float(expected[step]["train/loss"]), abs=1e-6), step
    assert got[7]["train/pairs_seen"] == expected[7]["train/pairs_seen"]
