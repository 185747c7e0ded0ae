"""Checkpoints that a crash cannot truncate, that load without running pickled code, and that know
what they were trained on; and the checkpoint that keeps the best model by the objective's own metric."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from hhalign.checkpoint_files import FROM_SHARDS_KEY, CheckpointError, is_sharded_checkpoint, read_checkpoint
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


def refuse_resume_from_shards(checkpoint: dict[str, Any]) -> None:
    """A sharded folder read whole on one process has no optimizer state to resume (it stays sharded on disk):
    say so in one line instead of Lightning's KeyError about ``save_weights_only``."""
    folder = checkpoint.get(FROM_SHARDS_KEY)
    if folder:
        raise CheckpointError(
            f"{folder} is an FSDP sharded checkpoint: its optimizer state resumes only under FSDP. Resume with "
            f"the run's FSDP strategy, or export it (hhalign export --ckpt {folder} --out DIR) and start a new "
            "run from DIR (--model.model_name_or_path DIR)"
        )


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """Where the run's ModelCheckpoint writes, so ``--ckpt_path last`` finds what we save."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


LAST = "last.ckpt"
STEP_IN_NAME = re.compile(r"step=(\d+)")


def usable_checkpoint(path: Path) -> bool:
    """A whole checkpoint: a file (written through a rename, so never truncated) or a sharded folder whose
    metadata file, written after every shard, is there. A link counts when what it names does."""
    return path.is_file() or is_sharded_checkpoint(path)


def complete_checkpoints(folder: Path) -> list[Path]:
    """The complete checkpoints in ``folder``, oldest first by the step in their names (then by time); links
    such as ``last.ckpt`` and the hidden staging files of a save that a kill interrupted are left out."""
    if not folder.is_dir():
        return []
    found = [
        p for p in folder.glob("*.ckpt") if not p.name.startswith(".") and not p.is_symlink() and usable_checkpoint(p)
    ]
    return sorted(found, key=checkpoint_order)


def checkpoint_order(path: Path) -> tuple[int, float]:
    """Oldest first: by the step in the name (``step=N``), then by modification time."""
    step = STEP_IN_NAME.search(path.name)
    return (int(step.group(1)) if step else -1, path.stat().st_mtime)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def save_last_checkpoint(trainer: L.Trainer) -> Path:
    """Write ``last.ckpt`` at this step on every rank, staged under a hidden name and renamed into place.

    ``save_last: link`` makes ``last.ckpt`` a link to the newest periodic checkpoint; writing through it would
    overwrite that checkpoint (an FSDP folder is written into in place), and a kill mid-save would leave a
    half-written ``last.ckpt``. Staging keeps both whole.
    """
    last = checkpoint_dir(trainer) / LAST
    staged = last.with_name(".last-staged.ckpt")
    if trainer.is_global_zero:
        last.parent.mkdir(parents=True, exist_ok=True)
        _remove(staged)
    trainer.strategy.barrier()
    for callback in trainer.checkpoint_callbacks:  # theirs from now on: a resume relinks it, not last-v1.ckpt
        if isinstance(callback, ModelCheckpoint) and callback.save_last:
            callback.last_model_path = str(last)
    trainer.save_checkpoint(staged, weights_only=False)
    if trainer.is_global_zero:
        if staged.is_file() and not last.is_dir():
            os.replace(staged, last)  # atomic, and a link in the way is replaced, not followed
        else:
            old = last.with_name(".last-replaced.ckpt")
            _remove(old)
            if last.is_symlink() or last.exists():
                os.replace(last, old)
            os.replace(staged, last)
            _remove(old)
    trainer.strategy.barrier()
    return last


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
