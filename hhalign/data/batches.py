"""Typed batches, one per layout, and the collation that builds each of them from tokenized examples.

Every padded tensor in hhalign is made here, and every mask comes from the example lengths: the pad id
is only filler, since many tokenizers pad with their EOS. Batches move between devices with ``to``
(which Lightning calls), so the model side never sees a dict recognised by its keys.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from hhalign.data.dialogues import TokenizedDialogue
from hhalign.data.pairs import TokenizedPair

if TYPE_CHECKING:
    from hhalign.data.examples import TokenizedCompletion

PaddingSide = Literal["right", "left"]


class Batch:
    """Device moves for the dataclass batches: every tensor field (or nested batch) goes along; and, for
    batches whose rows are their examples, the counts throughput reads."""

    input_ids: Tensor
    attention_mask: Tensor

    @property
    def real_tokens(self) -> int:
        """Non-pad tokens: what the models really compute."""
        return int(self.attention_mask.sum())

    @property
    def n_examples(self) -> int:
        return self.input_ids.shape[0]

    def to(self, *args: Any, **kwargs: Any) -> Any:
        moved = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            moved[field.name] = value.to(*args, **kwargs) if isinstance(value, (Tensor, Batch)) else value
        return dataclasses.replace(self, **moved)  # type: ignore[type-var]


@dataclass
class SequenceBatch(Batch):
    """Padded token rows, each ``(N, T)`` int64: ``attention_mask`` is 1 on real tokens, ``loss_mask`` 1 on
    the tokens that are scored (a response, an assistant turn; EOS included)."""

    input_ids: Tensor
    attention_mask: Tensor
    loss_mask: Tensor


@dataclass
class PairBatch(SequenceBatch):
    """Plain pair rows: chosen rows ``0..B-1`` above rejected rows ``B..2B-1``, row ``i`` and ``B + i``
    forming pair ``i``; ``margins`` ``(B,)`` when the data gives pairs a margin; ``ref_logps`` ``(2B,)``, chosen
    first, when the reference's log-probs were computed before training."""

    margins: Tensor | None = None
    ref_logps: Tensor | None = None

    @property
    def n_examples(self) -> int:
        return self.input_ids.shape[0] // 2

    def response_lengths(self) -> tuple[Tensor, Tensor]:
        """Tokens in each pair's chosen and rejected response (EOS included), ``(B,)`` each."""
        chosen, rejected = self.loss_mask.sum(-1).chunk(2)
        return chosen, rejected


@dataclass
class PackedPairBatch(Batch):
    """Shared-prompt rows, one per pair: ``prompt + chosen + rejected``, right-padded.

    ``input_ids``, ``attention_mask`` (1 on real tokens) and ``position_ids`` are ``(B, T)``, the rejected
    positions restarting right after the prompt; the lengths are ``(B,)``; ``margins`` and
    ``ref_logps`` as in ``PairBatch``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    prompt_lengths: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor
    margins: Tensor | None = None
    ref_logps: Tensor | None = None

    def response_lengths(self) -> tuple[Tensor, Tensor]:
        return self.chosen_lengths, self.rejected_lengths


AnyPairBatch = PairBatch | PackedPairBatch


@dataclass
class GroupBatch(Batch):
    """Shared-prompt rows for K completions of each prompt: ``prompt + completion_1 + … + completion_K``,
    right-padded, each completion's positions restarting right after the prompt (``hhalign.models.layout``).

    ``input_ids``, ``attention_mask`` and ``position_ids`` are ``(P, T)``; ``prompt_lengths`` ``(P,)``;
    ``completion_lengths`` ``(P, K)``. Sequence ``p·K + j`` is completion ``j`` of prompt ``p``: the order of
    ``rewards.view(P, K)``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    prompt_lengths: Tensor
    completion_lengths: Tensor

    @property
    def group_size(self) -> int:
        return self.completion_lengths.shape[1]

    @property
    def n_sequences(self) -> int:
        return self.completion_lengths.numel()


@dataclass
class PromptBatch(Batch):
    """Prompts alone, as token lists (the online objectives sample their completions): nothing to pad
    until the completions exist. ``input_ids``/``attention_mask`` are the prompts right-padded, for counts."""

    input_ids: Tensor
    attention_mask: Tensor
    prompts: list[list[int]]
    columns: list[dict[str, Any]] | None = None
    """Each prompt's record's other columns (what reward functions may ask for by name)."""


def collate_prompts(prompts: Sequence[Any], pad_token_id: int) -> PromptBatch:
    """A batch of ``TokenizedPrompt`` (anything with a ``prompt`` list of ids, and maybe its ``columns``)."""
    ids = [list(p.prompt) for p in prompts]
    plain = collate_sequences(ids, None, pad_token_id)
    columns = [json.loads(getattr(p, "columns", "{}")) for p in prompts]
    return PromptBatch(plain.input_ids, plain.attention_mask, ids, columns)


@dataclass
class UnpairedBatch(Batch):
    """Unpaired completions (KTO): row ``i`` of ``completions`` is example ``i``'s prompt and completion,
    labelled by ``desirable`` ``(B,)`` bool; row ``i`` of ``mismatched`` is the same prompt followed by
    example ``i + 1``'s completion, for the reference point's KL estimate."""

    completions: SequenceBatch
    mismatched: SequenceBatch
    desirable: Tensor

    @property
    def real_tokens(self) -> int:
        return self.completions.real_tokens

    @property
    def n_examples(self) -> int:
        return self.completions.n_examples


