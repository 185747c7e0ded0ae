"""The gap between a rollout engine and the trainer, as pure functions: an inference engine (vLLM) samples with
its own kernels, so the log-prob it gives a sampled token differs a little from the one the trainer recomputes
with the same weights. The samples are then slightly off-policy for the trainer; the metrics here measure by how
much, and truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings you
off-policy RL training"; TRL's ``vllm_importance_sampling_correction``) reweights each token's loss by
``min(π_trainer/π_engine, cap)`` to correct it.

Shapes as in ``policy_gradient``: ``(N, T)`` per-token tensors, one completion per row, left-aligned, and a
``mask`` of real completion tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

CorrectionLevel = Literal["token", "sequence"]


def to_width(values: Tensor, width: int) -> Tensor:
    """Per-token ``(N, T)`` values cut or zero-padded to ``width`` columns (the engine's and the trainer's widths
    can differ by the padding each adds)."""
    return torch.nn.functional.pad(values, (0, max(0, width - values.shape[1])))[:, :width]


def engine_gap(trainer_logps: Tensor, engine_logps: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``logp_gap``: the mean over real tokens of ``|log π_engine − log π_trainer|``; ``kl``: per completion,
    ``Σ_t (log π_engine − log π_trainer)``, whose mean over the engine's samples estimates
    KL(π_engine‖π_trainer) (k1: exact in expectation, one completion's value can be negative)."""
    real = mask.float()
    diff = (engine_logps.detach() - trainer_logps.detach()) * real
    return {"logp_gap": diff.abs().sum() / real.sum().clamp(min=1), "kl": diff.sum(dim=1)}


def truncated_importance_weights(
    trainer_logps: Tensor, engine_logps: Tensor, mask: Tensor, cap: float, level: CorrectionLevel = "token"
) -> Tensor:
    """Detached weights ``min(π_trainer/π_engine, cap)`` that make the engine's samples count as the trainer's:
    per token ``(N, T)`` (0 on padding), or with ``level="sequence"`` one per completion ``(N,)`` from the ratio
    of the whole completion (for a loss with one action per completion). The cap bounds the variance a rare
    token the engine under-weighted would bring."""
    if cap <= 0:
        raise ValueError(f"the importance-weight cap must be positive (got {cap})")
    real = mask.float()
    log_ratio = (trainer_logps.detach() - engine_logps.detach()) * real
    if level == "sequence":
        return torch.exp(log_ratio.sum(dim=1)).clamp(max=cap)
    return torch.exp(log_ratio).clamp(max=cap) * real
