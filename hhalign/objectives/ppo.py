"""PPOModule: PPO with a critic (Schulman et al. 2017, as Ouyang et al. 2022 run it for RLHF): the KL to the
reference as a per-token reward, the reward model's score at the EOS, GAE over the critic's values, the clipped
surrogate per token and the clipped value loss."""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from hhalign.checkpoint_files import read_reward_stats
from hhalign.data.batches import GroupBatch
from hhalign.losses.critic import gae, token_rewards, value_loss
from hhalign.losses.logps import tokens_by_sequence
from hhalign.losses.policy_gradient import clipped_surrogate, k1, reduce_token_losses, whiten
from hhalign.models.forward import model_inputs, token_values
from hhalign.models.layout import scored_tokens
from hhalign.models.loading import load_model
from hhalign.objectives.online import Forwards, Metrics, OnlineModule, Rollout
from hhalign.objectives.outputs import StepOutputs
from hhalign.objectives.rollouts import Prepared
from hhalign.training.sharding import clip_global_norm

__all__ = ["PPOModule"]


class PPOModule(OnlineModule):
    """PPO with a critic, with OpenRLHF's defaults (``train_ppo_ray``, estimator ``gae``): one sample per prompt,
    the KL as ``−β·k1`` per token in the reward with β 0.01, the reward model's score (normalized, clipped to
    ±10) at the last token, GAE with γ = λ = 1, advantages whitened over the global batch, ε 0.2, the value loss
    clipped at 0.5, the critic initialised from the reward model, gradients clipped at 1.0. Where it differs:
    one optimizer (the critic a parameter group of its own, ``critic_lr``) instead of two.

    Args (beside ``OnlineModule``'s):
        critic_model_name_or_path: The critic's starting weights (a scalar head on a backbone): by default the
            reward model (as OpenRLHF), else the policy's model with a fresh head. A reward model's scores
            are normalized for the critic as for the reward.
        critic_lr: The critic's learning rate (default the optimizer's).
        gamma: GAE's discount; lam: its λ.
        epsilon: The clipped ratio's lower ε; ``epsilon_high`` its upper (default ``epsilon``).
        value_clip: How far a value may move from the sampling critic's before its loss stops pulling (None: no
            clipping).
        whiten_advantages: Whiten the advantages over the real tokens of the global batch.
        critic_warmup_steps: Optimizer steps that train the critic alone, the policy held (OpenRLHF's
            ``freezing_actor_steps``).
    """

    trained_attribute = "policy"
    training_metrics = ("policy_loss", "value_loss", "clip_fraction", "value", "advantage_std")

    def __init__(
        self,
        model_name_or_path: str,
        ref_model_name_or_path: str | None = None,
        critic_model_name_or_path: str | None = None,
        critic_lr: PositiveFloat | None = None,
        gamma: NonNegativeFloat = 1.0,  # type: ignore[assignment]
        lam: NonNegativeFloat = 1.0,  # type: ignore[assignment]
        epsilon: NonNegativeFloat = 0.2,  # type: ignore[assignment]
        epsilon_high: NonNegativeFloat | None = None,
        value_clip: PositiveFloat | None = 0.5,
        whiten_advantages: bool = True,
        critic_warmup_steps: NonNegativeInt = 0,  # type: ignore[assignment]
        num_generations: PositiveInt = 1,  # type: ignore[assignment]
        beta: NonNegativeFloat = 0.01,  # type: ignore[assignment]
        reward_clip: PositiveFloat | None = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model_name_or_path,
            ref_model_name_or_path,
            num_generations=num_generations,
            beta=beta,
            reward_clip=reward_clip,
            **kwargs,
        )
        self.critic: nn.Module | None = None
        self._value_scale = (0.0, 1.0)

    def configure_model(self) -> None:
        if self.critic is not None:
            return
        super().configure_model()
        hp = self.hparams
        path = self.critic_start
        self.critic = load_model(path, head="reward", **self.load_kwargs()).train()
        stats = read_reward_stats(path) if hp.normalize_reward else {}
        if stats.get("std"):  # the reward model's own scale, as the rewards are put on it
            self._value_scale = (stats["mean"], stats["std"])

    @property
    def critic_start(self) -> str:
        """The folder the critic's weights start from (and its export rebuilds it over)."""
        hp = self.hparams
        return hp.critic_model_name_or_path or hp.reward_model or hp.model_name_or_path

    def optimizer_parameters(self) -> Any:
        assert self.critic is not None
        critic = {"params": [p for p in self.critic.parameters() if p.requires_grad]}
        if self.hparams.critic_lr is not None:
            critic["lr"] = self.hparams.critic_lr
        return [{"params": super().optimizer_parameters()}, critic]

    def forwards(self, batch: GroupBatch) -> Forwards:
        assert self.critic is not None
        out = super().forwards(batch)
        inputs = model_inputs(self.critic, batch, self.hparams.shared_prompt)
        scored = scored_tokens(inputs.batch)
        shift, scale = self._value_scale
        values = (token_values(self.critic, inputs) - shift) / scale
        out["values"] = tokens_by_sequence(values, scored.sequences, scored.n_sequences)[0]
        return out

    def prepare(self, rollout: Rollout, sampled: Forwards) -> tuple[Prepared, Metrics]:
        hp = self.hparams
        logps, mask, values = sampled["logps"], sampled["mask"], sampled["values"]
        ref_logps = self.reference_token_logps(rollout.batch, hp.temperature) if hp.beta > 0 else None
        token_kl = torch.zeros_like(logps) if ref_logps is None else k1(logps, ref_logps)
        rewards = token_rewards(rollout.rewards.flatten(), token_kl, mask, hp.beta)
        advantages, returns = gae(rewards, values, mask, hp.gamma, hp.lam)
        if hp.whiten_advantages:
            advantages = whiten(advantages, mask, total=self.summed)
        prepared = {"old_logps": logps, "old_values": values, "advantages": advantages, "returns": returns}
        metrics = self.shared_metrics(rollout, logps, ref_logps, mask)
        metrics["value"] = (values[mask], None)
        metrics["advantage_std"] = (advantages[mask].std(correction=0)[None], None)
        return prepared, metrics

    def micro_share(self, part: Rollout, step: Rollout) -> float:
        return 1.0  # both losses divide by the step's tokens (``dapo``)

    def update_outputs(self, rollout: Rollout, prepared: Prepared, current: Forwards) -> StepOutputs:
        hp = self.hparams
        logps, mask, values = current["logps"], current["mask"], current["values"]
        epsilon_high = hp.epsilon if hp.epsilon_high is None else hp.epsilon_high
        surrogate = clipped_surrogate(logps, prepared["old_logps"], prepared["advantages"], mask, hp.epsilon,
                                      epsilon_high)  # fmt: skip
        per_process = self.tokens_per_process(mask)
        token_losses = surrogate.token_losses * prepared.get("engine_weights", 1.0)  # the engine's samples corrected
        policy_loss = reduce_token_losses(token_losses, mask, "dapo", None, per_process)
        values_lost = value_loss(values, prepared["old_values"], prepared["returns"], mask, hp.value_clip)
        critic_loss = reduce_token_losses(values_lost, mask, "dapo", None, per_process)
        loss = policy_loss + critic_loss  # disjoint parameters: each gradient is its own loss's
        metrics = {
            "loss": (loss.detach()[None], None),
            "policy_loss": (policy_loss.detach()[None], None),
            "value_loss": (critic_loss.detach()[None], None),
            "clip_fraction": (surrogate.clip_fraction.detach()[None], None),
        }
        return StepOutputs(loss, metrics, rollout.shape[0])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The policy's gradient checked and clipped (``OnlineModule``), the critic's clipped on its own; while
        the critic warms up the policy's gradient is dropped, so AdamW leaves it as it is."""
        super().on_before_optimizer_step(optimizer)
        assert self.critic is not None
        limit = self.hparams.max_grad_norm or float("inf")
        if (norm := clip_global_norm(self.critic.parameters(), limit, self._trainer)) is not None:
            self.log("train/critic_grad_norm", norm, on_step=True, on_epoch=False)
        if self.trainer.global_step < self.hparams.critic_warmup_steps:
            for p in self.trainable_module().parameters():
                p.grad = None
