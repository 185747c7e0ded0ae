"""RLOOModule and GRPOModule: policy gradient on K samples per prompt, one estimator with a table of advantages
(``hhalign.losses.policy_gradient.ADVANTAGES``), the KL to the reference in the reward or in the loss."""

from __future__ import annotations

from typing import Any, Literal

from jsonargparse.typing import NonNegativeFloat, PositiveInt

from hhalign.errors import ConfigError
from hhalign.losses.policy_gradient import (
    AdvantageType,
    LossType,
    advantages,
    clipped_surrogate,
    k1,
    k3,
    penalized_rewards,
    reduce_token_losses,
    sequence_surrogate,
    whiten,
    zero_advantage_share,
)
from hhalign.objectives.online import Forwards, Metrics, OnlineModule, Rollout
from hhalign.objectives.outputs import StepOutputs
from hhalign.objectives.rollouts import Prepared

__all__ = ["GRPOModule", "RLOOModule"]
KLPlacement = Literal["reward", "loss"]


class RLOOModule(OnlineModule):
    """REINFORCE with the leave-one-out baseline over K samples of each prompt (Ahmadian et al. 2024), and,
    through ``advantage``, GRPO's group-normalized advantage (Shao et al. 2024) or Dr. GRPO's (Liu et al. 2025).

    Its defaults are TRL's ``RLOOTrainer``'s: K = 2, β 0.05 with the KL as ``β·Σ_t k1`` in the reward, one ratio
    per completion (``loss_type sequence``) averaged over completions, ε 0.2, no advantage whitening, gradients
    clipped at 1.0. Where it differs: ``max_completion_length`` 64 (TRL 256), sized for a CPU.

    Args (beside ``OnlineModule``'s):
        advantage: ``rloo`` (leave-one-out), ``grpo`` (group mean and std), ``dr_grpo`` (group mean only).
        kl_in: ``reward``: ``β·Σ_t k1`` subtracted from each completion's reward before the advantage (TRL's
            RLOO, OpenRLHF, AReaL); ``loss``: ``β·k3`` per token added to the loss (TRL's GRPO).
        loss_type: ``sequence``: one ratio per completion, the mean over completions (TRL's RLOO); or per-token
            ratios reduced as ``grpo`` (the mean of each completion's token mean), ``bnpo`` (the mean over this
            process's tokens), ``dapo`` (over the global batch's tokens: TRL's GRPO default), ``dr_grpo`` (the
            token sum over completions × ``max_completion_length``).
        epsilon: The clipped ratio's lower ε; ``epsilon_high`` its upper (default ``epsilon``). With one optimizer
            step per rollout the ratio is 1 and nothing clips (``clip_fraction`` 0).
        whiten_advantages: Whiten the advantages over the global batch (OpenRLHF's REINFORCE and GAE; with
            ``advantage dr_grpo`` this is REINFORCE++-baseline).

    The log-probs are recomputed at the sampling temperature (the distribution the samples came from).
    """

    training_metrics = ("advantage_std", "zero_advantage_share", "clip_fraction")

    def __init__(
        self,
        model_name_or_path: str,
        ref_model_name_or_path: str | None = None,
        advantage: AdvantageType = "rloo",
        kl_in: KLPlacement = "reward",
        loss_type: LossType = "sequence",
        epsilon: NonNegativeFloat = 0.2,  # type: ignore[assignment]
        epsilon_high: NonNegativeFloat | None = None,
        whiten_advantages: bool = False,
        num_generations: PositiveInt = 2,  # type: ignore[assignment]
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name_or_path, ref_model_name_or_path, num_generations=num_generations, **kwargs)

    def check_options(self, num_generations: int) -> None:
        if num_generations < 2:
            raise ConfigError(
                f"--model.num_generations {num_generations}: RLOO and GRPO compare K >= 2 samples of each prompt "
                "(the baseline is the others' reward); set it to 2 or more (4 is usual)"
            )

    def prepare(self, rollout: Rollout, sampled: Forwards) -> tuple[Prepared, Metrics]:
        hp = self.hparams
        logps, mask = sampled["logps"], sampled["mask"]
        ref_logps = self.reference_token_logps(rollout.batch, hp.temperature) if hp.beta > 0 else None
        rewards = rollout.rewards
        if ref_logps is not None and hp.kl_in == "reward":
            sequence_k1 = (k1(logps, ref_logps) * mask.float()).sum(1)
            rewards = penalized_rewards(rewards, sequence_k1.view_as(rewards), hp.beta)
        advantage = advantages(rewards, hp.advantage).flatten()
        if hp.whiten_advantages:
            advantage = whiten(advantage, total=self.summed)
        prepared = {"old_logps": logps, "advantage": advantage}
        if ref_logps is not None:
            prepared["ref_logps"] = ref_logps
        metrics = self.shared_metrics(rollout, logps, ref_logps, mask)
        metrics["advantage_std"] = (advantage.std(correction=0)[None], None)
        metrics["zero_advantage_share"] = (zero_advantage_share(rewards)[None], None)  # the rewards it reads
        return prepared, metrics

    def micro_share(self, part: Rollout, step: Rollout) -> float:
        """``dapo`` divides by the step's tokens already; ``bnpo`` is a mean over this process's tokens."""
        if self.hparams.loss_type == "dapo":
            return 1.0
        if self.hparams.loss_type == "bnpo":
            return float(part.batch.completion_lengths.sum() / step.batch.completion_lengths.sum())
        return super().micro_share(part, step)

    def update_outputs(self, rollout: Rollout, prepared: Prepared, current: Forwards) -> StepOutputs:
        hp = self.hparams
        logps, mask = current["logps"], current["mask"]
        old_logps, advantage, ref_logps = prepared["old_logps"], prepared["advantage"], prepared.get("ref_logps")
        epsilon_high = hp.epsilon if hp.epsilon_high is None else hp.epsilon_high
        kl_loss = ref_logps is not None and hp.kl_in == "loss"
        if hp.loss_type == "sequence":
            surrogate = sequence_surrogate(logps, old_logps, advantage, mask, hp.epsilon, epsilon_high)
            losses = surrogate.token_losses * prepared.get("engine_weights", 1.0)
            if kl_loss:
                losses = losses + hp.beta * (k3(logps, ref_logps) * mask.float()).sum(1)
            loss = losses.mean()
        else:
            surrogate = clipped_surrogate(logps, old_logps, advantage.reshape(-1, 1), mask, hp.epsilon, epsilon_high)
            token_losses = surrogate.token_losses * prepared.get("engine_weights", 1.0)
            if kl_loss:
                token_losses = token_losses + hp.beta * k3(logps, ref_logps)
            per_process = self.tokens_per_process(mask) if hp.loss_type == "dapo" else None
            loss = reduce_token_losses(token_losses, mask, hp.loss_type, hp.max_completion_length, per_process)
        metrics = {"loss": (loss.detach()[None], None), "clip_fraction": (surrogate.clip_fraction.detach()[None], None)}
        return StepOutputs(loss, metrics, rollout.shape[0])


class GRPOModule(RLOOModule):
    """GRPO with TRL's ``GRPOTrainer``'s defaults: K = 8, group-normalized advantages (the unbiased std), β 0
    (no reference loaded; with β > 0 the KL is ``β·k3`` per token in the loss), per-token ratios with the
    ``dapo`` reduction (every token of the global batch weighs the same), ε 0.2, gradients clipped at 1.0.
    Where it differs: ``max_completion_length`` 64 (TRL 512), sized for a CPU. Every option of
    ``RLOOModule`` applies."""

    def __init__(
        self,
        model_name_or_path: str,
        ref_model_name_or_path: str | None = None,
        advantage: AdvantageType = "grpo",
        kl_in: KLPlacement = "loss",
        loss_type: LossType = "dapo",
        num_generations: PositiveInt = 8,  # type: ignore[assignment]
        beta: NonNegativeFloat = 0.0,  # type: ignore[assignment]
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model_name_or_path,
            ref_model_name_or_path,
            advantage=advantage,
            kl_in=kl_in,
            loss_type=loss_type,
            num_generations=num_generations,
            beta=beta,
            **kwargs,
        )
