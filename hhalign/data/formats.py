"""The shapes a preference record comes in, detected from a source's first record and then required of all.

| format | fields | prompt |
|---|---|---|
| ``hh-rlhf`` | ``chosen``, ``rejected`` transcripts (strings) | their shared start, to the last ``Assistant:`` |
| ``strings`` | ``prompt``, ``chosen``, ``rejected`` strings | ``prompt`` |
| ``conversational`` | ``prompt`` messages (or a string), ``chosen`` / ``rejected`` assistant messages | ``prompt`` |
| ``conversational-implicit`` | ``chosen`` / ``rejected`` whole conversations | their common leading messages |
| ``unpaired`` | ``prompt``, ``completion`` (strings or messages), ``label`` (bool) | ``prompt`` |
| ``prompt-only`` | ``prompt`` (a string or messages) | ``prompt`` |

A message is ``{"role": ..., "content": ...}``. An optional numeric ``margin`` rides along with pairs. In the
implicit form a string ``prompt`` column is ignored (UltraFeedback's repeats the first user turn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hhalign.data.records import Record, Turns
from hhalign.errors import DataError

FORMATS = {
    "hh-rlhf": "'chosen' and 'rejected' hh-rlhf transcripts (strings)",
    "strings": "'prompt', 'chosen' and 'rejected' strings",
    "conversational": "'prompt' messages, 'chosen' and 'rejected' lists of assistant messages",
    "conversational-implicit": "'chosen' and 'rejected' whole conversations (lists of messages)",
    "unpaired": "'prompt', 'completion' and a boolean 'label'",
    "prompt-only": "'prompt' alone (a string or messages)",
}
"""Every format by name, with the fields it needs: what an error says is expected."""
ROLES = ("system", "user", "assistant", "tool")
MESSAGE_FORMATS = ("conversational", "conversational-implicit")


def detect(raw: Any, origin: str) -> str:
    """The format of one record, from the fields it has and their types."""
    if not isinstance(raw, Mapping):
        raise DataError(f"{origin}: expected a JSON object, got {type(raw).__name__}")
    if "completion" in raw or "label" in raw:
        return "unpaired"
    if "chosen" in raw or "rejected" in raw:
        chosen = raw.get("chosen")
        if isinstance(chosen, list):
            starts_with_reply = bool(chosen) and isinstance(chosen[0], Mapping) and chosen[0].get("role") == "assistant"
            return "conversational" if "prompt" in raw and starts_with_reply else "conversational-implicit"
        return "strings" if "prompt" in raw else "hh-rlhf"
    if "prompt" in raw:
        return "prompt-only"
    raise DataError(f"{origin}: no known record format; keys found: {_keys(raw)}. {expected()}")


def expected() -> str:
    return "Expected one of: " + "; ".join(f"{name} ({fields})" for name, fields in FORMATS.items())


def _keys(raw: Mapping) -> str:
    return ", ".join(repr(k) for k in raw) or "none"


def to_record(raw: Any, origin: str, fmt: str | None = None, first: str | None = None) -> Record:
    """One record of format ``fmt`` (detected at ``first``; by default, its own), checked field by field."""
    found = detect(raw, origin)
    fmt = fmt or found
    # a conversational record whose reply opens with another role reads as implicit: check it as what the
    # source is, so the error names the role that is wrong
    if fmt == "conversational" and found == "conversational-implicit" and "prompt" in raw:
        found = fmt
    if found != fmt:
        raise DataError(
            f"{origin}: a {found} record in a {fmt} source (detected from {first}); every record of a source must "
            f"have one shape: {FORMATS[fmt]}. Keys found: {_keys(raw)}"
        )
    field = _Fields(raw, origin, fmt)
    columns = {k: v for k, v in raw.items() if k not in RECORD_FIELDS}
    return dataclasses.replace(_record(raw, field, fmt, origin), columns=columns or None)


RECORD_FIELDS = ("prompt", "chosen", "rejected", "completion", "label", "margin")
"""The fields a record's format reads; any other column of a source rides along (``Record.columns``)."""


