"""Lightning callbacks configured from YAML."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar, ThroughputMonitor
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from torch import nn

from hhalign.training.sharding import is_fsdp


def training_flops(trained: nn.Module, frozen: nn.Module | None, tokens: int, trainer: Any) -> float:
    """A training step's FLOPs on one device: 6·N per real token through the trained model (forward and backward),
    2·N through a frozen one beside it (Kaplan et al. 2020); under FSDP each device holds a shard of N."""
    scale = trainer.world_size if is_fsdp(trainer) else 1

    def parameters(module: nn.Module | None) -> int:
        return scale * sum(p.numel() for p in module.parameters()) if module is not None else 0

    return float((6 * parameters(trained) + 2 * parameters(frozen)) * tokens)


class Throughput(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` (it synchronizes CUDA before timing, averages over a rolling window,
    scales to the world size and logs FLOPs and MFU from the module's ``flops_per_batch``) counting hhalign's
    units: examples (pairs, dialogues, completions or prompts) and real, non-pad tokens.

    Logged as ``train/device/samples_per_sec``, ``train/device/items_per_sec`` (real tokens),
    ``train/device/flops_per_sec`` and, where the device's peak is known (not on CPU), ``train/device/mfu``; beside
    them the examples and tokens seen so far (``train/<kind>_seen``, ``train/tokens_seen``), kept in checkpoints so
    that they continue across resumes.
    """

    def __init__(self, window_size: int = 2) -> None:
        super().__init__(
            batch_size_fn=lambda batch: batch.n_examples,
            length_fn=lambda batch: batch.real_tokens,
            window_size=window_size,
        )
        self.examples_seen = 0
        self.tokens_seen = 0

    def state_dict(self) -> dict[str, Any]:
        return {"pairs_seen": self.examples_seen, "tokens_seen": self.tokens_seen}  # the key older checkpoints have

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.examples_seen = state_dict["pairs_seen"]
        self.tokens_seen = state_dict.get("tokens_seen", 0)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)
        self.examples_seen += batch.n_examples
        self.tokens_seen += batch.real_tokens
        for key, value in (
            (f"train/{pl_module.examples}_seen", self.examples_seen),
            ("train/tokens_seen", self.tokens_seen),
        ):
            pl_module.log(key, float(value), on_step=True, on_epoch=False, batch_size=batch.n_examples)


class ProgressBar(RichProgressBar):
    """Lightning's rich bar, without its "Epoch 0/-2" in step-bounded runs (``max_epochs`` -1): "Epoch 0", and
    with a total the count can reach."""

    @property
    def total_train_batches(self) -> int | float:
        """The bar counts the epoch's batches from its first; in a step-bounded run its total is where the run
        ends in the epoch: the batches already run in it (a resumed run starts past them) and those the steps
        left take (several a step under gradient accumulation, a fraction of one when an online rollout takes
        several optimizer steps). Lightning's reads the steps left alone: ``200/72`` after a resume."""
        trainer = self.trainer
        if not (trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0):
            return trainer.num_training_batches
        steps_left = max(trainer.max_steps - trainer.global_step, 0)
        updates = getattr(trainer.lightning_module, "updates_per_rollout", None)
        batches_left = -(-steps_left // updates) if updates else steps_left * trainer.accumulate_grad_batches
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return min(trainer.num_training_batches, done + batches_left)

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)


class Summary(RichModelSummary):
    """Lightning's rich model summary without its FLOPs column and total, which read 0: counting them needs an
    ``example_input_array`` that hhalign's batches do not fit (``ThroughputMonitor`` logs the FLOPs of training)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        kept = [(name, values) for name, values in summary_data if name != "FLOPs" or total_flops]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in kept:
            table.add_column(name, justify="right" if name in ("Params", "FLOPs") else "left")
        for row in zip(*(values for _, values in kept), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(
            f"[bold]Trainable params[/]: {get_human_readable_count(trainable_parameters).strip()}   "
            f"[bold]Frozen[/]: {get_human_readable_count(frozen).strip()}   [bold]Size[/]: {model_size:,.1f} MB   "
            f"[bold]Modules[/]: {total_training_modes['train']} training, {total_training_modes['eval']} eval"
        )
