"""Rule-based rewards the online tests train on: simple enough for the tiny model to learn in a few steps."""

from __future__ import annotations


def share_of_e(prompts: list[str], completions: list[str]) -> list[float]:
    """The share of a completion's characters that are the letter e: a reward a policy can raise by
    choosing tokens, checkable by eye."""
    return [c.count("e") / max(len(c), 1) for c in completions]


def constant(prompts: list[str], completions: list[str]) -> list[float]:
    """Every completion scores the same: every group's advantages are zero."""
    return [1.0] * len(completions)


def wrong_shape(prompts: list[str], completions: list[str]) -> list[list[float]]:
    return [[1.0, 2.0]] * len(completions)


def has_e(prompts: list[str], completions: list[str]) -> list[float]:
    """1 for a completion with the letter e in it, else 0: a pair either ties or says plainly which is better,
    which is what online DPO learns from (it reads which sample won, not by how much)."""
    return [float("e" in c) for c in completions]


def count_of_e(prompts: list[str], completions: list[str]) -> list[float]:
    """How many times the letter e occurs: ``share_of_e``'s signal on the scale of a normalized reward model's
    scores (a standard deviation near 1 on the tiny model's samples, where ``share_of_e``'s is near 0.1)."""
    return [float(c.count("e")) for c in completions]


def given_score(prompts: list[str], completions: list[str], score: list[float]) -> list[float]:
    """Each completion's reward is its prompt record's ``score`` column: what the reward function was handed."""
    return [float(s) for s in score]


def with_everything(prompts: list[str], completions: list[str], **columns: list) -> list[float]:
    """How many columns it was handed, for each completion."""
    return [float(len(columns))] * len(completions)


def needs_answer(
    prompts: list[str], completions: list[str], answer: list[str], bonus: float | None = None
) -> list[float]:
    return [float(a in c) + (bonus or 0.0) for a, c in zip(answer, completions, strict=True)]
