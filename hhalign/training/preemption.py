"""Stop on SIGTERM or SIGINT at the end of the current step, with a checkpoint to resume from."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from hhalign.errors import UserError
from hhalign.training.checkpointing import save_last_checkpoint

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Preempted(UserError):
    """The run stopped on a signal after writing a checkpoint; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Preemption(Callback):
    """On SIGTERM (cluster preemption) or SIGINT (Ctrl+C), finish the current step, write
    ``last.ckpt`` at that step and stop. A second SIGINT stops at once, as Ctrl+C usually does.

    The decision is reduced across processes at each step's end, so under DDP and FSDP every rank saves the
    same step and stops together, whether the signal reached one rank or all of them. Lightning's own SIGTERM
    handler is replaced once training starts: it broadcasts from inside the handler and forwards the signal
    to the other ranks, so ranks signalled at different moments issue collectives that no longer match (a hang).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped: Preempted | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:  # said at once: the step may take minutes (os.write: safe in a handler)
            again = " (Ctrl+C again: stop now, without one)" if signum == signal.SIGINT else ""
            os.write(2, f"\nhhalign: {signal.Signals(signum).name} received: stopping after this step with a "
                        f"checkpoint{again}\n".encode())  # fmt: skip
        self.received = signum

    def _install(self) -> None:
        for signum in HANDLED:
            try:
                previous = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                return
            self._previous.setdefault(signum, previous)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning registers its SIGTERM handler after ``setup``; ours replaces it here, so Lightning's
        flag (and its collectives) never fire and the decision is this callback's alone."""
        self._install()

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
        path = save_last_checkpoint(trainer)
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
