"""Per-sequence log-probs from the logits of the scored positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def scattered_logps(token_logits: Tensor, labels: Tensor, sequences: Tensor, n_sequences: int) -> tuple[Tensor, Tensor]:
    """Sum token log-probs into their sequences.

    The caller gathers the logits of the scored positions (the one-token shift happens there, in
    ``hhalign.models.layout.scored_tokens``), so no full-vocabulary float32 copy of a batch is ever made:
    only these ``N`` rows are upcast, and cross-entropy reads the label's log-prob without a log-softmax
    tensor of its own.

    Args:
        token_logits: ``(N, V)``, one row per scored token, any floating dtype.
        labels: ``(N,)`` the token each row scores.
        sequences: ``(N,)`` the sequence each token belongs to, in ``[0, n_sequences)``.

    Returns:
        ``(logp_sum, n_tokens)``, both ``(n_sequences,)``: summed log-probs (float32, or float64 for
        float64 logits) and the number of tokens summed.
    """
    token_logits = token_logits.to(torch.promote_types(token_logits.dtype, torch.float32))
    token_logps = -F.cross_entropy(token_logits, labels, reduction="none")
    logp_sum = token_logps.new_zeros(n_sequences).index_add(0, sequences, token_logps)
    n_tokens = torch.zeros(n_sequences, dtype=torch.long, device=labels.device).index_add(
        0, sequences, torch.ones_like(sequences)
    )
    return logp_sum, n_tokens
