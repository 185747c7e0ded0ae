"""A CSV log that survives resumes: earlier rows stay, replayed steps appear once."""

from __future__ import annotations

import csv
import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from hhalign.files import atomic_write


class _KeepingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing ``metrics.csv``; this one appends to it."""

    def _check_log_dir_exists(self) -> None:
        # The CLI refuses to start over an earlier run unless asked to, so an existing file is a resume.
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])

    def drop_rows_from(self, step: int) -> None:
        """Forget rows logged at ``step`` or later: a resume replays them from the checkpoint."""
        self.save()
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields, rows = list(reader.fieldnames or []), list(reader)
        kept = [row for row in rows if row.get("step") in (None, "") or int(row["step"]) < step]
        with atomic_write(self.metrics_file_path) as partial, open(partial, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to the ``metrics.csv`` of a resumed run instead of deleting it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _KeepingWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


class ResumeLogs(Callback):
    """Keep the CSV log consistent with checkpoints.

    Flushes the log whenever a checkpoint is written, so that every step a checkpoint contains is on
    disk, and on resume drops the rows of steps after the checkpoint, which the run then replays.
    """

    def __init__(self) -> None:
        self._resumed = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resumed = trainer.global_step > 0
        if not self._resumed or not trainer.is_global_zero:
            return  # rank 0 alone owns the file
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.experiment.drop_rows_from(trainer.global_step)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        """The step loggers are given is Lightning's count of batches that stepped, equal to ``global_step`` when a
        batch starts. A checkpoint written by the validation that ends a run stores it one behind, and Lightning
        catches it up only for checkpoints written mid-step: resumed as it is, every step of an extended run would
        be logged one step early, over the rows before it."""
        if self._resumed:
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
            self._resumed = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            logger.save()


LOGGER_PACKAGES = {
    "TensorBoardLogger": ("tensorboard", "tensorboardX"),
    "MLFlowLogger": ("mlflow",),
    "CometLogger": ("comet_ml",),
    "NeptuneLogger": ("neptune",),
    "WandbLogger": ("wandb",),
}
"""The package each Lightning logger writes through (any one of them); none is a dependency of hhalign but wandb."""


def check_logger_packages(configured: Any) -> None:
    """Refuse, in one line and before anything loads, a ``--trainer.logger`` whose package is not installed
    (Lightning would fail at instantiation with three tracebacks)."""
    import importlib.util

    from hhalign.errors import UserError

    for logger in configured if isinstance(configured, list) else [configured]:
        name = str(getattr(logger, "class_path", "")).rpartition(".")[2]
        packages = LOGGER_PACKAGES.get(name, ())
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            raise UserError(
                f"--trainer.logger {name} writes through the {packages[0]} package, which is not installed: "
                f"pip install {packages[0]} (hhalign's CSV log is written in the run directory either way)"
            )
