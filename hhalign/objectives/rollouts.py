"""The scored samples an online step trains on, and their form in a checkpoint: a run that takes several
optimizer steps on one batch of samples (``num_iterations``) and is stopped between them resumes on the same
samples, not on new ones drawn by a policy that has moved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hhalign.data.batches import GroupBatch, collate_groups
from hhalign.errors import ConfigError
from hhalign.models.generation import Completion

ROLLOUT_KEY = "hhalign_online_rollouts"
"""Where a checkpoint keeps the samples of each rank that later optimizer steps will reuse."""


@dataclass
class Rollout:
    """K scored completions of each of P prompts: ``batch`` holds them as sampled (behind one copy of each
    prompt), ``rewards`` ``(P, K)`` the total reward, ``terms`` each term, ``finished`` ``(P, K)`` whether each
    completion ended with EOS."""

    prompts: list[list[int]]
    completions: list[list[Completion]]
    batch: GroupBatch
    rewards: Tensor
    terms: dict[str, Tensor]
    finished: Tensor
    seconds: dict[str, float]
    kept: dict[str, Tensor] = field(default_factory=dict)
    """What the objective keeps of its first step on these samples for the next ones (``iterations_per_rollout``)."""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.rewards.shape)  # type: ignore[return-value]


def rollout_state(rollout: Rollout, start_step: int) -> dict[str, Any]:
    """Plain lists and CPU tensors (what ``torch.load(weights_only=True)`` reads back)."""
    return {
        "start_step": start_step,
        "prompts": rollout.prompts,
        "tokens": [[c.tokens for c in group] for group in rollout.completions],
        "finished": rollout.finished.cpu(),
        "rewards": rollout.rewards.cpu(),
        "terms": {name: value.cpu() for name, value in rollout.terms.items()},
        "kept": {name: value.cpu() for name, value in rollout.kept.items()},
    }


def rollout_from_state(state: dict[str, Any], pad_token_id: int, device: torch.device) -> tuple[Rollout, int]:
    """The rollout ``rollout_state`` saved, on ``device``, and the step that sampled it."""
    finished = state["finished"]
    completions = [
        [Completion(tokens, bool(done)) for tokens, done in zip(group, row, strict=True)]
        for group, row in zip(state["tokens"], finished.tolist(), strict=True)
    ]
    batch = collate_groups(state["prompts"], state["tokens"], pad_token_id).to(device)
    rollout = Rollout(
        state["prompts"], completions, batch, state["rewards"].to(device), dict(state["terms"]),
        finished.to(device), {"sampling": 0.0, "scoring": 0.0}, {k: v.to(device) for k, v in state["kept"].items()},
    )  # fmt: skip
    return rollout, int(state["start_step"])


def gather_states(state: dict[str, Any], world: int) -> list[dict[str, Any]]:
    """Every rank's saved rollout, in rank order. Lightning builds the checkpoint on every rank and writes rank
    0's, so this collective runs on all of them."""
    if world == 1:
        return [state]
    states: list[Any] = [None] * world
    torch.distributed.all_gather_object(states, state)
    return states


def own_state(states: list[dict[str, Any]], world: int, rank: int) -> dict[str, Any]:
    if len(states) != world:
        raise ConfigError(
            f"the checkpoint stopped between optimizer steps on samples drawn by {len(states)} processes; resume "
            f"it on {len(states)} (this run has {world}), or from a checkpoint at a sampling step"
        )
    return states[rank]
