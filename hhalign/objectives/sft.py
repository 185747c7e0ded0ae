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
from hhalign.training.sharding import sum_over_processes

__all__ = ["SFTModule"]


class SFTModule(AlignmentModule):
    """Next-token cross-entropy on the target tokens only (assistant turns, EOS included), averaged over the
    target tokens of the optimizer step: every accumulated micro-batch of every process, so a step under DDP,
    FSDP or gradient accumulation is the step one process takes on the same global batch. Logs ``{stage}/loss``
    (token-weighted) and ``val/perplexity``."""

    examples = "dialogues"
    monitor = ("val/loss", "min")
    plot_panels = ("loss", "perplexity")
    progress_metrics = ("loss",)

    def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, **kwargs)
        self.model: nn.Module | None = None
        self.step_tokens = torch.zeros(())
        """Target tokens of this process's micro-batches since the last optimizer step."""

    def metric_names(self) -> tuple[str, ...]:
        return ("loss",)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self.prepare_trainable(load_model(self.hparams.model_name_or_path, **self.load_kwargs()))

    def step_outputs(self, batch: SequenceBatch) -> StepOutputs:
        model = self.trainable_module()
        logps, n_tokens = response_logps(model, model_inputs(model, batch))
        weights = n_tokens.clamp(min=1).float()
        if self._trainer is not None and self.trainer.training:  # divided by the step's tokens before it steps
            self.step_tokens = self.step_tokens.to(weights.device) + weights.sum().detach()
            loss = -logps.sum()
        else:
            loss = -logps.sum() / weights.sum()
        return StepOutputs(loss, {"loss": (-logps.detach() / weights, weights)}, len(weights))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if batch_idx % self.trainer.accumulate_grad_batches == 0:  # a new optimizer step (as Lightning counts)
            self.step_tokens = torch.zeros((), device=self.device)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Turn the summed gradients into the global token mean's: Lightning divided each micro-batch's loss by
        the accumulation count and DDP/FSDP averaged over the processes, so multiply by both over the tokens."""
        tokens, processes = sum_over_processes(self.step_tokens.to(self.device))
        factor = processes * self.trainer.accumulate_grad_batches / tokens.clamp(min=1)
        for parameter in self.trainable_module().parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(factor.to(parameter.grad.dtype))
        super().on_before_optimizer_step(optimizer)

    def _log_perplexity(self, stage: str) -> None:
        self.log(f"{stage}/perplexity", torch.exp(self.stage_metrics(stage)["loss"].compute()))

    def on_validation_epoch_end(self) -> None:
        self._log_perplexity("val")

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test")
