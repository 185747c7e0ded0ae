"""Two processes behave as one: preemption by SIGTERM to one rank or to all of them (as SLURM and Kubernetes send
it) ends every rank at the same step with a checkpoint, and a step under DDP or FSDP is the one a single process
takes on the same global batch, for every objective. Each run is a subprocess with a deadline: a hang fails."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import shipped_records, tiny_args, write_jsonl
from tests.sharded import fsdp_overlay, last_validation, run_cli, train_rows

pytestmark = [pytest.mark.slow, pytest.mark.sharded]
DEADLINE = 240
"""Seconds a tiny two-process run may take here (about 15 s alone); past it, it hung."""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multirank")
    write_jsonl(root / "pairs.jsonl", shipped_records(48))
    return root


def _strategy(root: Path, strategy: str) -> tuple[str, ...]:
    if strategy == "fsdp":
        return ("--config", str(fsdp_overlay(root)))
    return ("--trainer.strategy", "ddp", "--trainer.devices", "2")


def _preemptible(root: Path, tiny_dir: Path, strategy: str, trial: str, *extra: str) -> list[str]:
    """5 DPO steps validated every 2 (on one batch), so a periodic checkpoint and its last.ckpt link exist
    before the signal."""
    return tiny_args(
        "fit", "configs/tiny/dpo.yaml", tiny_dir, root / "pairs.jsonl", root, "--trial_name", trial,
        "--trainer.max_steps", "5", "--trainer.val_check_interval", "2", "--model.val_batches_during_fit", "1",
        "--model.warmup_steps", "0", "--data.val_batch_size", "6", *_strategy(root, strategy), *extra,
    )  # fmt: skip


def _step_of(checkpoint: Path) -> int:
    meta = checkpoint / "meta.pt" if checkpoint.is_dir() else checkpoint  # a sharded folder, or one file
    return int(torch.load(meta, map_location="cpu", weights_only=True)["global_step"])


_uninterrupted: dict[str, dict[int, dict[str, str]]] = {}


def _whole(root: Path, tiny_dir: Path, strategy: str) -> dict[int, dict[str, str]]:
    """The rows of the run never stopped, run once per strategy."""
    if strategy not in _uninterrupted:
        whole = run_cli(_preemptible(root, tiny_dir, strategy, f"whole-{strategy}"), timeout=DEADLINE)
        assert whole.returncode == 0, whole.stderr[-3000:]
        _uninterrupted[strategy] = train_rows(root / "tiny" / f"whole-{strategy}")
    return _uninterrupted[strategy]


STOP = {"ddp": 4, "fsdp": 3}
"""Each rank has 3 batches an epoch (18 training pairs in batches of 8): DDP stops mid-epoch (its resume continues
with the next unseen batch on each rank), FSDP after an epoch's last batch (its resume starts the next epoch whole)."""


