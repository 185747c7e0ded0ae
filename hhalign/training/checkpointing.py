"""Checkpoints that a crash cannot truncate, that load without running pickled code, and that know
what they were trained on; and the checkpoint that keeps the best model by the objective's own metric."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from hhalign.checkpoint_files import CheckpointError, read_checkpoint
from hhalign.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside its target, then rename it into place.

    A kill during a save leaves the previous checkpoint whole: the rename is atomic on a local
    filesystem because the temporary file is in the same directory (Lightning's own transaction
    stages it in the system temp dir, which may be another filesystem, and buffers it in memory).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_write(path) as partial:
            torch.save(checkpoint, partial)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None, mmap: bool = False
    ) -> dict[str, Any]:
        """Load as ``hhalign.checkpoint_files.read_checkpoint`` does: safely, with errors that say what is wrong;
        ``mmap`` maps the tensors from the file instead of reading them all into memory up front."""
        return read_checkpoint(path, map_location, weights_only, mmap)


def weights_fingerprint(module: nn.Module) -> str:
    """A cheap digest of a model's weights: names, shapes, each tensor's sum and its first values.

    Hashing every byte of a 7B model on each resume would take minutes; this still tells apart any
    two different checkpoints in practice.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}{tuple(tensor.shape)}{flat.sum(dtype=torch.float64).item():.10e}".encode())
        digest.update(flat[:256].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_fingerprints(saved: dict[str, str], current: dict[str, str], path_hint: str = "") -> None:
    """Refuse a resume whose data or reference differ from those the checkpoint was trained with."""
    what = {
        "module": "the training module",
        "data": "the training data (records, split, tokenizer or lengths)",
        "reference": "the reference model's weights",
    }
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise CheckpointError(
                f"cannot resume{path_hint}: {what.get(key, key)} differ from the checkpoint's "
                f"({saved[key]} there, {value} now). Resume with the same settings, or start a new run "
                "(another --trial_name) from its weights"
            )


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """Where the run's ModelCheckpoint writes, so ``--ckpt_path last`` finds what we save."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` keeping the best model by the objective's own validation metric (``monitor`` on
    its class, e.g. ``val/reward_accuracy`` for pairs, ``val/loss`` for SFT), so one shared config serves
    every objective; ``monitor`` and ``mode`` given here win."""

    def __init__(
        self, monitor: str | None = None, mode: str | None = None, filename: str | None = "best-{step}", **kwargs: Any
    ) -> None:
        super().__init__(monitor=monitor, mode=mode or "min", filename=filename, **kwargs)
        self._chosen_mode = mode

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.monitor is None:
            self.monitor, mode = pl_module.monitor  # type: ignore[attr-defined]
            mode = self._chosen_mode or mode
            self.kth_value = torch.tensor(float("inf") if mode == "min" else float("-inf"))
            self.mode = mode
        super().setup(trainer, pl_module, stage)

    @property
    def state_key(self) -> str:
        # distinct from the plain ModelCheckpoint beside it while neither has a monitor yet
        return f"Best{super().state_key}"
