"""What attention and the LM head read of a typed batch: the shared-prompt mask, the scored positions, the
last tokens, and the plain layout of a packed batch.

Shared-prompt packing puts each pair in one row, ``prompt + chosen + rejected``, so the prompt is computed
once. In hh-rlhf the prompt is the long multi-turn history and the responses are short, so a plain step
spends most of its work on the prompt, twice in the policy and twice in the reference. In a packed row the
rejected tokens attend to the prompt and to themselves but never to the chosen tokens, and their positions
restart right after the prompt, so each response sees exactly what it would see in its own row.
A ``GroupBatch`` generalizes the row to K completions of one prompt (the online objectives' samples):
completion ``j`` attends to the prompt and to itself only. Everything here derives from the lengths of each
row, never from pad ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hhalign.data.batches import GroupBatch, PackedPairBatch, PairBatch, SequenceBatch

MASK_ATTENTION = frozenset({"sdpa", "eager"})
"""Attention implementations that take a dense 4D mask as given; others get the plain layout."""


def _spans(batch: PackedPairBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Column index ``(1, T)`` and the chosen start, rejected start and row end, each ``(B, 1)``."""
    cols = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)[None]
    chosen_start = batch.prompt_lengths[:, None]
    rejected_start = chosen_start + batch.chosen_lengths[:, None]
    end = rejected_start + batch.rejected_lengths[:, None]
    return cols, chosen_start, rejected_start, end


def shared_prompt_attention(batch: PackedPairBatch) -> Tensor:
    """``(B, 1, T, T)`` boolean mask, True where query ``q`` may attend to key ``k``.

    Causal over real tokens, with the chosen block hidden from the rejected queries. Padding
    queries attend to themselves only, so no softmax row is empty (an empty row gives NaN).
    """
    cols, chosen_start, rejected_start, end = _spans(batch)
    q, k = cols[..., :, None], cols[..., None, :]  # (1, T, 1), (1, 1, T)
    real_q, real_k = q < end[..., None], k < end[..., None]
    in_chosen_k = (k >= chosen_start[..., None]) & (k < rejected_start[..., None])
    rejected_q = (q >= rejected_start[..., None]) & (q < end[..., None])
    allowed = (k <= q) & real_q & real_k & ~(rejected_q & in_chosen_k)
    allowed |= ~real_q & (k == q)
    return allowed[:, None]


def mask_for_attention(allowed: Tensor, attn_implementation: str, dtype: torch.dtype) -> Tensor:
    """The boolean mask in the form an implementation reads: ``sdpa`` takes it as is, ``eager`` adds it."""
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


@dataclass(frozen=True)
class ScoredTokens:
    """Where a forward's log-probs are read: token ``labels[j]`` is scored by the hidden state at
    ``(rows[j], predictors[j])`` and adds to sequence ``sequences[j]`` (for pairs, pair ``i`` is sequence
    ``i`` for chosen and ``B + i`` for rejected). All ``(N,)``."""

    rows: Tensor
    predictors: Tensor
    labels: Tensor
    sequences: Tensor
    n_sequences: int


def scored_tokens(batch: SequenceBatch | PackedPairBatch | GroupBatch) -> ScoredTokens:
    """The scored tokens of a batch (responses, assistant turns, completions; EOS included)."""
    if isinstance(batch, GroupBatch):
        return _group_scored_tokens(batch)
    input_ids = batch.input_ids
    cols = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    if isinstance(batch, SequenceBatch):
        # plain rows: the token at column t is scored by column t - 1
        scored = batch.loss_mask.bool() & (cols > 0)
        rows, label_cols = scored.nonzero(as_tuple=True)
        return ScoredTokens(rows, label_cols - 1, input_ids[rows, label_cols], rows, input_ids.shape[0])
    cols, chosen_start, rejected_start, end = _spans(batch)
    in_chosen = (cols >= chosen_start) & (cols < rejected_start)
    in_rejected = (cols >= rejected_start) & (cols < end)
    # the first rejected token follows the prompt, not the chosen response
    predictor = torch.where(in_rejected & (cols == rejected_start), chosen_start - 1, cols - 1)
    rows, label_cols = (in_chosen | in_rejected).nonzero(as_tuple=True)
    n_pairs = input_ids.shape[0]
    sequences = rows + n_pairs * in_rejected[rows, label_cols].long()
    return ScoredTokens(rows, predictor[rows, label_cols], input_ids[rows, label_cols], sequences, 2 * n_pairs)


def last_tokens(batch: SequenceBatch | PackedPairBatch | GroupBatch) -> tuple[Tensor, Tensor]:
    """``(rows, cols)`` of each sequence's last real token (a response's EOS), ``(N,)`` each; for a packed
    batch the chosen sequences first, then the rejected ones; for a group batch prompt-major."""
    if isinstance(batch, GroupBatch):
        _, ends = _group_spans(batch)
        rows = torch.arange(ends.shape[0], device=ends.device)[:, None].expand_as(ends)
        return rows.flatten(), (ends - 1).flatten()
    if isinstance(batch, SequenceBatch):
        mask = batch.attention_mask.bool()
        cols = torch.arange(mask.shape[-1], device=mask.device)
        return torch.arange(mask.shape[0], device=mask.device), (cols * mask).argmax(-1)
    _, _, rejected_start, end = _spans(batch)
    rows = torch.arange(rejected_start.shape[0], device=rejected_start.device)
    return rows.repeat(2), torch.cat([rejected_start[:, 0] - 1, end[:, 0] - 1])


