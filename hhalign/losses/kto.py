"""KTO, Ethayarajh et al. 2024: a loss over unpaired completions, each labelled desirable or undesirable."""

from __future__ import annotations

import torch
from torch import Tensor


def kto_reference_point(mismatched_logratios: Tensor) -> Tensor:
    """KTO's reference point ``z₀ = max(0, mean_j(log π(y'_j|x_j) − log π_ref(y'_j|x_j)))`` (eq. 8), a
    biased estimate of ``KL(π ‖ π_ref)`` from completions paired with another example's prompt; detached,
    as in the paper: it sets the level, it is not trained."""
    return mismatched_logratios.detach().mean().clamp(min=0)


def kto_loss(
    logratios: Tensor,
    desirable: Tensor,
    reference_point: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KTO's loss per completion (eq. 8), ``λ_y − v(x, y)``, with ``r = log π(y|x) − log π_ref(y|x)``:

    ``v = λ_D·σ(β·(r − z₀))`` for a desirable completion, ``λ_U·σ(β·(z₀ − r))`` for an undesirable one.

    Args:
        logratios: ``(B,)`` summed policy minus reference log-probs of each completion.
        desirable: ``(B,)`` bool.
        reference_point: ``z₀``, a scalar (``kto_reference_point``).

    Returns:
        ``(losses, rewards)``, both ``(B,)``; rewards are ``β·r``, detached.
    """
    z = beta * (logratios - reference_point)
    value = torch.where(desirable, desirable_weight * torch.sigmoid(z), undesirable_weight * torch.sigmoid(-z))
    weight = torch.where(desirable, desirable_weight, undesirable_weight).to(z.dtype)
    return weight - value, (beta * logratios).detach()
