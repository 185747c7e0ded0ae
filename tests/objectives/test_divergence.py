"""The divergence guard: a NaN loss stops the run with a clear message, or is skipped and counted."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.conftest import fit_tiny

NAN_AT_STEP_2 = ("--trainer.callbacks+=tests.faults.NaNLossAtStep", "--trainer.callbacks.step", "2")


def _fit(tmp_path: Path, tiny_dir: Path, data: Path, *extra: str) -> Path:
    """A 4-step DPO run whose loss turns NaN at step 2."""
    return fit_tiny(tmp_path, tiny_dir, data, "configs/tiny/dpo.yaml", *NAN_AT_STEP_2, *extra)


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_last_checkpoint(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    with pytest.raises(SystemExit) as exited:
        _fit(tmp_path, tiny_dir, small_jsonl)
    message = str(exited.value.code)
    last = tmp_path / "tiny" / "t" / "checkpoints" / "last.ckpt"
    assert f"non-finite loss at step 2; last good checkpoint: {last}" in message
    assert "--model.on_nonfinite skip" in message
    assert torch.load(last, weights_only=True)["global_step"] == 2  # the checkpoint before the NaN is intact


@pytest.mark.slow
def test_nan_loss_skipped_and_counted(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    run_dir = _fit(tmp_path, tiny_dir, small_jsonl, "--model.on_nonfinite", "skip")
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    skipped = [float(r["train/skipped_batches"]) for r in rows if r.get("train/skipped_batches")]
    assert skipped[0] == 0.0 and skipped[-1] == 1.0 and sorted(skipped) == skipped
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))  # 4 updates; the NaN batch made none
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["hhalign_skipped_batches"] == 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
