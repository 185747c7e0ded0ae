"""bf16-mixed on CPU autocast: every objective fits, DPO's step 0 is ln 2 (the online and the precomputed
reference run under the policy's autocast) and KTO's is λ/2; half-precision weights are warned about."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import fit_tiny
from tests.sharded import train_rows

BF16 = ("--trainer.precision", "bf16-mixed", "--model.warmup_steps", "0")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "extra", "step_zero"),
    [
        ("dpo", (), (math.log(2), 1e-5)),
        # precomputed in other batches than the step's: bf16 kernels round by shape. Measured 3.5e-5 from ln 2 on
        # one machine, under 1e-5 on another; the bug this guards against (the pass outside autocast, a 0.017-nat
        # disagreement) moves it by about 8.5e-4
        ("dpo", ("--model.precompute_ref_logps", "true"), (math.log(2), 2e-4)),
        ("kto", (), (0.5, 1e-5)),  # λ_D = λ_U = 1, policy = reference: every completion's loss is λ(1 − σ(0))
        ("rm", (), None),
        ("sft", (), None),
    ],
    ids=["dpo", "dpo-precomputed", "kto", "rm", "sft"],
)
def test_every_objective_fits_under_bf16_mixed(
    tmp_path: Path,
    tiny_dir: Path,
    small_jsonl: Path,
    config: str,
    extra: tuple[str, ...],
    step_zero: tuple[float, float] | None,
):
    """hhalign's own warnings are errors in the suite: a policy and reference that disagree at step 0 (the
    precomputed pass outside autocast did, by 0.017) fail here."""
    run = fit_tiny(tmp_path, tiny_dir, small_jsonl, f"configs/tiny/{config}.yaml", *BF16, *extra, steps=2, val_every=2)
    rows = train_rows(run)
    losses = [float(rows[s]["train/loss"]) for s in (0, 1)]
    assert all(math.isfinite(v) for v in losses)
    if step_zero is not None:
        expected, tolerance = step_zero
        assert losses[0] == pytest.approx(expected, abs=tolerance)
    start, trained = load_file(tiny_dir / "model.safetensors"), load_file(run / "export" / "model.safetensors")
    shared = [k for k in trained if k in start]
    assert shared and all(trained[k].dtype == torch.float32 for k in shared)  # fp32 master weights kept
    assert any(not torch.equal(start[k], trained[k]) for k in shared)


@pytest.mark.slow
def test_training_bf16_weights_is_warned_about(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    with pytest.warns(UserWarning, match="training half-precision weights"):
        fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "--model.model_dtype", "bfloat16",
                 "--model.warmup_steps", "0", steps=1, val_every=1)  # fmt: skip
