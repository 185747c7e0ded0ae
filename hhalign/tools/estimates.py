"""The numbers of an evaluation, each with its uncertainty: win rates with ties counted apart, means
with standard errors, the KL estimate. Plain arithmetic on lists, tested without a model.

Samples of one prompt are not independent draws of the population of prompts, so with K > 1 samples
per prompt the standard errors are taken across prompts (of each prompt's mean), and a win rate's
interval counts its decisive comparisons divided by K: conservative, and exact for K = 1."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hhalign.tools.summary import wilson_interval

Z95 = 1.96


@dataclass(frozen=True)
class Mean:
    """A mean over prompts with its standard error and normal 95% interval."""

    mean: float
    se: float
    n: int

    @property
    def interval(self) -> tuple[float, float]:
        return self.mean - Z95 * self.se, self.mean + Z95 * self.se

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"interval95": list(self.interval)}


def prompt_means(values: Sequence[float], samples: int) -> list[float]:
    """Each prompt's mean over its ``samples`` consecutive values."""
    if samples < 1 or len(values) % samples:
        raise ValueError(f"{len(values)} values are not whole groups of {samples} samples")
    return [sum(values[i : i + samples]) / samples for i in range(0, len(values), samples)]


def mean_over_prompts(values: Sequence[float], samples: int = 1) -> Mean:
    """The mean of ``values`` (``samples`` consecutive ones per prompt) and its standard error across
    prompts; one prompt has no spread to measure, so its SE is reported as infinite."""
    means = prompt_means(values, samples)
    n = len(means)
    if n == 0:
        raise ValueError("no values to average")
    mean = sum(means) / n
    if n == 1:
        return Mean(mean, math.inf, 1)
    variance = sum((m - mean) ** 2 for m in means) / (n - 1)
    return Mean(mean, math.sqrt(variance / n), n)


@dataclass(frozen=True)
class WinRate:
    """Wins, ties and losses of side A against side B. ``win_rate`` is over the decisive comparisons
    (ties counted apart), so a model against itself reads 0.5 whatever its tie rate."""

    wins: int
    ties: int
    losses: int
    samples: int = 1

    @property
    def comparisons(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_rate(self) -> float:
        decisive = self.wins + self.losses
        return self.wins / decisive if decisive else math.nan

    @property
    def tie_rate(self) -> float:
        return self.ties / self.comparisons if self.comparisons else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson 95% interval of the win rate, over decisive comparisons / K (see the module's note)."""
        decisive = self.wins + self.losses
        if not decisive:
            return 0.0, 1.0
        n = max(1, round(decisive / self.samples))
        return wilson_interval(self.wins / decisive * n, n)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"win_rate": self.win_rate, "interval95": list(self.interval), "tie_rate": self.tie_rate}


def compare(a: Sequence[float], b: Sequence[float], samples: int = 1) -> WinRate:
    """How often score ``a[i]`` beats ``b[i]``; equal scores are ties."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} scores against {len(b)}")
    wins = sum(x > y for x, y in zip(a, b, strict=True))
    losses = sum(x < y for x, y in zip(a, b, strict=True))
    return WinRate(wins, len(a) - wins - losses, losses, samples)


@dataclass(frozen=True)
class KLEstimate:
    """KL(π‖π_ref) of completions, from the policy's own samples y ~ π(·|x): the sequence KL is the mean of
    log π(y|x) − log π_ref(y|x) (unbiased; a single sample can be negative), and ``per_token`` is the
    summed log-ratios over the summed completion tokens."""

    sequence: Mean
    per_token: float

    def as_dict(self) -> dict[str, Any]:
        return {"sequence": self.sequence.as_dict(), "per_token": self.per_token}


def kl_estimate(log_ratios: Sequence[float], tokens: Sequence[int], samples: int = 1) -> KLEstimate:
    """``log_ratios[i]`` = log π(y_i|x) − log π_ref(y_i|x) of sample ``y_i`` of π, ``tokens[i]`` its length."""
    total_tokens = sum(tokens)
    per_token = sum(log_ratios) / total_tokens if total_tokens else math.nan
    return KLEstimate(mean_over_prompts(log_ratios, samples), per_token)


def longer_wins(a_lengths: Sequence[int], b_lengths: Sequence[int], samples: int = 1) -> WinRate:
    """The win rate side A would have if the judge simply preferred the longer completion."""
    return compare([float(n) for n in a_lengths], [float(n) for n in b_lengths], samples)


def judge_prefers_longer(
    a_scores: Sequence[float], b_scores: Sequence[float], a_lengths: Sequence[int], b_lengths: Sequence[int]
) -> float:
    """Among comparisons with different lengths and a decisive verdict, the share the longer side won:
    near 1, the judge may be rewarding length rather than content."""
    agree = total = 0
    for sa, sb, la, lb in zip(a_scores, b_scores, a_lengths, b_lengths, strict=True):
        if la != lb and sa != sb:
            total += 1
            agree += (sa > sb) == (la > lb)
    return agree / total if total else math.nan
