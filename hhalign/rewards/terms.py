"""The reward an online objective optimizes: a frozen reward model and/or rule-based functions, weighted and
summed, with an optional penalty for completions that never ended."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hhalign.errors import ConfigError
from hhalign.models.generation import Completion
from hhalign.rewards.functions import RewardFunction
from hhalign.rewards.model import RewardModel


@dataclass
class Rewards:
    """Reward terms with a weight each (the model's first), and ``missing_eos_penalty``: subtracted (not
    substituted) from the weighted sum of a completion cut by the length limit, so that the terms still rank
    unfinished completions among themselves. ``normalize`` puts the reward model's scores on the scale of its
    validation statistics (mean 0, std 1 on held-out replies), so that β, clipping and learning rates mean the
    same for any reward model; ``clip`` bounds the total to ``[−clip, clip]`` (OpenRLHF clips at 10)."""

    model: RewardModel | None
    functions: list[RewardFunction] = field(default_factory=list)
    weights: list[float] | None = None
    missing_eos_penalty: float | None = None
    normalize: bool = True
    clip: float | None = None

    def __post_init__(self) -> None:
        if self.model is None and not self.functions:
            raise ConfigError(
                "an online objective needs a reward: --model.reward_model (a reward model's export or .ckpt) "
                "and/or --model.reward_functions module:function"
            )
        if self.normalize and self.model is not None and not self.model.stats.get("std"):
            warnings.warn(
                f"reward model {self.model.name} records no score statistics (not an hhalign export): its scores "
                "are used as they are; set --model.normalize_reward false to say so",
                stacklevel=2,
            )
        if self.weights is None:
            self.weights = [1.0] * len(self.names)
        if len(self.weights) != len(self.names):
            raise ConfigError(
                f"--model.reward_weights has {len(self.weights)} weights for {len(self.names)} reward terms "
                f"({', '.join(self.names)}); give one weight per term, the reward model's first"
            )

    @property
    def names(self) -> list[str]:
        """Each term's metric name: ``model`` and each function's own name."""
        return (["model"] if self.model is not None else []) + [f.name.rpartition(":")[2] for f in self.functions]

    def score(
        self,
        prompts: Sequence[Sequence[int]],
        groups: Sequence[Sequence[Completion]],
        stop_id: int,
        decode: Callable[[Sequence[int]], str],
        columns: Sequence[dict[str, Any]] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The total reward ``(P, K)`` of K completions of each prompt, and each term ``(P, K)`` unweighted.
        The reward model reads each completion with its EOS (``Completion.ended``), as it was trained; reward
        functions may read each prompt's record ``columns``."""
        shape = (len(groups), len(groups[0]))
        terms: dict[str, Tensor] = {}
        if self.model is not None:
            ended = [[c.ended(stop_id) for c in group] for group in groups]
            scores = self.model.score_groups(prompts, ended).cpu()
            terms["model"] = self.model.normalized(scores) if self.normalize else scores
        if self.functions:
            prompt_texts = [decode(p) for p, group in zip(prompts, groups, strict=True) for _ in group]
            completion_texts = [decode(c.tokens) for group in groups for c in group]
            per_completion = None
            if columns is not None:  # each prompt's columns, once per completion of it
                per_completion = [row for row, group in zip(columns, groups, strict=True) for _ in group]
            for function, name in zip(self.functions, self.names[-len(self.functions) :], strict=True):
                terms[name] = function(prompt_texts, completion_texts, per_completion).view(shape)
        assert self.weights is not None
        total = sum(w * terms[n] for w, n in zip(self.weights, self.names, strict=True))
        if self.missing_eos_penalty:
            unfinished = torch.tensor([[not c.finished for c in group] for group in groups])
            total = total - self.missing_eos_penalty * unfinished.float()
        if self.clip is not None:
            total = torch.as_tensor(total).clamp(-self.clip, self.clip)
        return torch.as_tensor(total, dtype=torch.float32), terms