def unpack(batch: PackedPairBatch) -> PairBatch:
    """The plain layout of a packed batch (what ``collate_pairs`` makes of the same pairs), built on the
    batch's device, for attention implementations that cannot take a dense 4D mask."""
    cols, chosen_start, rejected_start, end = _spans(batch)
    chosen_len = rejected_start - chosen_start
    rejected_len = end - rejected_start
    width = int(torch.maximum(rejected_start, chosen_start + rejected_len).max())
    cols = cols[:, :width]
    # chosen rows copy columns [0, P + C); rejected rows copy [0, P) then [P + C, P + C + R)
    chosen_source = cols.expand(chosen_start.shape[0], -1)
    rejected_source = torch.where(cols < chosen_start, cols, cols + chosen_len)
    chosen_real = cols < rejected_start
    rejected_real = cols < chosen_start + rejected_len
    source = torch.cat([chosen_source, rejected_source]).clamp(max=batch.input_ids.shape[1] - 1)
    real = torch.cat([chosen_real, rejected_real])
    response = real & (cols >= torch.cat([chosen_start, chosen_start]))
    input_ids = batch.input_ids.repeat(2, 1).gather(1, source)
    input_ids = torch.where(real, input_ids, 0)  # pads are filler: every mask comes from the lengths
    return PairBatch(input_ids, real.long(), response.long(), batch.margins, batch.ref_logps)


def _group_spans(batch: GroupBatch) -> tuple[Tensor, Tensor]:
    """Start and end columns of every completion, ``(P, K)`` each."""
    ends = batch.prompt_lengths[:, None] + batch.completion_lengths.cumsum(dim=1)
    return ends - batch.completion_lengths, ends


def _group_segments(batch: GroupBatch) -> Tensor:
    """``(P, T)``: −1 on the prompt, ``j`` on completion ``j``, K on padding."""
    starts, ends = _group_spans(batch)
    cols = torch.arange(batch.input_ids.shape[1], device=batch.input_ids.device)[None, :, None]
    inside = (cols >= starts[:, None]) & (cols < ends[:, None])  # (P, T, K)
    segment = torch.where(inside.any(-1), inside.float().argmax(-1), batch.group_size)
    return torch.where(cols[..., 0] < batch.prompt_lengths[:, None], -1, segment)


def group_attention(batch: GroupBatch) -> Tensor:
    """``(P, 1, T, T)`` boolean mask for a group batch: causal over real tokens, each completion's queries
    reading the prompt and their own completion only; padding queries read themselves (no empty row)."""
    segment = _group_segments(batch)
    cols = torch.arange(segment.shape[1], device=segment.device)
    padding = batch.group_size
    q_segment, k_segment = segment[:, :, None], segment[:, None, :]
    real_q, real_k = q_segment != padding, k_segment != padding
    same_part = (k_segment == -1) | (k_segment == q_segment)
    allowed = (cols[None, None, :] <= cols[None, :, None]) & real_q & real_k & same_part
    allowed |= ~real_q & (cols[None, None, :] == cols[None, :, None])
    return allowed[:, None]


def _group_scored_tokens(batch: GroupBatch) -> ScoredTokens:
    """Every completion token, scored by the state before it; a completion's first token by the prompt's
    last state, since the completions before it are hidden from it."""
    starts, _ = _group_spans(batch)
    segment = _group_segments(batch)
    k = batch.group_size
    rows, label_cols = ((segment >= 0) & (segment < k)).nonzero(as_tuple=True)
    completion = segment[rows, label_cols]
    first = label_cols == starts[rows, completion]
    predictors = torch.where(first, batch.prompt_lengths[rows] - 1, label_cols - 1)
    labels = batch.input_ids[rows, label_cols]
    return ScoredTokens(rows, predictors, labels, rows * k + completion, batch.n_sequences)


def unpack_groups(batch: GroupBatch) -> SequenceBatch:
    """The plain layout of a group batch, one row ``prompt + completion`` per sequence in prompt-major
    order, for attention implementations that cannot take a dense 4D mask."""
    starts, _ = _group_spans(batch)
    k = batch.group_size
    prompt_lengths = batch.prompt_lengths.repeat_interleave(k)[:, None]
    lengths = batch.completion_lengths.flatten()[:, None]
    width = int((prompt_lengths + lengths).max())
    cols = torch.arange(width, device=batch.input_ids.device)[None]
    offset = starts.flatten()[:, None] - prompt_lengths  # where each completion sits past its prompt
    source = torch.where(cols < prompt_lengths, cols, cols + offset)
    real = cols < prompt_lengths + lengths
    source = source.clamp(max=batch.input_ids.shape[1] - 1)
    input_ids = batch.input_ids.repeat_interleave(k, dim=0).gather(1, source)
    input_ids = torch.where(real, input_ids, 0)  # pads are filler: every mask comes from the lengths
    return SequenceBatch(input_ids, real.long(), (real & (cols >= prompt_lengths)).long())
