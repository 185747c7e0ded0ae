"""What a step computes, in the form the base module logs: per-pair results, step outputs, and the
length diagnostics of an evaluation over pairs."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from hhalign.data.batches import AnyPairBatch

PAIR_METRICS = ("loss", "reward_accuracy", "tie_rate", "reward_margin", "chosen_reward", "rejected_reward")
LENGTH_METRICS = ("length_baseline", "chosen_shorter_rate", "reward_accuracy_chosen_shorter")
"""Evaluations of pairs also say how far "the longer reply wins" gets on the same pairs, and how the
rewards rank the pairs where the chosen reply is the shorter one, where that rule is always wrong."""


@dataclass
class StepOutputs:
    """One step's scalar ``loss`` (carrying the gradient) and its metrics as ``(values, weights)``,
    averaged over items (weights None) or weighted (e.g. per-token losses weighted by token counts)."""

    loss: Tensor
    metrics: dict[str, tuple[Tensor, Tensor | None]]
    batch_size: int


@dataclass
class PairOutputs:
    """Per-pair results of one step, each ``(B,)``; ``losses`` carries the gradient."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)

    def step_outputs(self) -> StepOutputs:
        return StepOutputs(
            self.losses.mean(), {k: (v, None) for k, v in self.metric_values().items()}, len(self.losses)
        )

    def metric_values(self) -> dict[str, Tensor]:
        chosen, rejected = self.chosen_rewards.detach().float(), self.rejected_rewards.detach().float()
        return {
            "loss": self.losses.detach().float(),
            "reward_accuracy": (chosen > rejected).float(),
            "tie_rate": (chosen == rejected).float(),
            "reward_margin": chosen - rejected,
            "chosen_reward": chosen,
            "rejected_reward": rejected,
            **{k: v.detach().float() for k, v in self.extras.items()},
        }


def length_metrics(out: StepOutputs, batch: AnyPairBatch) -> dict[str, tuple[Tensor, Tensor | None]]:
    """``LENGTH_METRICS`` of a batch of pairs, in response tokens; equal lengths count as neither longer
    nor shorter. The accuracy on chosen-shorter pairs is a mean weighted by which pairs those are."""
    chosen_len, rejected_len = batch.response_lengths()
    shorter = (chosen_len < rejected_len).float()
    correct = (out.metrics["chosen_reward"][0] > out.metrics["rejected_reward"][0]).float()
    return {
        "length_baseline": ((chosen_len > rejected_len).float(), None),
        "chosen_shorter_rate": (shorter, None),
        "reward_accuracy_chosen_shorter": (correct, shorter),
    }
