"""DPOModule: a trainable policy against a frozen reference whose log-probs are computed every step."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from hhalign.data.batches import AnyPairBatch
from hhalign.losses.preference import (
    LossOptions,
    LossType,
    PairLogps,
    as_list,
    bco_reward_mean,
    check_preference_options,
    needs_reference,
    preference_losses,
)
from hhalign.models.forward import ScoredStates, model_inputs, response_states
from hhalign.objectives.outputs import PairOutputs
from hhalign.objectives.precompute import free_weights, precompute_reference
from hhalign.objectives.reference import PolicyModule

__all__ = ["DPOModule"]
BCO_KEY = "hhalign_bco_running_mean"
KL_CHUNK = 256  # tokens per slice of the KL diagnostic


class DPOModule(PolicyModule):
    """Direct Preference Optimization (Rafailov et al. 2023) and its family, with an online reference.

    Args (beside ``PolicyModule``'s and ``AlignmentModule``'s):
        beta: Strength of the implicit KL penalty; also scales the logged rewards; ORPO's λ.
        loss_type: A key of ``hhalign.losses.preference.PREFERENCE_LOSSES``, or a list of them summed with
            ``loss_weights`` (e.g. ``[sigmoid, sft]``: DPO plus the chosen responses' NLL, as RPO).
        loss_weights: One weight per loss type (default all 1).
        label_smoothing: Label-flip rate ε for ``sigmoid`` (conservative DPO), ``robust``, ``exo_pair``,
            ``aot`` and ``simpo``.
        discopop_tau: DiscoPOP's temperature τ.
        simpo_gamma: SimPO's target reward margin γ.
        precompute_ref_logps: Run the reference once over every training and validation pair before training
            (``hhalign.objectives.precompute``), keep its log-probs with the data (cached in the run directory,
            reused by a resume) and free the reference model; training then runs the policy alone. Off, the
            reference runs online every step. The KL diagnostic needs the reference's logits, so it is online only.

    The reference is handled by ``PolicyModule`` (frozen, in eval mode, never checkpointed; with LoRA, the
    policy with its adapters off). Reference-free losses (``simpo``, ``orpo``, with or without ``sft``)
    load no reference at all.
    """

    extra_metrics = ("logps_chosen", "logps_rejected", "kl_chosen")
    plot_panels = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")

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
        precompute_ref_logps: bool = False,
        **kwargs: Any,
    ) -> None:
        check_preference_options(beta, loss_type, loss_weights, label_smoothing)
        super().__init__(model_name_or_path, ref_model_name_or_path, **kwargs)
        self.bco_mean, self.bco_count = 0.0, 0  # bco_pair's running mean of rewards
        self._checked_step_zero = False

    @property
    def loss_types(self) -> list[str]:
        return as_list(self.hparams.loss_type)

    def needs_reference(self) -> bool:
        return needs_reference(self.loss_types)

    def pair_outputs(self, batch: AnyPairBatch) -> PairOutputs:
        policy = self.trainable_module()
        inputs = model_inputs(policy, batch, self.hparams.shared_prompt)
        states = response_states(policy, inputs)
        logps, n_tokens = states.sequence_logps()
        chosen_logps, rejected_logps = logps.chunk(2)
        chosen_tokens, rejected_tokens = n_tokens.chunk(2)
        ref_chosen = ref_rejected = None
        extras = {"logps_chosen": chosen_logps, "logps_rejected": rejected_logps}
        if batch.ref_logps is not None:
            ref_chosen, ref_rejected = batch.ref_logps.to(logps.dtype).chunk(2)
        with torch.no_grad(), self.reference() as ref:
            if ref is not None and ref_chosen is None:
                ref_states = response_states(ref, inputs)
                ref_chosen, ref_rejected = ref_states.sequence_logps()[0].chunk(2)
                extras["kl_chosen"] = chosen_kl(states, ref_states, len(chosen_logps))
        x = PairLogps(chosen_logps, rejected_logps, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens)
        losses, chosen_rewards, rejected_rewards = preference_losses(
            x, self.loss_options(x), self.hparams.loss_type, self.hparams.loss_weights
        )
        self._check_step_zero(x, losses)
        return PairOutputs(losses, chosen_rewards, rejected_rewards, extras)

    @classmethod
    def sharding_refusal(cls, init_args: dict[str, Any], stage: str = "fit") -> str | None:
        if stage != "fit" or not init_args.get("precompute_ref_logps"):
            return None
        return (
            "--model.precompute_ref_logps is not supported under FSDP (the sharded reference runs only inside "
            "the wrapped forward); leave it off there: the reference then runs online, sharded like the policy"
        )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.precompute_ref_logps and self.needs_reference():
            precompute_reference(self, self.trainer.datamodule)
            if self.ref is not None:
                free_weights(self.ref)
            self.ref = None  # the fingerprint stays; the weights go

    def loss_options(self, x: PairLogps) -> LossOptions:
        hp = self.hparams
        delta = self._bco_delta(x) if "bco_pair" in self.loss_types else 0.0
        return LossOptions(hp.beta, hp.label_smoothing, hp.discopop_tau, hp.simpo_gamma, delta)

    def _bco_delta(self, x: PairLogps) -> float:
        """BCO's δ: the running mean of the batch-mean rewards of every training step so far, this one
        included, averaged across processes so that every rank uses the same δ."""
        if not self.training or self._trainer is None:
            return self.bco_mean
        batch_mean = bco_reward_mean(x, self.hparams.beta)
        batch_mean = self.trainer.strategy.reduce(batch_mean, reduce_op="mean")
        self.bco_count += 1
        self.bco_mean += (float(batch_mean) - self.bco_mean) / self.bco_count
        return self.bco_mean

    def _check_step_zero(self, x: PairLogps, losses: Tensor) -> None:
        """At the first training step policy and reference must agree (h = 0, sigmoid loss ln 2);
        if not, the reference is not the policy's starting point or the two see different tokens."""
        if self._checked_step_zero or not self.training or self._trainer is None or x.ref_chosen is None:
            return
        self._checked_step_zero = True
        if self.trainer.global_step != 0 or self.hparams.ref_model_name_or_path not in (
            None,
            self.hparams.model_name_or_path,
        ):
            return
        chosen, rejected = x.logratios()
        worst = float(torch.cat([chosen, rejected]).detach().abs().max())
        # bf16 autocast rounds differently for batches of other shapes (the precomputed pass's): 0.0016 on the
        # tiny model when both run under it, 0.017 when the reference ran in fp32
        tolerance = 5e-3 if torch.is_autocast_enabled(chosen.device.type) else 1e-3
        if worst > tolerance:
            rank_zero_warn(
                f"policy and reference DISAGREE at step 0: |log π − log π_ref| up to {worst:.4g} (expected 0; "
                f"sigmoid loss would be ln 2 = {math.log(2):.4f}, got {float(losses.detach().mean()):.4f}). The "
                "reference is not the policy's starting weights, or the two models see different inputs (dropout, "
                "dtype, attention implementation, tokenizer)."
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[BCO_KEY] = {"mean": self.bco_mean, "count": self.bco_count}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(BCO_KEY, {"mean": 0.0, "count": 0})
        self.bco_mean, self.bco_count = saved["mean"], saved["count"]
        self._checked_step_zero = True  # a resumed policy is meant to differ from its reference


def chosen_kl(policy: ScoredStates, ref: ScoredStates, n_pairs: int) -> Tensor:
    """Per-pair mean over the chosen response's tokens of the exact ``KL(π ‖ π_ref)`` of the next-token
    distributions, ``(B,)`` (chosen rows are sequences < B); call it without gradients.

    It runs every step, so the float32 vocabulary-wide logits of both models are made ``KL_CHUNK`` tokens at
    a time.
    """
    sequences = policy.scored.sequences
    positions = (sequences < n_pairs).nonzero().squeeze(1)
    per_token = torch.cat(
        [
            F.kl_div(
                F.log_softmax(ref.logits_at(chunk).float(), dim=-1),
                F.log_softmax(policy.logits_at(chunk).float(), dim=-1),
                reduction="none",
                log_target=True,
            ).sum(-1)
            for chunk in positions.split(KL_CHUNK)
        ]
    )
    rows = sequences[positions]
    total = per_token.new_zeros(n_pairs).index_add(0, rows, per_token)
    count = per_token.new_zeros(n_pairs).index_add(0, rows, torch.ones_like(per_token))
    return total / count.clamp(min=1)
