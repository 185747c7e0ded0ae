"""Shared-prompt packing: one row per pair, ``prompt + chosen + rejected``, the prompt computed once.

In hh-rlhf the prompt is the long multi-turn history and the responses are short, so a plain step
spends most of its work on the prompt, twice in the policy and twice in the reference. In a packed
row the rejected tokens attend to the prompt and to themselves but never to the chosen tokens, and
their positions restart right after the prompt, so each response sees exactly what it would see in
its own row. Everything here derives from the three lengths of each pair, never from pad ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hhalign.pairs import TokenizedPair


def margins(pairs: list[TokenizedPair]) -> dict[str, Tensor]:
    """``{"margins": (B,)}`` when the data gives pairs a margin (0 where one lacks it), else nothing."""
    if all(p.margin is None for p in pairs):
        return {}
    return {"margins": torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32)}


PACKED_KEY = "prompt_lengths"
"""A batch carrying this key is in the packed layout; otherwise chosen rows are stacked above rejected."""

MASK_ATTENTION = frozenset({"sdpa", "eager"})
"""Attention implementations that take a dense 4D mask as given; others get the plain layout."""


class SharedPromptCollator:
    """Pack each pair into one right-padded row ``prompt + chosen + rejected``.

    Returns ``input_ids``, ``attention_mask`` (1 on real tokens) and ``position_ids``, each ``(B, T)``,
    and ``prompt_lengths``, ``chosen_lengths``, ``rejected_lengths``, each ``(B,)``.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, pairs: list[TokenizedPair]) -> dict[str, Tensor]:
        width = max(len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)
        input_ids = torch.full((len(pairs), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        position_ids = torch.zeros_like(input_ids)
        for i, p in enumerate(pairs):
            n_p, n_c, n_r = len(p.prompt), len(p.chosen), len(p.rejected)
            input_ids[i, : n_p + n_c + n_r] = torch.tensor(p.prompt + p.chosen + p.rejected)
            attention_mask[i, : n_p + n_c + n_r] = 1
            position_ids[i, : n_p + n_c] = torch.arange(n_p + n_c)
            position_ids[i, n_p + n_c : n_p + n_c + n_r] = torch.arange(n_p, n_p + n_r)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "prompt_lengths": torch.tensor([len(p.prompt) for p in pairs]),
            "chosen_lengths": torch.tensor([len(p.chosen) for p in pairs]),
            "rejected_lengths": torch.tensor([len(p.rejected) for p in pairs]),
            **margins(pairs),
        }


def is_packed(batch: dict[str, Tensor]) -> bool:
    return PACKED_KEY in batch


def batch_pairs(batch: dict[str, Tensor]) -> int:
    """Number of pairs in a batch of either layout."""
    return batch[PACKED_KEY].shape[0] if is_packed(batch) else batch["input_ids"].shape[0] // 2


def response_lengths(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Tokens in each pair's chosen and rejected response (EOS included), ``(B,)`` each, in either layout."""
    if is_packed(batch):
        return batch["chosen_lengths"], batch["rejected_lengths"]
    chosen, rejected = batch["loss_mask"].sum(-1).chunk(2)
    return chosen, rejected


def _spans(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Column index ``(1, T)`` and the chosen start, rejected start and row end, each ``(B, 1)``."""
    cols = torch.arange(batch["input_ids"].shape[1], device=batch["input_ids"].device)[None]
    chosen_start = batch["prompt_lengths"][:, None]
    rejected_start = chosen_start + batch["chosen_lengths"][:, None]
    end = rejected_start + batch["rejected_lengths"][:, None]
    return cols, chosen_start, rejected_start, end


def shared_prompt_attention(batch: dict[str, Tensor]) -> Tensor:
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
    ``(rows[j], predictors[j])`` and adds to sequence ``sequences[j]`` (pair ``i`` is sequence ``i``
    for chosen and ``B + i`` for rejected). All ``(N,)``."""

    rows: Tensor
    predictors: Tensor
    labels: Tensor
    sequences: Tensor
    n_sequences: int


def scored_tokens(batch: dict[str, Tensor]) -> ScoredTokens:
    """The response tokens of a batch of either layout, EOS included."""
    input_ids = batch["input_ids"]
    cols = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    if not is_packed(batch):
        # plain rows: the token at column t is scored by column t - 1
        scored = batch["loss_mask"].bool() & (cols > 0)
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


def last_tokens(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``(rows, cols)`` of each sequence's last token (its EOS), chosen sequences first; ``(2B,)`` each."""
    if not is_packed(batch):
        mask = batch["attention_mask"].bool()
        cols = torch.arange(mask.shape[-1], device=mask.device)
        return torch.arange(mask.shape[0], device=mask.device), (cols * mask).argmax(-1)
    _, _, rejected_start, end = _spans(batch)
    rows = torch.arange(rejected_start.shape[0], device=rejected_start.device)
    return rows.repeat(2), torch.cat([rejected_start[:, 0] - 1, end[:, 0] - 1])


def unpack(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The plain layout of a packed batch (what ``PairCollator`` returns for the same pairs), built
    on the batch's device, for attention implementations that cannot take a dense 4D mask."""
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
    source = torch.cat([chosen_source, rejected_source]).clamp(max=batch["input_ids"].shape[1] - 1)
    real = torch.cat([chosen_real, rejected_real])
    response = real & (cols >= torch.cat([chosen_start, chosen_start]))
    input_ids = batch["input_ids"].repeat(2, 1).gather(1, source)
    input_ids = torch.where(real, input_ids, 0)  # pads are filler: every mask comes from the lengths
    return {"input_ids": input_ids, "attention_mask": real.long(), "loss_mask": response.long()}
