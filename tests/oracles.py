"""Plain, readable computations the tests hold the fast paths against."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hhalign.losses.preference import LossOptions, PairLogps, preference_losses


def sequence_logps(logits: Tensor, labels: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Summed log-probs of the masked label tokens of each row, from full logits: ``logits[:, t]`` scores
    ``labels[:, t + 1]``. Returns ``(logp_sum, n_tokens)``, both ``(B,)``, float32 at least."""
    logps = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    token_logps = logps[:, :-1].gather(-1, labels[:, 1:, None]).squeeze(-1)
    mask = loss_mask[:, 1:].bool()
    return (token_logps * mask).sum(-1), mask.sum(-1)


def dpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, **options: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """One loss of the family on log-probs used as given: ``loss_type`` and the ``LossOptions`` fields."""
    loss_type = options.pop("loss_type", "sigmoid")
    x = PairLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return preference_losses(x, LossOptions(**options), loss_type)
