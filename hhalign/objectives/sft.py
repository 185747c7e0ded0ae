"""SFTModule: supervised fine-tuning on the assistant turns of chosen dialogues, the first stage of
base → SFT → DPO, whose checkpoint then serves as the DPO policy and reference."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hhalign.data.batches import SequenceBatch
from hhalign.models.forward import model_inputs, response_logps
from hhalign.models.loading import load_model
from hhalign.objectives.base import AlignmentModule
from hhalign.objectives.outputs import StepOutputs

__all__ = ["SFTModule"]


class SFTModule(AlignmentModule):
    """Next-token cross-entropy on the target tokens only (assistant turns, EOS included), averaged
    over the batch's target tokens. Logs ``{stage}/loss`` (token-weighted) and ``val/perplexity``."""

    examples = "dialogues"
    monitor = ("val/loss", "min")
    plot_panels = ("loss", "perplexity")
    progress_metrics = ("loss",)

    def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, **kwargs)
        self.model: nn.Module | None = None

    def metric_names(self) -> tuple[str, ...]:
        return ("loss",)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self.prepare_trainable(load_model(self.hparams.model_name_or_path, **self.load_kwargs()))

    def step_outputs(self, batch: SequenceBatch) -> StepOutputs:
        model = self.trainable_module()
        logps, n_tokens = response_logps(model, model_inputs(model, batch))
        weights = n_tokens.clamp(min=1).float()
        loss = -logps.sum() / weights.sum()
        return StepOutputs(loss, {"loss": (-logps.detach() / weights, weights)}, len(weights))

    def _log_perplexity(self, stage: str) -> None:
        self.log(f"{stage}/perplexity", torch.exp(self.stage_metrics(stage)["loss"].compute()))

    def on_validation_epoch_end(self) -> None:
        self._log_perplexity("val")

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test")
