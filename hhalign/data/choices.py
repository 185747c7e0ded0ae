"""Pairs picked by a choice column: two replies and a column naming the preferred one (SHP's ``labels``,
PKU-SafeRLHF's ``better_response_id``, Chatbot Arena's ``winner``, HelpSteer2's signed ``preference_strength``).

A ``Choice`` turns one source row into a pair record in one of the formats of ``hhalign.data.formats``
(``strings``, ``conversational``, or whole conversations when there is no prompt column), or into nothing when
the row is a tie (counted). The row's other columns ride along as they do in any record.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hhalign.errors import DataError

Margin = Literal["strength", "score_ratio", "log_score_ratio", "score_gap"]


@dataclass(frozen=True)
class Choice:
    """Which columns hold the two replies, which one names the preferred reply, and what its values mean.

    Args:
        first: The column of the first reply (text, assistant messages, or a whole conversation).
        second: The column of the second reply.
        choice: The column naming the preferred reply.
        prompt: The prompt's column (text or messages); None when the replies are whole conversations whose
            shared start is the prompt (Chatbot Arena).
        first_wins: Values of ``choice`` that mean the first reply is preferred (e.g. ``[1]``, ``["model_a"]``).
        second_wins: Values that mean the second is preferred.
        ties: Values that mean neither is: the row is dropped and counted as ``tie``. Any other value is an error.
        by_sign: Read ``choice`` as a signed strength instead of by value: negative prefers the first reply,
            positive the second, zero is a tie (HelpSteer2's ``preference_strength``).
        scores: The columns of the first and second replies' scores, for a score margin.
        margin: The pair's margin, which a reward model trains with (``-log σ(r_c − r_r − margin)``):
            ``strength`` (the magnitude of a signed choice), ``score_ratio`` (the preferred reply's score over
            the other's, as SHP's authors filter by it), ``log_score_ratio`` (its log: on the reward's scale),
            ``score_gap`` (the difference); None for no margin.
    """

    first: str
    second: str
    choice: str
    prompt: str | None = None
    first_wins: list[int | str] = field(default_factory=list)
    second_wins: list[int | str] = field(default_factory=list)
    ties: list[int | str] = field(default_factory=list)
    by_sign: bool = False
    scores: list[str] | None = None
    margin: Margin | None = None

    def __post_init__(self) -> None:
        if not self.by_sign and not (self.first_wins and self.second_wins):
            raise DataError("a choice needs first_wins and second_wins values (or by_sign: true)")
        if self.margin in ("score_ratio", "log_score_ratio", "score_gap") and len(self.scores or []) != 2:
            raise DataError(f"choice margin {self.margin!r} needs scores: the two replies' score columns")
        if self.margin == "strength" and not self.by_sign:
            raise DataError("choice margin 'strength' reads a signed choice column: set by_sign: true")

    @property
    def used(self) -> tuple[str, ...]:
        """The source columns the choice reads (the rest ride along)."""
        return (self.first, self.second, self.choice, *([self.prompt] if self.prompt else []), *(self.scores or []))

    def describe(self) -> str:
        if self.by_sign:
            rule = f"{self.choice} < 0 prefers {self.first}, > 0 {self.second}, 0 is a tie"
        else:
            ties = f"; ties {_listed(self.ties)}" if self.ties else ""
            rule = f"{self.choice} {_listed(self.first_wins)} prefers {self.first}, {_listed(self.second_wins)} "
            rule += f"{self.second}{ties}"
        return f"choice: {rule}" + (f"; margin {self.margin}" if self.margin else "")

    def __call__(self, raw: Mapping[str, Any], origin: str, counts: Counter[str]) -> list[dict[str, Any]]:
        missing = [c for c in self.used if c not in raw]
        if missing:
            keys = ", ".join(repr(k) for k in raw) or "none"
            raise DataError(f"{origin}: column {missing[0]!r} of the choice is not in the record; keys found: {keys}")
        side = self._side(raw[self.choice], origin)
        if side == "tie":
            counts["tie"] += 1
            return []
        chosen, rejected = (self.first, self.second) if side == "first" else (self.second, self.first)
        record = {k: v for k, v in raw.items() if k not in self.used}
        if self.prompt:
            record["prompt"] = raw[self.prompt]
        record |= {"chosen": raw[chosen], "rejected": raw[rejected]}
        if self.margin:
            record["margin"] = self._margin(raw, side == "first", origin)
        return [record]

    def _side(self, value: Any, origin: str) -> str:
        if self.by_sign:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"{origin}: choice column {self.choice!r} must be a number, got {value!r}")
            return "tie" if value == 0 else "first" if value < 0 else "second"
        for side, values in (("first", self.first_wins), ("second", self.second_wins), ("tie", self.ties)):
            if any(value == v and type(value) is type(v) for v in values):
                return side
        known = _listed([*self.first_wins, *self.second_wins, *self.ties])
        raise DataError(f"{origin}: choice column {self.choice!r} holds {value!r}, which is none of {known}")

    def _margin(self, raw: Mapping[str, Any], first_preferred: bool, origin: str) -> float:
        if self.margin == "strength":
            return float(abs(raw[self.choice]))
        assert self.scores is not None
        scores = [_number(raw[c], c, origin) for c in self.scores]
        better, other = scores if first_preferred else scores[::-1]
        if self.margin == "score_gap":
            return better - other
        if better <= 0 or other <= 0:
            raise DataError(f"{origin}: a score ratio needs positive scores, got {better:g} and {other:g}")
        return better / other if self.margin == "score_ratio" else math.log(better / other)


def _number(value: Any, column: str, origin: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{origin}: column {column!r} must be a number, got {value!r}")
    return float(value)


def _listed(values: list[Any]) -> str:
    return "/".join(repr(v) for v in values)
