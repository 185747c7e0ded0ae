"""Preference losses as pure functions over tensors.

Every DPO-family loss takes per-sequence log-probs of shape ``(B,)`` and returns the unreduced
``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``, rewards detached. The caller takes
the mean, so the same functions serve training, validation and per-pair diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hhalign.errors import ConfigError

__all__ = [
    "DPO_LOSSES",
    "LENGTH_NORMALIZED_LOSSES",
    "bradley_terry_loss",
    "check_dpo_options",
    "dpo_loss",
    "implicit_rewards",
    "scattered_logps",
    "sequence_logps",
]


def sequence_logps(logits: Tensor, labels: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Sum the log-probs of the masked label tokens of each sequence.

    ``logits[:, t]`` scores ``labels[:, t + 1]``, so the shift happens here and ``loss_mask`` is
    aligned with ``labels`` (1 on the response tokens that count, EOS included). Only the masked
    rows of the logits are upcast to float32, never a full-vocabulary copy of the whole batch.

    Args:
        logits: ``(B, T, V)`` in any floating dtype.
        labels: ``(B, T)`` token ids, usually the input ids.
        loss_mask: ``(B, T)``, nonzero where a label token counts.

    Returns:
        ``(logp_sum, n_tokens)``, both ``(B,)``: the summed log-probs (float32, or float64 for
        float64 logits) and the number of tokens summed.
    """
    if logits.shape[:2] != labels.shape or labels.shape != loss_mask.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
            f"loss_mask {tuple(loss_mask.shape)}; expected (B, T, V), (B, T), (B, T)"
        )
    mask = loss_mask[:, 1:].bool()
    rows = mask.nonzero(as_tuple=True)[0]
    picked = logits[:, :-1][mask]  # (N, V): only the scored positions
    return scattered_logps(picked, labels[:, 1:][mask], rows, labels.shape[0])


def scattered_logps(token_logits: Tensor, labels: Tensor, sequences: Tensor, n_sequences: int) -> tuple[Tensor, Tensor]:
    """Sum token log-probs into their sequences, from the logits of the scored positions only.

    Args:
        token_logits: ``(N, V)``, one row per scored token, any floating dtype (upcast here).
        labels: ``(N,)`` the token each row scores.
        sequences: ``(N,)`` the sequence each token belongs to, in ``[0, n_sequences)``.

    Returns:
        ``(logp_sum, n_tokens)``, both ``(n_sequences,)``, as ``sequence_logps``.
    """
    token_logits = token_logits.to(torch.promote_types(token_logits.dtype, torch.float32))
    token_logps = -F.cross_entropy(token_logits, labels, reduction="none")
    logp_sum = token_logps.new_zeros(n_sequences).index_add(0, sequences, token_logps)
    n_tokens = torch.zeros(n_sequences, dtype=torch.long, device=labels.device).index_add(
        0, sequences, torch.ones_like(sequences)
    )
    return logp_sum, n_tokens


def implicit_rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """DPO's implicit reward ``β·(log π(y|x) − log π_ref(y|x))``, detached."""
    return (beta * (policy_logps - ref_logps)).detach()


def _sigmoid(h: Tensor, beta: float) -> Tensor:
    """Rafailov et al. 2023, eq. 7: ``−log σ(β·h)``."""
    return -F.logsigmoid(beta * h)


def _ipo(h: Tensor, beta: float) -> Tensor:
    """Azar et al. 2023, eq. 17: ``(h − 1/(2β))²``, with ``β`` in the role of the paper's ``τ``."""
    return (h - 1 / (2 * beta)) ** 2


DPO_LOSSES: dict[str, Callable[[Tensor, float], Tensor]] = {"sigmoid": _sigmoid, "ipo": _ipo}
"""Loss of the log-ratio difference ``h``, by ``loss_type``."""

LossType = Literal["sigmoid", "ipo"]
"""The ``loss_type`` values, as a type the CLI validates at parse time; keep in step with ``DPO_LOSSES``."""

LENGTH_NORMALIZED_LOSSES = frozenset({"ipo"})
"""Loss types whose callers pass per-token-averaged log-probs rather than sums."""


def check_dpo_options(beta: float, loss_type: str) -> None:
    """Raise a ``ValueError`` naming the option and its valid values."""
    if loss_type not in DPO_LOSSES:
        raise ConfigError(f"unknown loss_type {loss_type!r}; choose one of {sorted(DPO_LOSSES)}")
    if not beta > 0:
        raise ConfigError(f"beta must be > 0 (got {beta}); typical values are 0.01 to 0.5")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO-family loss of a batch of pairs.

    ``h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))``; the loss is
    ``DPO_LOSSES[loss_type](h, beta)``. Pass summed log-probs for ``sigmoid`` and per-token
    averages for the types in ``LENGTH_NORMALIZED_LOSSES``.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``; rewards are
        ``β·(policy − reference)`` of the log-probs passed in, detached.
    """
    check_dpo_options(beta, loss_type)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = DPO_LOSSES[loss_type](chosen_logratios - rejected_logratios, beta)
    return (
        losses,
        implicit_rewards(policy_chosen_logps, ref_chosen_logps, beta),
        implicit_rewards(policy_rejected_logps, ref_rejected_logps, beta),
    )


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Bradley–Terry negative log-likelihood ``−log σ(r_c − r_r)``, unreduced ``(B,)``."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)