def collate_sequences(
    rows: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]] | None,
    pad_token_id: int,
    padding_side: PaddingSide = "right",
) -> SequenceBatch:
    """Pad token rows into a ``SequenceBatch``; ``targets`` (0/1 per token) become the loss mask, all
    tokens when None."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    loss_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        start = width - len(row) if padding_side == "left" else 0
        span = slice(start, start + len(row))
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, span] = 1
        loss_mask[i, span] = 1 if targets is None else torch.tensor(targets[i], dtype=torch.long)
    return SequenceBatch(input_ids, attention_mask, loss_mask)


def margins_of(pairs: Sequence[TokenizedPair]) -> Tensor | None:
    """``(B,)`` margins when the data gives pairs one (0 where one lacks it), else None."""
    if all(p.margin is None for p in pairs):
        return None
    return torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32)


def ref_logps_of(pairs: Sequence[TokenizedPair]) -> Tensor | None:
    """``(2B,)`` precomputed reference log-probs, chosen first, when every pair has them, else None."""
    if any(p.ref_logps is None for p in pairs):
        return None
    return torch.tensor([p.ref_logps[0] for p in pairs] + [p.ref_logps[1] for p in pairs], dtype=torch.float32)  # type: ignore[index]


def collate_pairs(pairs: Sequence[TokenizedPair], pad_token_id: int, padding_side: PaddingSide = "right") -> PairBatch:
    """Chosen rows above rejected rows, padded to the longest row; the loss mask covers each response."""
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    prompts = [p.prompt for p in pairs] * 2
    rows = [prompt + response for prompt, response in zip(prompts, responses, strict=True)]
    targets = [[0] * len(prompt) + [1] * len(response) for prompt, response in zip(prompts, responses, strict=True)]
    plain = collate_sequences(rows, targets, pad_token_id, padding_side)
    return PairBatch(plain.input_ids, plain.attention_mask, plain.loss_mask, margins_of(pairs), ref_logps_of(pairs))


def collate_packed_pairs(pairs: Sequence[TokenizedPair], pad_token_id: int) -> PackedPairBatch:
    """One right-padded row ``prompt + chosen + rejected`` per pair (see ``hhalign.models.layout``)."""
    plain = collate_sequences([p.prompt + p.chosen + p.rejected for p in pairs], None, pad_token_id)
    position_ids = torch.zeros_like(plain.input_ids)
    for i, p in enumerate(pairs):
        n_p, n_c, n_r = len(p.prompt), len(p.chosen), len(p.rejected)
        position_ids[i, : n_p + n_c] = torch.arange(n_p + n_c)
        position_ids[i, n_p + n_c : n_p + n_c + n_r] = torch.arange(n_p, n_p + n_r)
    return PackedPairBatch(
        plain.input_ids,
        plain.attention_mask,
        position_ids,
        torch.tensor([len(p.prompt) for p in pairs]),
        torch.tensor([len(p.chosen) for p in pairs]),
        torch.tensor([len(p.rejected) for p in pairs]),
        margins_of(pairs),
        ref_logps_of(pairs),
    )


def collate_dialogues(dialogues: Sequence[TokenizedDialogue], pad_token_id: int) -> SequenceBatch:
    """Right-padded dialogues, the loss mask on their assistant turns."""
    return collate_sequences([d.ids for d in dialogues], [d.targets for d in dialogues], pad_token_id)


def collate_unpaired(examples: Sequence[TokenizedCompletion], pad_token_id: int) -> UnpairedBatch:
    """Each example's own row, and its prompt before the next example's completion (the last wraps to the
    first); with a single example the two are the same row."""

    def rows(shift: int) -> SequenceBatch:
        completions = [examples[(i + shift) % len(examples)].completion for i in range(len(examples))]
        ids = [e.prompt + c for e, c in zip(examples, completions, strict=True)]
        targets = [[0] * len(e.prompt) + [1] * len(c) for e, c in zip(examples, completions, strict=True)]
        return collate_sequences(ids, targets, pad_token_id)

    return UnpairedBatch(rows(0), rows(1), torch.tensor([e.desirable for e in examples], dtype=torch.bool))


def collate_groups(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]], pad_token_id: int
) -> GroupBatch:
    """One right-padded row per prompt holding the prompt once and then its K completions, the same K for
    every prompt (see ``hhalign.models.layout``)."""
    sizes = {len(group) for group in completions}
    if len(prompts) != len(completions) or len(sizes) != 1:
        raise ValueError(f"need the same number of completions for each of {len(prompts)} prompts, got {sizes}")
    rows = [list(prompt) + [t for c in group for t in c] for prompt, group in zip(prompts, completions, strict=True)]
    plain = collate_sequences(rows, None, pad_token_id)
    position_ids = torch.zeros_like(plain.input_ids)
    for i, (prompt, group) in enumerate(zip(prompts, completions, strict=True)):
        n_p, start = len(prompt), len(prompt)
        position_ids[i, :n_p] = torch.arange(n_p)
        for completion in group:
            position_ids[i, start : start + len(completion)] = torch.arange(n_p, n_p + len(completion))
            start += len(completion)
    lengths = torch.tensor([[len(c) for c in group] for group in completions], dtype=torch.long)
    prompt_lengths = torch.tensor([len(p) for p in prompts])
    return GroupBatch(plain.input_ids, plain.attention_mask, position_ids, prompt_lengths, lengths)
