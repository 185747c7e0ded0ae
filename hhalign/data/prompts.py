"""From records to prompts alone, for the online objectives: each distinct prompt once, tokenized exactly
as training tokenizes a pair's prompt (BOS or chat template, whole human turns cut from the left to fit)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hhalign.data.pairs import PairTokenizer, is_empty, split_dialogues
from hhalign.data.records import Record, Turns


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt's ids as the policy continues them (the assistant's turn opened, nothing of a reply), and its
    record's other columns as JSON text (what reward functions may read; text, so the cache stores it as it is)."""

    prompt: list[int]
    columns: str = "{}"


def prompt_of(record: Record) -> Turns | None:
    """The record's prompt: its ``prompt`` field (text or messages), or the shared history of an hh-rlhf pair up
    to the last assistant marker; None when a pair has none."""
    if record.prompt is not None:
        return record.prompt
    parts = split_dialogues(record.chosen, record.rejected)  # type: ignore[arg-type]
    return None if parts is None else parts[0]


class PromptTokenizer:
    """Tokenize the distinct prompts of some records, each bounded by ``max_length − max_response_length``
    tokens (the room a completion needs is kept), counting drops and cuts by reason."""

    def __init__(
        self, tokenizer: Any, max_length: int, max_response_length: int | None = None, template: Any = None
    ) -> None:
        self.pairs = PairTokenizer(tokenizer, max_length, max_response_length, template)
        self.budget = max_length - (max_response_length or 0)
        if self.budget < 1:
            raise ValueError(
                f"data.max_length {max_length} leaves no room for a prompt beside max_response_length "
                f"{max_response_length}; raise max_length"
            )
        self.counts: Counter[str] = self.pairs.counts  # one tally: the prompt cuts are counted there

    def __call__(self, records: list[Record]) -> list[TokenizedPrompt]:
        texts: list[Turns] = []
        columns: list[str] = []
        seen: set[str] = set()
        for record in records:
            text = prompt_of(record)
            key = text if isinstance(text, str) else json.dumps(text)
            if text is None or is_empty(text):
                self.counts["drop:no_prompt"] += 1
            elif key in seen:
                self.counts["drop:repeated_prompt"] += 1
            else:
                seen.add(key)
                texts.append(text)
                columns.append(json.dumps(record.columns or {}, sort_keys=True, default=str))
        prompts = []
        encoded = self.pairs.encode_prompt_texts(texts)
        for text, ids, extra in zip(texts, encoded, columns, strict=True):
            fitted = self.pairs.fit_prompt(text, ids, self.budget)
            if fitted is None:
                self.counts["drop:prompt_too_long"] += 1
            else:
                prompts.append(TokenizedPrompt(fitted, extra))
        return prompts
