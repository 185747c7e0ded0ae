"""DPOModule: a trainable policy against a frozen reference whose log-probs are computed every step."""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse.typing import PositiveFloat
from torch import Tensor, nn

from hhalign.checkpointing import weights_fingerprint
from hhalign.forward import model_inputs, response_logps
from hhalign.loading import load_model
from hhalign.losses import LENGTH_NORMALIZED_LOSSES, LossType, check_dpo_options, dpo_loss, implicit_rewards
from hhalign.modules.base import AlignmentModule, PairOutputs

REF_PREFIX = "ref."


class DPOModule(AlignmentModule):
    """Direct Preference Optimization (Rafailov et al. 2023) with an online reference.

    Args:
        ref_model_name_or_path: The frozen reference; defaults to the policy's path (the SFT model).
        beta: Strength of the implicit KL penalty; also scales the logged rewards.
        loss_type: A key of ``hhalign.losses.DPO_LOSSES``.

    The reference is loaded once, kept in eval mode with ``requires_grad=False``, left out of the
    optimizer and out of checkpoints (it is reloaded from its path on resume).
    """

    extra_metrics = ("logps_chosen", "logps_rejected")

    def __init__(
        self,
        model_name_or_path: str,
        ref_model_name_or_path: str | None = None,
        beta: PositiveFloat = 0.1,  # type: ignore[assignment]
        loss_type: LossType = "sigmoid",
        **kwargs: Any,
    ) -> None:
        check_dpo_options(beta, loss_type)
        super().__init__(model_name_or_path, **kwargs)
        self.policy: nn.Module | None = None
        self.ref: nn.Module | None = None
        self._ref_fingerprint: str | None = None  # the reference never changes: hash it once

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        kwargs = self.load_kwargs()
        self.policy = self.prepare_trainable(load_model(self.hparams.model_name_or_path, **kwargs))
        ref_path = self.hparams.ref_model_name_or_path or self.hparams.model_name_or_path
        self.ref = load_model(ref_path, **kwargs).eval().requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> DPOModule:
        """Whatever mode Lightning asks for, the reference stays in eval mode."""
        super().train(mode)
        if self.ref is not None:
            self.ref.eval()
        return self

    def trainable_module(self) -> nn.Module:
        assert self.policy is not None, "configure_model() has not run"
        return self.policy

    def pair_outputs(self, batch: dict[str, Tensor]) -> PairOutputs:
        assert self.ref is not None, "configure_model() has not run"
        policy = self.trainable_module()
        inputs = model_inputs(policy, batch, self.hparams.shared_prompt)
        logps, n_tokens = response_logps(policy, inputs)
        with torch.no_grad():
            ref_logps, _ = response_logps(self.ref, inputs)
        beta, loss_type = self.hparams.beta, self.hparams.loss_type
        if loss_type in LENGTH_NORMALIZED_LOSSES:
            per_token = n_tokens.clamp(min=1)
            losses, _, _ = dpo_loss(
                *(logps / per_token).chunk(2), *(ref_logps / per_token).chunk(2), beta=beta, loss_type=loss_type
            )
        else:
            losses, _, _ = dpo_loss(*logps.chunk(2), *ref_logps.chunk(2), beta=beta, loss_type=loss_type)
        # Logged rewards always come from summed log-probs, whatever the loss reads.
        chosen_logps, rejected_logps = logps.chunk(2)
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        return PairOutputs(
            losses,
            implicit_rewards(chosen_logps, ref_chosen, beta),
            implicit_rewards(rejected_logps, ref_rejected, beta),
            {"logps_chosen": chosen_logps, "logps_rejected": rejected_logps},
        )

    def fingerprints(self) -> dict[str, str]:
        prints = super().fingerprints()
        if self.ref is not None:
            if self._ref_fingerprint is None:
                self._ref_fingerprint = weights_fingerprint(self.ref)
            prints["reference"] = self._ref_fingerprint
        return prints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(REF_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # The reference was reloaded from its path by configure_model; give strict loading its keys back.
        if self.ref is not None:
            checkpoint["state_dict"].update(self.ref.state_dict(prefix=REF_PREFIX))
