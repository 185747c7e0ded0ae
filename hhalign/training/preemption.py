"""Stop on SIGTERM or SIGINT at the end of the current step, with a checkpoint to resume from."""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from hhalign.errors import UserError
from hhalign.training.checkpointing import checkpoint_dir

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Preempted(UserError):
    """The run stopped on a signal after writing a checkpoint; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Preemption(Callback):
    """On SIGTERM (cluster preemption) or SIGINT (Ctrl+C), finish the current step, write
    ``last.ckpt`` at that step and stop. A second SIGINT stops at once, as Ctrl+C usually does.

    The decision is reduced across processes, so under DDP every rank saves and stops together.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped: Preempted | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for signum in HANDLED:
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                return

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.stopped is not None or not trainer.strategy.reduce_boolean_decision(
            self.received is not None, all=False
        ):
            return
        path = checkpoint_dir(trainer) / "last.ckpt"
        trainer.save_checkpoint(path)
        signum = self.received or signal.SIGTERM
        self.stopped = Preempted(
            f"stopped by {signal.Signals(signum).name} after step {trainer.global_step}; checkpoint written to "
            f"{path}. Resume with the same command plus --ckpt_path last",
            signum,
        )

    def _stop_if_saved(self) -> None:
        # Raised one hook later than the save, so that Lightning has logged the finished step by now.
        if self.stopped is not None:
            raise self.stopped

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._stop_if_saved()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_saved()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Lightning raises its own exception on SIGTERM after the step is logged; either way, flush the
        log so that it holds every step the checkpoint holds, and say how to resume."""
        if self.stopped is None:
            return
        for logger in trainer.loggers:
            logger.save()
        if trainer.is_global_zero:
            print(f"hhalign: {self.stopped}", file=sys.stderr)
