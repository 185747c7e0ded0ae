"""KTOModule: a policy trained on unpaired completions, each desirable or not, against a frozen reference."""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse.typing import PositiveFloat

from hhalign.data.batches import UnpairedBatch
from hhalign.losses.kto import kto_loss, kto_reference_point
from hhalign.models.forward import model_inputs, response_logps
from hhalign.objectives.outputs import StepOutputs
from hhalign.objectives.reference import PolicyModule

__all__ = ["KTOModule"]


class KTOModule(PolicyModule):
    """Kahneman–Tversky Optimization (Ethayarajh et al. 2024): no pairs needed, only a label per completion.

    Args (beside ``PolicyModule``'s and ``AlignmentModule``'s):
        beta: Scale of the log-ratios inside the value function (the paper's β).
        desirable_weight: λ_D; with unbalanced data the paper keeps ``λ_D·n_D / (λ_U·n_U)`` in [1, 4/3].
        undesirable_weight: λ_U.

    Each step also runs the policy (no gradient) and the reference over mismatched completions, each batch
    completion after another example's prompt, for the reference point ``z₀`` (logged as ``kl``). hh-rlhf pairs
    become two examples each (``data.examples: unpaired``): the chosen reply desirable, the rejected one not.
    """

    examples = "completions"
    monitor = ("val/loss", "min")
    plot_panels = ("loss", "kl", "desirable_reward", "undesirable_reward")
    progress_metrics = ("loss",)

    def __init__(
        self,
        model_name_or_path: str,
        ref_model_name_or_path: str | None = None,
        beta: PositiveFloat = 0.1,  # type: ignore[assignment]
        desirable_weight: PositiveFloat = 1.0,  # type: ignore[assignment]
        undesirable_weight: PositiveFloat = 1.0,  # type: ignore[assignment]
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name_or_path, ref_model_name_or_path, **kwargs)

    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "kl", "desirable_reward", "undesirable_reward")

    def step_outputs(self, batch: UnpairedBatch) -> StepOutputs:
        policy = self.trainable_module()
        inputs, mismatched = model_inputs(policy, batch.completions), model_inputs(policy, batch.mismatched)
        logps, _ = response_logps(policy, inputs)
        with torch.no_grad(), self.reference() as ref:
            mismatched_logratios = response_logps(policy, mismatched)[0] - response_logps(ref, mismatched)[0]
            ref_logps, _ = response_logps(ref, inputs)
        reference_point = kto_reference_point(mismatched_logratios)
        if self._trainer is not None and self.training:  # one z₀ for the global batch, as the paper's estimate
            # over it; evaluation keeps each batch's own, as one process would, and takes no collective per batch
            reference_point = self.trainer.strategy.reduce(reference_point, reduce_op="mean")
        hp = self.hparams
        losses, rewards = kto_loss(
            logps - ref_logps, batch.desirable, reference_point, hp.beta, hp.desirable_weight, hp.undesirable_weight
        )
        desirable = batch.desirable.float()
        metrics = {
            "loss": (losses.detach(), None),
            "kl": (reference_point.expand_as(losses), None),
            "desirable_reward": (rewards, desirable),
            "undesirable_reward": (rewards, 1 - desirable),
        }
        return StepOutputs(losses.mean(), metrics, len(losses))
