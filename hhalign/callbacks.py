"""Lightning callbacks configured from YAML."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from hhalign.packing import batch_pairs


class Throughput(Callback):
    """Log pairs and real (non-pad) tokens per second of each training step, wall clock, and the
    pairs seen so far (``train/pairs_seen``, kept in checkpoints so it survives resumes).

    Logged in the step's own row (``train/pairs_per_sec``, ``train/tokens_per_sec``), so curves
    line up with the loss; the time covers forward, backward and the optimizer step.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self.pairs_seen = 0

    def state_dict(self) -> dict[str, Any]:
        return {"pairs_seen": self.pairs_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pairs_seen = state_dict["pairs_seen"]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        seconds = max(time.perf_counter() - self._start, 1e-9)
        pairs = batch_pairs(batch)
        self.pairs_seen += pairs
        pl_module.log("train/pairs_seen", float(self.pairs_seen), on_step=True, on_epoch=False, batch_size=pairs)
        pl_module.log(
            "train/pairs_per_sec", pairs / seconds, on_step=True, on_epoch=False, prog_bar=True, batch_size=pairs
        )
        pl_module.log(
            "train/tokens_per_sec",
            float(batch["attention_mask"].sum()) / seconds,
            on_step=True,
            on_epoch=False,
            batch_size=pairs,
        )
