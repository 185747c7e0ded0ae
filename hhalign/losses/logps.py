"""Per-sequence log-probs from the hidden states (or logits) of the scored positions only.

A real vocabulary is 50k–150k wide: the float32 logits of every scored token of a batch, with the softmax
and gradient copies autograd keeps, grow with it and dominate memory. ``linear_token_logps`` applies the LM
head in chunks of tokens and recomputes each chunk's logits in the backward pass, so at most one chunk of
``(tokens × vocabulary)`` floats is alive at a time, forward or backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

LOGIT_CHUNK = 1024
"""Scored tokens per chunk of logits: 1024 × 49,152 float32 is 200 MB, a fifth of it at 152k for 256."""


def sum_by_sequence(token_logps: Tensor, sequences: Tensor, n_sequences: int) -> tuple[Tensor, Tensor]:
    """``(logp_sum, n_tokens)``, both ``(n_sequences,)``: token log-probs ``(N,)`` summed into their sequence."""
    logp_sum = token_logps.new_zeros(n_sequences).index_add(0, sequences, token_logps)
    n_tokens = torch.zeros(n_sequences, dtype=torch.long, device=sequences.device).index_add(
        0, sequences, torch.ones_like(sequences)
    )
    return logp_sum, n_tokens


def tokens_by_sequence(token_values: Tensor, sequences: Tensor, n_sequences: int) -> tuple[Tensor, Tensor]:
    """Per-token values ``(N,)`` laid out one sequence per row, ``(n_sequences, T)`` with T the longest
    sequence's token count, in their order within each sequence, and the ``(n_sequences, T)`` bool mask of
    real entries: the shape the per-token policy-gradient losses read. Differentiable in ``token_values``."""
    counts = torch.bincount(sequences, minlength=n_sequences)
    order = torch.sort(sequences, stable=True).indices
    offsets = counts.cumsum(0) - counts
    position = torch.arange(sequences.numel(), device=sequences.device) - offsets[sequences[order]]
    width = int(counts.max()) if counts.numel() else 0
    values = token_values.new_zeros(n_sequences, width).index_put((sequences[order], position), token_values[order])
    mask = torch.arange(width, device=sequences.device)[None] < counts[:, None]
    return values, mask


def scattered_logps(token_logits: Tensor, labels: Tensor, sequences: Tensor, n_sequences: int) -> tuple[Tensor, Tensor]:
    """Sum token log-probs into their sequences from the logits of the scored positions.

    The caller gathers the logits of the scored positions (the one-token shift happens there, in
    ``hhalign.models.layout.scored_tokens``); only these ``N`` rows are upcast, and cross-entropy reads the
    label's log-prob without a log-softmax tensor of its own.

    Args:
        token_logits: ``(N, V)``, one row per scored token, any floating dtype.
        labels: ``(N,)`` the token each row scores.
        sequences: ``(N,)`` the sequence each token belongs to, in ``[0, n_sequences)``.

    Returns:
        ``(logp_sum, n_tokens)``, both ``(n_sequences,)``: summed log-probs (float32, or float64 for
        float64 logits) and the number of tokens summed.
    """
    token_logits = token_logits.to(torch.promote_types(token_logits.dtype, torch.float32))
    return sum_by_sequence(-F.cross_entropy(token_logits, labels, reduction="none"), sequences, n_sequences)


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``hidden @ weight.T + bias`` in the hidden states' dtype, upcast to at least float32."""
    logits = F.linear(hidden, weight.to(hidden.dtype), None if bias is None else bias.to(hidden.dtype))
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class _LinearTokenLogps(torch.autograd.Function):
    """``log softmax(h Wᵀ + b)[label]`` per token, chunk by chunk; the backward pass recomputes each chunk's
    logits: ``∂/∂z = g·(onehot(label) − softmax(z))``, then ``∂h = (∂z) W`` and ``∂W = (∂z)ᵀ h``."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, chunk: int) -> Tensor:
        logps, lse = [], []
        for start in range(0, hidden.shape[0], chunk):
            logits = _chunk_logits(hidden[start : start + chunk], weight, bias)
            norm = torch.logsumexp(logits, dim=-1)
            lse.append(norm)
            logps.append(logits.gather(-1, labels[start : start + chunk, None]).squeeze(-1) - norm)
        out = torch.cat(logps) if logps else hidden.new_zeros(0, dtype=torch.float32)
        ctx.save_for_backward(hidden, weight, bias, labels, torch.cat(lse) if lse else out)
        ctx.chunk = chunk
        # autocast is off in backward: re-enter the forward's, or the recomputed logits (fp32 there, bf16 here)
        # would not be the ones the saved log-sum-exp normalizes, and the gradient would be 3-7% off
        device = hidden.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _LinearTokenLogps._backward(ctx, grad)

    @staticmethod
    def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        accumulate = torch.promote_types(weight.dtype, torch.float32)  # a bf16 weight's gradient sums in fp32
        grad_weight = torch.zeros_like(weight, dtype=accumulate) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=accumulate) if need_bias else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            span = slice(start, start + ctx.chunk)
            h = hidden[span]
            logits = _chunk_logits(h, weight, bias)
            grad_logits = -torch.exp(logits - lse[span, None]) * grad[span, None]
            grad_logits.scatter_add_(-1, labels[span, None], grad[span, None])
            grad_logits = grad_logits.to(h.dtype)
            if grad_hidden is not None:
                grad_hidden[span] = grad_logits @ weight.to(h.dtype)
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ h).to(accumulate)
            if grad_bias is not None:
                grad_bias += grad_logits.to(accumulate).sum(0)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


def linear_token_logps(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, chunk: int = LOGIT_CHUNK
) -> Tensor:
    """Log-probs ``(N,)`` (float32 at least) of ``labels`` under the LM head ``(weight, bias)`` applied to the
    scored hidden states ``(N, H)``, never holding more than ``chunk`` rows of logits."""
    return _LinearTokenLogps.apply(hidden, weight, bias, labels, chunk)