def _record(raw: Any, field: _Fields, fmt: str, origin: str) -> Record:
    if fmt == "prompt-only":
        return Record(None, None, field.turns("prompt"), origin)
    if fmt == "unpaired":
        return Record(None, None, field.turns("prompt"), origin, completion=field.turns("completion"),
                      label=field.boolean("label"))  # fmt: skip
    margin = field.number("margin") if "margin" in raw else None
    if fmt == "hh-rlhf":
        return Record(field.text("chosen"), field.text("rejected"), None, origin, margin)
    if fmt == "strings":
        return Record(field.text("chosen"), field.text("rejected"), field.text("prompt"), origin, margin)
    if fmt == "conversational":
        prompt = field.turns("prompt")
        return Record(field.messages("chosen"), field.messages("rejected"), prompt, origin, margin)
    prompt, chosen, rejected = split_conversations(field.messages("chosen"), field.messages("rejected"), origin)
    return Record(chosen, rejected, prompt, origin, margin)


def split_conversations(chosen: list, rejected: list, origin: str) -> tuple[list, list, list]:
    """``(prompt, chosen reply, rejected reply)`` of two whole conversations: the prompt is their common leading
    messages, which must end with a user turn (what the replies answer)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if chosen == rejected:  # identical: split at the last user turn, and the tokenizer drops it as identical
        shared = max((i + 1 for i, m in enumerate(chosen) if m["role"] == "user"), default=0)
    if shared == 0 or chosen[shared - 1]["role"] != "user":
        last = "nothing" if shared == 0 else f"a {chosen[shared - 1]['role']} turn"
        raise DataError(
            f"{origin}: 'chosen' and 'rejected' share {shared} leading message(s), ending with {last}; in the "
            "implicit-prompt form their common start is the prompt and must end with a user turn. Give an "
            "explicit 'prompt' (messages) and the two replies instead"
        )
    return chosen[:shared], chosen[shared:], rejected[shared:]


class _Fields:
    """Typed access to one record's fields, each failure naming the record, the field and what it needs."""

    def __init__(self, raw: Mapping, origin: str, fmt: str) -> None:
        self.raw, self.origin, self.fmt = raw, origin, fmt

    def _get(self, key: str) -> Any:
        if key not in self.raw:
            raise DataError(
                f"{self.origin}: missing key {key!r}; a {self.fmt} record has {FORMATS[self.fmt]}. "
                f"Keys found: {_keys(self.raw)}"
            )
        return self.raw[key]

    def _wrong(self, key: str, needs: str, value: Any) -> DataError:
        return DataError(f"{self.origin}: field {key!r} must be {needs}, got {type(value).__name__}")

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        return value

    def turns(self, key: str) -> Turns:
        value = self._get(key)
        if not isinstance(value, (str, list)):
            raise self._wrong(key, "a string or a list of {'role', 'content'} messages", value)
        return value if isinstance(value, str) else self.messages(key)

    def messages(self, key: str) -> list[dict[str, str]]:
        value = self._get(key)
        if not isinstance(value, list) or not value:
            raise self._wrong(key, "a non-empty list of {'role', 'content'} messages", value)
        for number, message in enumerate(value, start=1):
            where = f"{self.origin}: field {key!r} message {number}"
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                found = _keys(message) if isinstance(message, Mapping) else type(message).__name__
                raise DataError(f"{where} needs 'role' and 'content' (found {found})")
            if message["role"] not in ROLES:
                raise DataError(f"{where}: role {message['role']!r} is not one of {', '.join(ROLES)}")
            if not isinstance(message["content"], str):
                raise DataError(f"{where}: 'content' must be a string, got {type(message['content']).__name__}")
        other = [(i, m["role"]) for i, m in enumerate(value, start=1) if m["role"] != "assistant"]
        if self.fmt == "conversational" and key != "prompt" and other:
            raise DataError(
                f"{self.origin}: field {key!r} must hold assistant messages only (the reply), but message "
                f"{other[0][0]} has role {other[0][1]!r}; earlier turns belong in 'prompt'"
            )
        return [{"role": m["role"], "content": m["content"]} for m in value]

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._wrong(key, "a number", value)
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false", value)
        return value


def apply_columns(raw: Any, columns: Mapping[str, str] | None, origin: str) -> Any:
    """The record with its columns renamed to hhalign's (``columns`` maps hhalign's name to the source's)."""
    if not columns or not isinstance(raw, Mapping):
        return raw
    missing = [theirs for theirs in columns.values() if theirs not in raw]
    if missing:
        raise DataError(
            f"{origin}: column {missing[0]!r} named by --data.columns is not in the record; keys found: {_keys(raw)}"
        )
    renamed = {k: v for k, v in raw.items() if k not in columns.values() and k not in columns}
    renamed.update({ours: raw[theirs] for ours, theirs in columns.items()})
    return renamed
