"""The kinds of example an objective reads, each knowing how to tokenize records into its examples, how
to collate them, what identifies them for resume and how long each is.

An objective names its kind on its class (``examples = "pairs"``); the command line hands that name to the
data module, which looks it up in ``EXAMPLE_KINDS``. That name is the kind's one name: in messages, in
the objective's ``examples`` and in throughput (``train/<name>_per_sec``). A new kind of data is a class
here and a row there.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from hhalign.data.batches import (
    PaddingSide,
    collate_dialogues,
    collate_packed_pairs,
    collate_pairs,
    collate_prompts,
    collate_unpaired,
)
from hhalign.data.dialogues import DialogueTokenizer, TokenizedDialogue
from hhalign.data.pairs import PairTokenizer, TokenizedPair, is_empty
from hhalign.data.prompts import PromptTokenizer, TokenizedPrompt
from hhalign.data.records import Record


@dataclass(frozen=True)
class ExampleSettings:
    """The data module's options that shape examples and batches."""

    max_length: int
    max_response_length: int | None = None
    shared_prompt: bool = True
    padding_side: PaddingSide = "right"


class PairExamples:
    """Chosen/rejected pairs sharing their prompt tokens exactly (reward models, DPO and its family)."""

    example_type = TokenizedPair

    def __init__(self, settings: ExampleSettings) -> None:
        self.settings = settings

    def tokenizer(self, tokenizer: Any, template: Any) -> Callable[[list], list[TokenizedPair]]:
        s = self.settings
        return PairTokenizer(tokenizer, s.max_length, s.max_response_length, template)

    def collator(self, pad_token_id: int) -> Callable[[list], Any]:
        if self.settings.shared_prompt:
            return partial(collate_packed_pairs, pad_token_id=pad_token_id)
        return partial(collate_pairs, pad_token_id=pad_token_id, padding_side=self.settings.padding_side)

    def identity(self, examples: Sequence[TokenizedPair]) -> Iterable[tuple[list[int], ...]]:
        return ((p.prompt, p.chosen, p.rejected) for p in examples)

    def length(self, pair: TokenizedPair) -> int:
        """Tokens in the row that sets its batch's padded width: the packed row, or the longer plain row."""
        if self.settings.shared_prompt:
            return len(pair.prompt) + len(pair.chosen) + len(pair.rejected)
        return len(pair.prompt) + max(len(pair.chosen), len(pair.rejected))


class DialogueExamples:
    """Chosen dialogues whose assistant turns are the targets (SFT)."""

    example_type = TokenizedDialogue

    def __init__(self, settings: ExampleSettings) -> None:
        self.settings = settings

    def tokenizer(self, tokenizer: Any, template: Any) -> Callable[[list], list[TokenizedDialogue]]:
        return DialogueTokenizer(tokenizer, self.settings.max_length, template)

    def collator(self, pad_token_id: int) -> Callable[[list], Any]:
        return partial(collate_dialogues, pad_token_id=pad_token_id)

    def identity(self, examples: Sequence[TokenizedDialogue]) -> Iterable[tuple[list[int], ...]]:
        return ((d.ids, d.targets) for d in examples)

    def length(self, dialogue: TokenizedDialogue) -> int:
        return len(dialogue.ids)


@dataclass(frozen=True)
class TokenizedCompletion:
    """One completion of a prompt and whether it is desirable (KTO's unpaired data)."""

    prompt: list[int]
    completion: list[int]
    desirable: bool


class UnpairedExamples:
    """Unpaired completions labelled desirable or not (KTO): unpaired records as they are, and each pair's chosen
    response as a desirable completion and its rejected one as an undesirable one, tokenized as for pairs."""

    example_type = TokenizedCompletion

    def __init__(self, settings: ExampleSettings) -> None:
        self.pairs = PairExamples(settings)

    def tokenizer(self, tokenizer: Any, template: Any) -> Callable[[list], list[TokenizedCompletion]]:
        tokenize = self.pairs.tokenizer(tokenizer, template)

        def split(records: list[Record]) -> list[TokenizedCompletion]:
            unpaired = [r for r in records if r.completion is not None]
            kept = [r for r in unpaired if not is_empty(r.completion)]  # type: ignore[arg-type]
            tokenize.counts["drop:empty_response"] += len(unpaired) - len(kept)
            encoded = tokenize.completions([(r.prompt, r.completion) for r in kept])  # type: ignore[misc]
            completions = [
                TokenizedCompletion(ids[0], ids[1], bool(record.label))
                for record, ids in zip(kept, encoded, strict=True)
                if ids is not None
            ]
            pairs = tokenize([r for r in records if r.completion is None])
            return completions + [
                TokenizedCompletion(p.prompt, completion, desirable)
                for p in pairs
                for completion, desirable in ((p.chosen, True), (p.rejected, False))
            ]

        split.counts = tokenize.counts  # type: ignore[attr-defined]
        return split

    def collator(self, pad_token_id: int) -> Callable[[list], Any]:
        return partial(collate_unpaired, pad_token_id=pad_token_id)

    def identity(self, examples: Sequence[TokenizedCompletion]) -> Iterable[tuple[list[int], ...]]:
        return ((e.prompt, e.completion, [int(e.desirable)]) for e in examples)

    def length(self, example: TokenizedCompletion) -> int:
        return len(example.prompt) + len(example.completion)


class PromptExamples:
    """Each distinct prompt once (the online objectives), from pairs or prompt-only records; the prompt is
    bounded by ``max_length − max_response_length``, the room kept for a completion."""

    example_type = TokenizedPrompt

    def __init__(self, settings: ExampleSettings) -> None:
        self.settings = settings

    def tokenizer(self, tokenizer: Any, template: Any) -> Callable[[list], list[TokenizedPrompt]]:
        return PromptTokenizer(tokenizer, self.settings.max_length, self.settings.max_response_length, template)

    def collator(self, pad_token_id: int) -> Callable[[list], Any]:
        return partial(collate_prompts, pad_token_id=pad_token_id)

    def identity(self, examples: Sequence[TokenizedPrompt]) -> Iterable[tuple[list[int], ...]]:
        return ((p.prompt,) for p in examples)

    def length(self, example: TokenizedPrompt) -> int:
        return len(example.prompt)


EXAMPLE_KINDS: dict[str, type] = {
    "pairs": PairExamples,
    "dialogues": DialogueExamples,
    "completions": UnpairedExamples,
    "prompts": PromptExamples,
}
"""Example kinds by the name an objective gives on its class."""

ExampleKind = Literal[tuple(EXAMPLE_KINDS)]  # type: ignore[valid-type]


def sequences_fingerprint(rows: Iterable[Iterable[list[int]]]) -> str:
    """Digest of tokenized examples (their ``identity``): any change of records, split, tokenizer or lengths
    changes it, which is how a resume knows it sees the data it was trained on."""
    digest = hashlib.sha256()
    for row in rows:
        for ids in row:
            packed = array("q", ids)
            digest.update(len(packed).to_bytes(8, "little") + packed.tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]
