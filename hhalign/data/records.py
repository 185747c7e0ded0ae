"""What a record is once read: a preference pair, an unpaired completion or a prompt alone, as text or as chat
messages. How sources spell them is ``hhalign.data.formats``; where they come from, ``hhalign.data.sources``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Message = dict[str, str]
"""A chat message: ``{"role": "user" | "assistant" | "system" | "tool", "content": text}``."""
Turns = str | list[Message]
"""Text (an hh-rlhf transcript or plain text) or chat messages, which the tokenizer's chat template renders."""

OnBadRecord = Literal["error", "skip"]


@dataclass(frozen=True)
class Record:
    """One record as found in the source; ``origin`` names its file and line, or dataset, split and row.

    A pair has ``chosen`` and ``rejected`` (``prompt`` None for hh-rlhf transcripts, whose prompt is their shared
    start); an unpaired record has ``completion`` and ``label``; a prompt-only record has ``prompt`` alone.
    """

    chosen: Turns | None
    rejected: Turns | None
    prompt: Turns | None
    origin: str
    margin: float | None = None  # how much better chosen is, when the data says (reward modelling)
    completion: Turns | None = None
    label: bool | None = None  # unpaired: True when the completion is desirable
    columns: dict[str, Any] | None = None  # the source's other fields (a reference answer): reward functions read them

    @property
    def is_pair(self) -> bool:
        return self.chosen is not None and self.rejected is not None


def is_messages(turns: Turns | None) -> bool:
    return isinstance(turns, list)


def first_conversational(records: list[Record]) -> str | None:
    """The origin of the first record holding chat messages (which the chat template must render), or None."""
    fields = ("prompt", "chosen", "rejected", "completion")
    return next((r.origin for r in records if any(is_messages(getattr(r, f)) for f in fields)), None)
