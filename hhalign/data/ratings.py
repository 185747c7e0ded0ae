"""Pairs made from ratings: records with several rated replies (UltraFeedback's ``completions``, or HelpSteer2's
one reply a row, grouped by prompt) become preference pairs by a stated rule, each with its rating gap as the
pair's ``margin``. Pairs whose ratings differ by no more than ``min_gap`` are ties: dropped and counted."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hhalign.errors import DataError

Rule = Literal["best-vs-random", "best-vs-worst", "all-pairs"]


@dataclass(frozen=True)
class Ratings:
    """Where the replies and their ratings are, and which pairs to make of them.

    Args:
        prompt: The prompt's column (text or messages).
        reply: The reply's text: a key of each reply object, or a column when each row is one reply.
        rating: The rating: one key, or several averaged (dotted paths reach into nested objects, e.g.
            ``annotations.helpfulness.Rating``); numbers or numeric strings. A reply without one is skipped and
            counted (``unrated_reply``).
        replies: The column holding a list of reply objects; None when each row is one reply, the rows of one
            prompt grouped (HelpSteer2).
        rule: ``best-vs-random``: the best-rated reply against one of the lower-rated others drawn at random
            (UltraFeedback binarized's rule, seeded by ``seed`` and the prompt); ``best-vs-worst``; ``all-pairs``:
            every two replies whose ratings differ by more than ``min_gap``.
        min_gap: Ratings differing by this much or less make a tie, not a pair.
        seed: Seeds ``best-vs-random``'s draw.
    """

    prompt: str
    reply: str
    rating: list[str] = field(default_factory=list)
    replies: str | None = None
    rule: Rule = "best-vs-random"
    min_gap: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rating:
            raise DataError("ratings need the rating's key (rating: [overall_score], say)")
        if self.min_gap < 0:
            raise DataError(f"ratings min_gap must be at least 0 (got {self.min_gap})")

    def describe(self) -> str:
        where = f"{self.replies}[].{self.reply}" if self.replies else f"{self.reply} (a row each, grouped by prompt)"
        gap = f" by more than {self.min_gap:g}" if self.min_gap else ""
        return f"ratings: {self.rule} of {where}, rated by {' + '.join(self.rating)}{gap}; margin the rating gap"

    def groups(self, rows: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        """``(origin, record with its replies)``: rows as they are, or rows of one reply grouped by prompt."""
        if self.replies is not None:
            yield from rows
            return
        grouped: dict[str, tuple[str, Any, list[Any]]] = {}
        for origin, raw in rows:
            if isinstance(raw, Exception) or not isinstance(raw, Mapping) or self.prompt not in raw:
                yield origin, raw  # an error, reported where it is
                continue
            key = json.dumps(raw[self.prompt], sort_keys=True)
            grouped.setdefault(key, (origin, raw, []))[2].append(raw)
        for origin, first, replies in grouped.values():
            more = f" (and {len(replies) - 1} more rows of its prompt)" if len(replies) > 1 else ""
            yield origin + more, {**first, "__replies__": replies}

    def __call__(self, raw: Mapping[str, Any], origin: str, counts: Counter[str]) -> list[dict[str, Any]]:
        replies = raw.get("__replies__") if self.replies is None else raw.get(self.replies)
        if self.prompt not in raw or not isinstance(replies, list):
            needs = f"{self.prompt!r} and {self.replies!r} (a list of replies)" if self.replies else repr(self.prompt)
            raise DataError(f"{origin}: ratings need {needs}; keys found: {', '.join(map(repr, raw)) or 'none'}")
        rated = []
        for number, reply in enumerate(replies, start=1):
            if not isinstance(reply, Mapping) or self.reply not in reply:
                raise DataError(f"{origin}: reply {number} has no {self.reply!r}")
            rating = self._rating(reply)
            if rating is None:
                counts["unrated_reply"] += 1
            else:
                rated.append((rating, reply[self.reply]))
        pairs = self._pairs(rated, json.dumps(raw[self.prompt], sort_keys=True), counts)
        # a list's record keeps its other columns; a group's rows differ in theirs (each reply's), so none ride
        rest = {k: v for k, v in raw.items() if k not in (self.prompt, self.replies)} if self.replies else {}
        return [rest | {"prompt": raw[self.prompt], "chosen": c, "rejected": r, "margin": m} for c, r, m in pairs]

    def _rating(self, reply: Mapping[str, Any]) -> float | None:
        values = []
        for path in self.rating:
            value: Any = reply
            for key in path.split("."):
                value = value.get(key) if isinstance(value, Mapping) else None
            try:
                values.append(float(value))  # type: ignore[arg-type]
            except (TypeError, ValueError):  # missing, "N/A"
                return None
        return sum(values) / len(values)

    def _pairs(self, rated: list[tuple[float, Any]], key: str, counts: Counter[str]) -> list[tuple[Any, Any, float]]:
        """``(chosen, rejected, gap)`` by the rule; ``key`` (the prompt) seeds the random draw."""
        if len(rated) < 2:
            counts["fewer_than_two_rated"] += 1
            return []
        order = sorted(range(len(rated)), key=lambda i: -rated[i][0])  # stable: the first of equals wins
        best = order[0]
        if self.rule == "all-pairs":
            candidates = [(i, j) for n, i in enumerate(order) for j in order[n + 1 :]]
        elif self.rule == "best-vs-worst":
            candidates = [(best, order[-1])]
        else:
            lower = [j for j in order[1:] if rated[best][0] - rated[j][0] > self.min_gap]
            if not lower:
                counts["tie"] += 1
                return []
            digest = hashlib.sha256(f"{self.seed}\0{key}".encode()).digest()
            candidates = [(best, random.Random(digest).choice(lower))]
        pairs = []
        for i, j in candidates:
            gap = rated[i][0] - rated[j][0]
            if gap <= self.min_gap:
                counts["tie"] += 1
                continue
            pairs.append((rated[i][1], rated[j][1], gap))
        return pairs
