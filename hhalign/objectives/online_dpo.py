"""OnlineDPOModule: DPO's losses on pairs the policy samples itself, the reward saying which reply is chosen."""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse.typing import PositiveFloat

from hhalign.data.batches import GroupBatch
from hhalign.errors import ConfigError
from hhalign.losses.preference import LossOptions, LossType, PairLogps, as_list, check_preference_options
from hhalign.losses.preference import preference_losses as table_losses
from hhalign.objectives.online import Forwards, Metrics, OnlineModule, Rollout
from hhalign.objectives.outputs import StepOutputs
from hhalign.objectives.rollouts import Prepared

__all__ = ["OnlineDPOModule"]


class OnlineDPOModule(OnlineModule):
    """Online DPO (Guo et al. 2024): two samples of each prompt, the reward's higher one chosen, then any loss of
    the preference table (``hhalign.losses.preference``) on that pair against the frozen reference. Pairs whose
    two rewards tie teach nothing and are dropped, and counted (``tie_share``).

    Args (beside ``OnlineModule``'s; ``num_generations`` is 2):
        loss_type, loss_weights, label_smoothing, discopop_tau, simpo_gamma: as for ``DPOModule``.

    The log-probs are the policy's own (temperature 1), as DPO's implicit reward is defined; the samples are
    drawn at ``temperature``. Its defaults are TRL's ``OnlineDPOTrainer``'s: β 0.1, ``sigmoid``, temperature
    0.9, 64 new tokens, the higher-scored sample chosen (TRL takes the first on a tie; here a tie teaches
    nothing and is dropped), gradients clipped at 1.0.
    """

    training_metrics = ("reward_accuracy", "reward_margin", "tie_share", "reward_gap")
    plot_panels = ("loss", "reward", "kl_k1", "completion_length", "reward_accuracy", "tie_share")

    def __init__(
        self,
        model_name_or_path: str,
        ref_model_name_or_path: str | None = None,
        beta: PositiveFloat = 0.1,  # type: ignore[assignment]
        loss_type: LossType | list[LossType] = "sigmoid",
        loss_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        discopop_tau: float = 0.05,
        simpo_gamma: float = 0.5,
        num_generations: int = 2,
        temperature: PositiveFloat = 0.9,  # type: ignore[assignment]
        **kwargs: Any,
    ) -> None:
        check_preference_options(beta, loss_type, loss_weights, label_smoothing)
        if "bco_pair" in as_list(loss_type):
            raise ConfigError("loss_type bco_pair keeps a running mean over a fixed dataset; it is offline only")
        super().__init__(model_name_or_path, ref_model_name_or_path, beta=beta, num_generations=num_generations,
                         temperature=temperature, **kwargs)  # fmt: skip

    def check_options(self, num_generations: int) -> None:
        if num_generations != 2:
            raise ConfigError(f"--model.num_generations {num_generations}: online DPO samples a pair, 2 per prompt")

    def needs_reference(self) -> bool:
        from hhalign.losses.preference import needs_reference

        return needs_reference(as_list(self.hparams.loss_type))

    def prepare(self, rollout: Rollout, sampled: Forwards) -> tuple[Prepared, Metrics]:
        logps, mask = sampled["logps"], sampled["mask"]
        ref_logps = self.reference_token_logps(rollout.batch)
        prepared = {} if ref_logps is None else {"ref_sums": (ref_logps * mask.float()).sum(1)}
        return prepared, self.shared_metrics(rollout, logps, ref_logps, mask)

    logps_at_sampling_temperature = False

    def forwards(self, batch: GroupBatch) -> Forwards:
        """The policy's own log-probs (temperature 1), as DPO's implicit reward is defined."""
        logps, mask = self.token_logps(self.trainable_module(), batch)
        return {"logps": logps, "mask": mask}

    def micro_share(self, part: Rollout, step: Rollout) -> float:
        """The loss is a mean over the untied pairs."""
        untied = int((step.rewards[:, 0] != step.rewards[:, 1]).sum())
        return int((part.rewards[:, 0] != part.rewards[:, 1]).sum()) / untied if untied else 1.0

    def update_outputs(self, rollout: Rollout, prepared: Prepared, current: Forwards) -> StepOutputs:
        hp = self.hparams
        logps, mask = current["logps"], current["mask"]
        sums, counts = (logps * mask.float()).sum(1).view(-1, 2), mask.sum(1).view(-1, 2)
        rewards = rollout.rewards
        first_wins = rewards[:, 0] > rewards[:, 1]
        untied = rewards[:, 0] != rewards[:, 1]
        chosen_col = (~first_wins).long()  # 0 when the first sample is chosen
        rows = torch.arange(len(rewards), device=rewards.device)

        def pick(values: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
            return values[rows, column][untied]

        ref_sums = prepared["ref_sums"].view(-1, 2) if "ref_sums" in prepared else None
        x = PairLogps(
            pick(sums, chosen_col),
            pick(sums, 1 - chosen_col),
            None if ref_sums is None else pick(ref_sums, chosen_col),
            None if ref_sums is None else pick(ref_sums, 1 - chosen_col),
            pick(counts, chosen_col),
            pick(counts, 1 - chosen_col),
        )
        options = LossOptions(hp.beta, hp.label_smoothing, hp.discopop_tau, hp.simpo_gamma)
        losses, chosen_rewards, rejected_rewards = table_losses(x, options, hp.loss_type, hp.loss_weights)
        # all pairs tied: a zero loss that still reaches every trained weight (DDP expects a gradient everywhere)
        loss = losses.mean() if len(losses) else logps.sum() * 0.0
        metrics = {"loss": (loss.detach()[None], None), "tie_share": ((~untied).float(), None)}
        if len(losses):
            metrics["reward_accuracy"] = ((chosen_rewards > rejected_rewards).float(), None)
            metrics["reward_margin"] = (chosen_rewards - rejected_rewards, None)
            metrics["reward_gap"] = ((rewards.max(1).values - rewards.min(1).values)[untied], None)
        return StepOutputs(loss, metrics, rollout.shape[0])
