"""Record functions for the tests (``--data.record_function tests.record_functions:<name>``)."""

from __future__ import annotations

from typing import Any


def votes(row: dict[str, Any]) -> Any:
    """A row of a question and two answers with votes: a pair by the votes, none on a tie, both orders of a pair
    marked ``twice``, and an error on a row without votes."""
    if "votes" not in row:
        raise KeyError("votes")
    a, b = row["votes"]
    if a == b:
        return None
    chosen, rejected = (row["a"], row["b"]) if a > b else (row["b"], row["a"])
    pair = {"prompt": row["q"], "chosen": chosen, "rejected": rejected}
    if row.get("twice"):
        return [pair, {"prompt": row["q"] + " (again)", "chosen": chosen, "rejected": rejected}]
    return pair


def not_a_record(row: dict[str, Any]) -> Any:
    return "chosen"
