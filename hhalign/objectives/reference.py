"""The base of objectives that train a policy against a frozen reference model (DPO, KTO)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

from hhalign.models.loading import load_model
from hhalign.objectives.base import AlignmentModule
from hhalign.training.checkpointing import weights_fingerprint
from hhalign.training.sharding import is_fsdp

REF_PREFIX = "ref."


class PolicyModule(AlignmentModule):
    """A trainable ``policy`` and, when the objective needs one, a frozen reference ``ref``.

    Args:
        ref_model_name_or_path: The frozen reference; defaults to the policy's path (the SFT model).

    The reference is loaded once, kept in eval mode with ``requires_grad=False``, left out of the
    optimizer and out of checkpoints (it is reloaded from its path on resume). Under FSDP it stays in them:
    Lightning's sharded load asks for every key of the wrapped module before any hook can supply the
    reference's, and its full load is strict. With LoRA
    (``lora_rank > 0``) no second model is loaded: the reference is the policy with its adapters off.
    """

    trained_attribute = "policy"

    def __init__(self, model_name_or_path: str, ref_model_name_or_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, **kwargs)
        self.policy: nn.Module | None = None
        self.ref: nn.Module | None = None
        self._ref_fingerprint: str | None = None  # the reference never changes: hash it once

    def needs_reference(self) -> bool:
        """Whether the objective reads reference log-probs; reference-free ones load no reference."""
        return True

    def uses_adapters_as_reference(self) -> bool:
        return self.hparams.lora_rank > 0 and self.hparams.ref_model_name_or_path is None

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        kwargs = self.load_kwargs()
        self.policy = self.prepare_trainable(load_model(self.hparams.model_name_or_path, **kwargs))
        if self.needs_reference() and not self.uses_adapters_as_reference():
            ref_path = self.hparams.ref_model_name_or_path or self.hparams.model_name_or_path
            self.ref = load_model(ref_path, **kwargs).eval().requires_grad_(False)
            # hashed whole, before a strategy shards it: every process agrees, and a resume compares the same
            self._ref_fingerprint = weights_fingerprint(self.ref)
        self.train(self.training)

    def on_fit_start(self) -> None:
        """Lightning warns about modules in eval mode when training starts; the frozen reference is one by
        design, so exactly that count is not reported (any other module left in eval mode still is)."""
        if self.ref is not None:
            count = sum(1 for _ in self.ref.modules())
            warnings.filterwarnings("ignore", message=rf"Found {count} module\(s\) in eval mode at the start")

    def train(self, mode: bool = True) -> PolicyModule:
        """Whatever mode Lightning asks for, the reference stays in eval mode."""
        super().train(mode)
        if self.ref is not None:
            self.ref.eval()
        return self

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module | None]:
        """The reference model for a no-grad forward: the loaded one, or the policy with its LoRA
        adapters off (the same weights it started from), or None for reference-free objectives."""
        if self.ref is not None:
            yield self.ref
        elif self.uses_adapters_as_reference() and self.needs_reference():
            policy = self.trainable_module()
            was_training = policy.training
            policy.eval()  # no dropout in the reference pass
            with policy.disable_adapter():
                yield policy
            policy.train(was_training)
        else:
            yield None

    def fingerprints(self) -> dict[str, str]:
        prints = super().fingerprints()
        if self.ref is not None and self._ref_fingerprint is None:
            self._ref_fingerprint = weights_fingerprint(self.ref)
        if self._ref_fingerprint is not None:  # kept after a precomputed reference is freed
            prints["reference"] = self._ref_fingerprint
        return prints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if is_fsdp(self._trainer):
            return
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(REF_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # The reference was reloaded from its path by configure_model; give strict loading its keys back.
        # (Under FSDP the strategy has loaded the weights, reference included, and passes no state dict.)
        state = checkpoint.get("state_dict")
        if self.ref is not None and state is not None and not any(k.startswith(REF_PREFIX) for k in state):
            state.update(self.ref.state_dict(prefix=REF_PREFIX))
