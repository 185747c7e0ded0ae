"""DPOModule: a trainable policy against a frozen reference whose log-probs are computed every step."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from hhalign.checkpointing import weights_fingerprint
from hhalign.forward import model_inputs, response_token_logits
from hhalign.loading import load_model
from hhalign.losses import (
    LossOptions,
    LossType,
    PairLogps,
    as_list,
    bco_reward_mean,
    check_dpo_options,
    needs_reference,
    preference_losses,
    scattered_logps,
)
from hhalign.modules.base import AlignmentModule, PairOutputs

REF_PREFIX = "ref."
BCO_KEY = "hhalign_bco_running_mean"
KL_CHUNK = 256  # tokens per slice of the KL diagnostic


class DPOModule(AlignmentModule):
    """Direct Preference Optimization (Rafailov et al. 2023) and its family, with an online reference.

    Args:
        ref_model_name_or_path: The frozen reference; defaults to the policy's path (the SFT model).
        beta: Strength of the implicit KL penalty; also scales the logged rewards.
        loss_type: A key of ``hhalign.losses.DPO_LOSSES``, or a list of them summed with ``loss_weights``
            (e.g. ``[sigmoid, sft]``: DPO plus the chosen responses' NLL, as RPO).
        loss_weights: One weight per loss type (default all 1).
        label_smoothing: Label-flip rate ε for ``sigmoid`` (conservative DPO), ``robust``, ``exo_pair``,
            ``aot`` and ``simpo``.
        discopop_tau: DiscoPOP's temperature τ.
        simpo_gamma: SimPO's target reward margin γ.

    The reference is loaded once, kept in eval mode with ``requires_grad=False``, left out of the
    optimizer and out of checkpoints (it is reloaded from its path on resume). With LoRA
    (``lora_rank > 0``) no second model is loaded: the reference is the policy with its adapters off.
    Reference-free losses (``simpo``, with or without ``sft``) load no reference at all.
    """

    extra_metrics = ("logps_chosen", "logps_rejected", "kl_chosen")

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
        **kwargs: Any,
    ) -> None:
        check_dpo_options(beta, loss_type, loss_weights, label_smoothing)
        super().__init__(model_name_or_path, **kwargs)
        self.policy: nn.Module | None = None
        self.ref: nn.Module | None = None
        self._ref_fingerprint: str | None = None  # the reference never changes: hash it once
        self.bco_mean, self.bco_count = 0.0, 0  # bco_pair's running mean of rewards
        self._checked_step_zero = False

    @property
    def loss_types(self) -> list[str]:
        return as_list(self.hparams.loss_type)

    def uses_adapters_as_reference(self) -> bool:
        return self.hparams.lora_rank > 0 and self.hparams.ref_model_name_or_path is None

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        kwargs = self.load_kwargs()
        self.policy = self.prepare_trainable(load_model(self.hparams.model_name_or_path, **kwargs))
        if needs_reference(self.loss_types) and not self.uses_adapters_as_reference():
            ref_path = self.hparams.ref_model_name_or_path or self.hparams.model_name_or_path
            self.ref = load_model(ref_path, **kwargs).eval().requires_grad_(False)
        self.train(self.training)

    def on_fit_start(self) -> None:
        """Lightning warns about modules in eval mode when training starts; the frozen reference is one by
        design, so exactly that count is not reported (any other module left in eval mode still is)."""
        if self.ref is not None:
            count = sum(1 for _ in self.ref.modules())
            warnings.filterwarnings("ignore", message=rf"Found {count} module\(s\) in eval mode at the start")

    def train(self, mode: bool = True) -> DPOModule:
        """Whatever mode Lightning asks for, the reference stays in eval mode."""
        super().train(mode)
        if self.ref is not None:
            self.ref.eval()
        return self

    def trainable_module(self) -> nn.Module:
        assert self.policy is not None, "configure_model() has not run"
        return self.policy

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module | None]:
        """The reference model for a no-grad forward: the loaded one, or the policy with its LoRA
        adapters off (the same weights it started from), or None for reference-free losses."""
        if self.ref is not None:
            yield self.ref
        elif self.uses_adapters_as_reference() and needs_reference(self.loss_types):
            policy = self.trainable_module()
            was_training = policy.training
            policy.eval()  # no dropout in the reference pass
            with policy.disable_adapter():
                yield policy
            policy.train(was_training)
        else:
            yield None

    def pair_outputs(self, batch: dict[str, Tensor]) -> PairOutputs:
        policy = self.trainable_module()
        inputs = model_inputs(policy, batch, self.hparams.shared_prompt)
        token_logits, scored = response_token_logits(policy, inputs)
        logps, n_tokens = scattered_logps(token_logits, scored.labels, scored.sequences, scored.n_sequences)
        chosen_logps, rejected_logps = logps.chunk(2)
        chosen_tokens, rejected_tokens = n_tokens.chunk(2)
        ref_chosen = ref_rejected = None
        extras = {"logps_chosen": chosen_logps, "logps_rejected": rejected_logps}
        with torch.no_grad(), self.reference() as ref:
            if ref is not None:
                ref_logits, _ = response_token_logits(ref, inputs)
                ref_logps, _ = scattered_logps(ref_logits, scored.labels, scored.sequences, scored.n_sequences)
                ref_chosen, ref_rejected = ref_logps.chunk(2)
                extras["kl_chosen"] = chosen_kl(token_logits.detach(), ref_logits, scored.sequences, len(chosen_logps))
        x = PairLogps(chosen_logps, rejected_logps, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens)
        losses, chosen_rewards, rejected_rewards = preference_losses(
            x, self.loss_options(x), self.hparams.loss_type, self.hparams.loss_weights
        )
        self._check_step_zero(x, losses)
        return PairOutputs(losses, chosen_rewards, rejected_rewards, extras)

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
        if worst > 1e-3:
            rank_zero_warn(
                f"policy and reference DISAGREE at step 0: |log π − log π_ref| up to {worst:.4g} (expected 0; "
                f"sigmoid loss would be ln 2 = {math.log(2):.4f}, got {float(losses.detach().mean()):.4f}). The "
                "reference is not the policy's starting weights, or the two models see different inputs (dropout, "
                "dtype, attention implementation, tokenizer)."
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
        checkpoint[BCO_KEY] = {"mean": self.bco_mean, "count": self.bco_count}
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(REF_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(BCO_KEY, {"mean": 0.0, "count": 0})
        self.bco_mean, self.bco_count = saved["mean"], saved["count"]
        self._checked_step_zero = True  # a resumed policy is meant to differ from its reference
        # The reference was reloaded from its path by configure_model; give strict loading its keys back.
        if self.ref is not None:
            checkpoint["state_dict"].update(self.ref.state_dict(prefix=REF_PREFIX))


def chosen_kl(policy_logits: Tensor, ref_logits: Tensor, sequences: Tensor, n_pairs: int) -> Tensor:
    """Per-pair mean over the chosen response's tokens of the exact ``KL(π ‖ π_ref)`` of the next-token
    distributions, ``(B,)``; the logits are those of the scored positions (chosen rows are sequences < B).

    It runs every step, so the float32 vocabulary-wide temporaries are made ``KL_CHUNK`` tokens at a time.
    """
    positions = (sequences < n_pairs).nonzero().squeeze(1)
    per_token = torch.cat(
        [
            F.kl_div(
                F.log_softmax(ref_logits[chunk].float(), dim=-1),
                F.log_softmax(policy_logits[chunk].float(), dim=-1),
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
