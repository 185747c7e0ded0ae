"""The scored samples an online step trains on, and the minibatches its optimizer steps take of them.

One training step is one rollout: sample and score once, then ``num_iterations`` passes over the samples, each
in ``num_minibatches`` optimizer steps (as OpenRLHF, verl and TRL's ``steps_per_generation`` do). A checkpoint
therefore always falls between rollouts and holds no samples: a resumed run draws the next rollout afresh, from
the seed of its step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from hhalign.data.batches import GroupBatch, collate_groups
from hhalign.models.generation import Completion

Prepared = dict[str, Tensor]
"""What an objective computes once per rollout, before its optimizer steps (the sampling policy's log-probs,
the reference's, advantages): every tensor has one row per completion; a 2-D one is per token, ``(N, T)``."""


@dataclass
class Rollout:
    """K scored completions of each of P prompts: ``batch`` holds them as sampled (behind one copy of each
    prompt), ``rewards`` ``(P, K)`` the total reward, ``terms`` each term, ``finished`` ``(P, K)`` whether each
    completion ended with EOS, ``engine_logps`` ``(N, T)`` the log-probs the engine sampled each token with (when
    it reports them)."""

    prompts: list[list[int]]
    completions: list[list[Completion]]
    batch: GroupBatch
    rewards: Tensor
    terms: dict[str, Tensor]
    finished: Tensor
    seconds: dict[str, float]
    engine_logps: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.rewards.shape)  # type: ignore[return-value]

    def select(self, prompt_rows: Tensor, pad_token_id: int) -> Rollout:
        """The rollout of some of its prompts (all K completions of each), collated afresh."""
        rows = prompt_rows.tolist()
        prompts = [self.prompts[i] for i in rows]
        completions = [self.completions[i] for i in rows]
        tokens = [[c.tokens for c in group] for group in completions]
        batch = collate_groups(prompts, tokens, pad_token_id).to(self.rewards.device)
        terms = {name: value[prompt_rows.to(value.device)] for name, value in self.terms.items()}
        on_device = prompt_rows.to(self.rewards.device)
        engine = self.engine_logps
        if engine is not None:
            engine = engine[completion_rows(on_device, self.shape[1])]
        return Rollout(
            prompts, completions, batch, self.rewards[on_device], terms, self.finished[on_device], self.seconds, engine
        )


def engine_token_logps(groups: list[list[Completion]]) -> Tensor | None:
    """The engine's log-prob of every sampled token, ``(N, T)`` left-aligned one completion a row (0 after its
    end), when the engine reported them."""
    flat = [c for group in groups for c in group]
    if not flat or any(c.logps is None for c in flat):
        return None
    out = torch.zeros(len(flat), max(1, max(len(c.tokens) for c in flat)))
    for row, completion in enumerate(flat):
        out[row, : len(completion.tokens)] = torch.tensor(completion.logps, dtype=out.dtype)
    return out


def select_prepared(prepared: Prepared, prompt_rows: Tensor, k: int, width: int) -> Prepared:
    """``prepared``'s rows of the completions of ``prompt_rows`` (K each), per-token tensors cut to ``width``
    (the longest of those completions: every per-token tensor is left-aligned, one completion per row)."""
    rows = completion_rows(prompt_rows, k)
    picked = {}
    for name, value in prepared.items():
        chosen = value[rows.to(value.device)]
        picked[name] = chosen[:, :width] if chosen.dim() == 2 else chosen
    return picked


def completion_rows(prompt_rows: Tensor, k: int) -> Tensor:
    """The rows of the K completions of each of ``prompt_rows`` (completions are prompt-major)."""
    return (prompt_rows[:, None] * k + torch.arange(k, device=prompt_rows.device)[None]).flatten()


def minibatch_rows(n_prompts: int, num_iterations: int, num_minibatches: int, seed: int) -> Iterator[Tensor]:
    """The prompt rows of each optimizer step: every pass visits each prompt once, in ``num_minibatches``
    near-equal parts of an order drawn from ``seed`` (the sampling order when a pass is one minibatch)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(num_iterations):
        order = torch.arange(n_prompts) if num_minibatches == 1 else torch.randperm(n_prompts, generator=generator)
        yield from (part for part in torch.tensor_split(order, num_minibatches) if len(part))
