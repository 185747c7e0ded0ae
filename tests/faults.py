"""Fault injection for the robustness tests: deterministic, from inside the run, never on a timer."""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """Send this process ``signal_name`` once ``global_step`` reaches ``step`` (after that step's update): in every
    process of a multi-process run (as SLURM and Kubernetes deliver SIGTERM), or in rank ``rank`` alone."""

    def __init__(self, step: int, signal_name: str = "SIGKILL", rank: int | None = None) -> None:
        self.step = step
        self.signal = getattr(signal, signal_name)
        self.rank = rank

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signal)


class NaNLossAtStep(Callback):
    """Make the training loss of the batch at ``global_step == step`` NaN, as a diverging run would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.step or "pair_outputs" in vars(pl_module):
            vars(pl_module).pop("pair_outputs", None)
            return
        original = pl_module.pair_outputs

        def poisoned(batch: Any) -> Any:
            out = original(batch)
            out.losses = out.losses * float("nan")
            return out

        pl_module.pair_outputs = poisoned