@pytest.mark.parametrize("delivery", ["rank 0", "every rank"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sigterm_stops_every_rank_at_one_step_with_a_checkpoint_and_resumes_exactly(
    root: Path, tiny_dir: Path, strategy: str, delivery: str
):
    trial = f"term-{strategy}-{delivery.replace(' ', '-')}"
    rank, stop = "0" if delivery == "rank 0" else "null", STOP[strategy]
    term = ("--trainer.callbacks+=tests.faults.KillAtStep", "--trainer.callbacks.step", str(stop),
            "--trainer.callbacks.signal_name", "SIGTERM", "--trainer.callbacks.rank", rank)  # fmt: skip
    stopped = run_cli(_preemptible(root, tiny_dir, strategy, trial, *term), timeout=DEADLINE)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert stopped.stderr.count(f"hhalign: stopped by SIGTERM after step {stop}") == 1  # said once, by rank 0
    assert "Traceback" not in stopped.stderr and "Received SIGTERM" not in stopped.stderr
    checkpoints = root / "tiny" / trial / "checkpoints"
    assert _step_of(checkpoints / "last.ckpt") == stop
    assert _step_of(checkpoints / "step=2.ckpt") == 2  # written beside the periodic checkpoint, not through it
    assert not any(p.name.startswith(".") for p in checkpoints.iterdir())  # no staging file left
    expected = _whole(root, tiny_dir, strategy)
    if delivery == "every rank":  # the cluster's case is resumed; a signal to rank 0 leaves the same checkpoint
        resumed = run_cli(_preemptible(root, tiny_dir, strategy, trial, "--ckpt_path", "last"), timeout=DEADLINE)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = train_rows(root / "tiny" / trial)
    assert sorted(got) == (sorted(expected) if delivery == "every rank" else list(range(stop))) and len(expected) == 5
    for step in got:
        assert float(got[step]["train/loss"]) == pytest.approx(float(expected[step]["train/loss"]), abs=1e-6), step


PER_PROCESS = ("--data.batch_size", "4", "--trainer.val_check_interval", "2")
ACCUMULATING = ("--data.batch_size", "2", "--trainer.accumulate_grad_batches", "2", "--trainer.val_check_interval", "4")
"""Validation after the 2nd optimizer step, which is the 4th batch when 2 accumulate."""
OBJECTIVES = [
    ("sft", "ddp", ACCUMULATING),
    ("sft", "fsdp", PER_PROCESS),
    ("dpo", "ddp", PER_PROCESS),
    ("rm", "ddp", PER_PROCESS),
    ("kto", "fsdp", PER_PROCESS),
]
OBJECTIVE_IDS = [f"{objective}-{strategy}" for objective, strategy, _ in OBJECTIVES]


@pytest.mark.parametrize(("objective", "strategy", "per_process"), OBJECTIVES, ids=OBJECTIVE_IDS)
def test_a_two_process_step_is_the_one_process_step_on_the_same_global_batch(
    root: Path, tiny_dir: Path, objective: str, strategy: str, per_process: tuple[str, ...]
):
    """2 processes x 4 examples (SFT under DDP: x 2 micro-batches of 2) against 1 process x 8, 2 steps: the same
    losses (logged for the global batch), gradient norms and validation. SFT's loss is the mean over every target
    token of the step, so this holds for it too, accumulation included (its train/loss row is Lightning's last
    micro-batch, so the gradient norm speaks for the step there). The step-0 loss agrees to 1e-6; gradient norms
    and what follows the first update to 1e-5 (5e-5 under FSDP, whose flattened CPU kernels round differently:
    1.2e-5 measured on SFT's norm): Adam's first update is nearly a sign, which turns float noise in small
    gradients into whole learning-rate steps. The bug this guards against was 1.2% off."""

    def fit(trial: str, *extra: str) -> Path:
        args = tiny_args(
            "fit", f"configs/tiny/{objective}.yaml", tiny_dir, root / "pairs.jsonl", root, "--trial_name", trial,
            "--trainer.max_steps", "2", "--model.warmup_steps", "0",
            "--data.group_by_length", "false", "--data.val_batch_size", "5", *extra,
        )  # fmt: skip
        result = run_cli(args, timeout=DEADLINE)
        assert result.returncode == 0, result.stderr[-3000:]
        return root / "tiny" / trial

    multi = fit(f"{objective}-{strategy}", *_strategy(root, strategy), *per_process)
    single = root / "tiny" / f"{objective}-single"  # one per objective, shared by its strategies
    if not (single / "summary.json").is_file():
        fit(single.name, "--data.batch_size", "8", "--trainer.val_check_interval", "2")
    got, expected = train_rows(multi), train_rows(single)
    assert sorted(got) == sorted(expected) == [0, 1]
    accumulating = "--trainer.accumulate_grad_batches" in per_process  # then train/loss is the last micro-batch's
    if not accumulating:
        assert float(got[0]["train/loss"]) == pytest.approx(float(expected[0]["train/loss"]), rel=1e-6)
    for step in (0, 1):
        for column in ("train/grad_norm",) if accumulating else ("train/loss", "train/grad_norm"):
            value, reference = float(got[step][column]), float(expected[step][column])
            assert value == pytest.approx(reference, rel=5e-5 if strategy == "fsdp" else 1e-5), (step, column)
    validation, reference = last_validation(multi), last_validation(single)
    assert validation["val/loss"] == pytest.approx(reference["val/loss"], rel=1e-5)
