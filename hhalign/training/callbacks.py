"""Lightning callbacks configured from YAML."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor
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
