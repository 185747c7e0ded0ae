"""RLOOModule and GRPOModule: policy gradient on K samples per prompt, one estimator with a table of advantages
(``hhalign.losses.policy_gradient.ADVANTAGES``), the KL to the reference in the reward or in the loss."""

from __future__ import annotations

from typing import Any, Literal

from jsonargparse.typing import NonNegativeFloat, PositiveInt

from hhalign.errors import ConfigError
from hhalign.losses.policy_gradient import (
    AdvantageType,
    TokenReduction,
    advantages,
    clipped_surrogate,
    k1,
    k3,
    penalized_rewards,
    reduce_token_losses,
    zero_advantage_share,
)
from hhalign.objectives.online import OnlineModule, Rollout
from hhalign.objectives.outputs import StepOutputs

__all__ = ["GRPOModule", "RLOOModule"]
KLPlacement = Literal["reward", "loss"]


class RLOOModule(OnlineModule):
    """REINFORCE with the leave-one-out baseline over K samples of each prompt (Ahmadian et al. 2024), and,
    through ``advantage``, GRPO's group-normalized advantage (Shao et al. 2024) or Dr. GRPO's (Liu et al. 2025).

    Args (beside ``OnlineModule``'s):
        advantage: ``rloo`` (leave-one-out), ``grpo`` (group mean and std), ``dr_grpo`` (group mean only).
        kl_in: ``reward``: ``β·Σ_t k1`` subtracted from each completion's reward before the advantage (TRL's
            RLOO, OpenRLHF, AReaL); ``loss``: ``β·k3`` per token added to the loss (TRL's GRPO).
        loss_type: How token losses become one number: ``grpo`` (mean over completions of their token means),
            ``bnpo`` (mean over all tokens), ``dr_grpo`` (sum over tokens / (completions × max_completion_length):
            REINFORCE's sequence sum up to a constant).
        epsilon: The clipped ratio's lower ε; ``epsilon_high`` its upper (default ``epsilon``). With one optimizer
            step per sampled batch the ratio is 1 and nothing clips (``clip_fraction`` 0).
        num_iterations: Optimizer steps on each sampled batch (TRL's name). From the second on, the ratio to the
            sampling policy is clipped; the advantages and the reference's log-probs are those of the first.
            Training steps that reuse samples leave their own batch of prompts unused (an epoch over the prompts
            then takes ``num_iterations`` times the steps but samples from a ``1/num_iterations`` share of them).

    The log-probs are recomputed at the sampling temperature (the distribution the samples came from).
    """

    training_metrics = ("advantage_std", "zero_advantage_share", "clip_fraction")

    def __init__(
        self,
        model_name_or_path: str,
        ref_model_name_or_path: str | None = None,
        advantage: AdvantageType = "rloo",
        kl_in: KLPlacement = "reward",
        loss_type: TokenReduction = "dr_grpo",
        epsilon: NonNegativeFloat = 0.2,  # type: ignore[assignment]
        epsilon_high: NonNegativeFloat | None = None,
        num_iterations: PositiveInt = 1,  # type: ignore[assignment]
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name_or_path, ref_model_name_or_path, **kwargs)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams.num_iterations > 1 and self.trainer.accumulate_grad_batches > 1:
            raise ConfigError(
                f"--model.num_iterations {self.hparams.num_iterations} with --trainer.accumulate_grad_batches "
                f"{self.trainer.accumulate_grad_batches}: samples are reused per optimizer step, so accumulate by "
                "sampling more prompts a step (--data.batch_size) instead"
            )

    def check_options(self, num_generations: int) -> None:
        if num_generations < 2:
            raise ConfigError(
                f"--model.num_generations {num_generations}: RLOO and GRPO compare K >= 2 samples of each prompt "
                "(the baseline is the others' reward); set it to 2 or more (4 is usual)"
            )

    def rollout_outputs(self, rollout: Rollout) -> StepOutputs:
        hp = self.hparams
        logps, mask = self.token_logps(self.trainable_module(), rollout.batch, hp.temperature)
        if not rollout.kept:  # the first step on these samples: the sampling policy's numbers, kept for the rest
            ref_logps = self.reference_token_logps(rollout.batch, hp.temperature) if hp.beta > 0 else None
            rewards = rollout.rewards
            if ref_logps is not None and hp.kl_in == "reward":
                sequence_k1 = (k1(logps.detach(), ref_logps) * mask.float()).sum(1)
                rewards = penalized_rewards(rewards, sequence_k1.view_as(rewards), hp.beta)
            rollout.kept = {"old_logps": logps.detach(), "advantage": advantages(rewards, hp.advantage)}
            if ref_logps is not None:
                rollout.kept["ref_logps"] = ref_logps
        old_logps, advantage = rollout.kept["old_logps"], rollout.kept["advantage"]
        ref_logps = rollout.kept.get("ref_logps")
        epsilon_high = hp.epsilon if hp.epsilon_high is None else hp.epsilon_high
        surrogate = clipped_surrogate(logps, old_logps, advantage.reshape(-1, 1), mask, hp.epsilon, epsilon_high)
        token_losses = surrogate.token_losses
        if ref_logps is not None and hp.kl_in == "loss":
            token_losses = token_losses + hp.beta * k3(logps, ref_logps)
        loss = reduce_token_losses(token_losses, mask, hp.loss_type, hp.max_completion_length)
        metrics = self.shared_metrics(rollout, logps, ref_logps, mask)
        metrics["loss"] = (loss.detach()[None], None)
        metrics["advantage_std"] = (advantage.flatten().std(correction=0)[None], None)
        metrics["zero_advantage_share"] = (zero_advantage_share(rollout.rewards)[None], None)
        metrics["clip_fraction"] = (surrogate.clip_fraction.detach()[None], None)
        return StepOutputs(loss, metrics, rollout.shape[0])


class GRPOModule(RLOOModule):
    """GRPO as TRL's ``GRPOTrainer`` runs it by default: group-normalized advantages, the KL as ``β·k3`` per
    token in the loss, each completion's token mean averaged. Every option of ``RLOOModule`` applies."""

    def __init__(
        self,
        model_name_or_path: str,
        ref_model_name_or_path: str | None = None,
        advantage: AdvantageType = "grpo",
        kl_in: KLPlacement = "loss",
        loss_type: TokenReduction = "grpo",
        epsilon: NonNegativeFloat = 0.2,  # type: ignore[assignment]
        epsilon_high: NonNegativeFloat | None = None,
        num_iterations: PositiveInt = 1,  # type: ignore[assignment]
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name_or_path, ref_model_name_or_path, advantage, kl_in, loss_type, epsilon,
                         epsilon_high, num_iterations, **kwargs)  # fmt: skip
