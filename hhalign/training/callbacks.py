"""Lightning callbacks configured from YAML."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class Throughput(Callback):
    """Log examples (pairs, or sequences for SFT) and real (non-pad) tokens per second of each training
    step, wall clock, and the examples and tokens seen so far (``train/pairs_seen``,
    ``train/tokens_seen``; kept in checkpoints so they survive resumes).

    Logged in the step's own row (``train/pairs_per_sec``, ``train/tokens_per_sec``), so curves
    line up with the loss; the time covers forward, backward and the optimizer step.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self.pairs_seen = 0  # examples of any kind; the name predates SFT and is kept for checkpoints
        self.tokens_seen = 0

    def state_dict(self) -> dict[str, Any]:
        return {"pairs_seen": self.pairs_seen, "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pairs_seen = state_dict["pairs_seen"]
        self.tokens_seen = state_dict.get("tokens_seen", 0)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        seconds = max(time.perf_counter() - self._start, 1e-9)
        examples, name = batch.n_examples, pl_module.examples
        tokens = batch.real_tokens
        self.pairs_seen += examples
        self.tokens_seen += tokens
        values = {
            f"train/{name}_seen": float(self.pairs_seen),
            "train/tokens_seen": float(self.tokens_seen),
            f"train/{name}_per_sec": examples / seconds,
            "train/tokens_per_sec": tokens / seconds,
        }
        for key, value in values.items():
            pl_module.log(
                key, value, on_step=True, on_epoch=False, prog_bar=key.endswith(f"{name}_per_sec"), batch_size=examples
            )
