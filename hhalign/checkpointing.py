"""Checkpoints that a crash cannot truncate, that load without running pickled code, and that know
what they were trained on."""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from hhalign.errors import UserError

FINGERPRINT_KEY = "hhalign_fingerprints"
REWARD_STATS_KEY = "hhalign_reward_stats"
TRAINED_PREFIX = {"DPOModule": "policy.", "RewardModule": "model.", "SFTModule": "model."}
"""Where each module keeps its trained model in the state dict (the DPO reference is never saved)."""


class CheckpointError(UserError):
    """A checkpoint cannot be used for this run."""


@dataclass
class TrainedWeights:
    """The trained model of an hhalign checkpoint: its weights without the module prefix, the model it
    started from (``base``), and its head (``causal_lm`` or ``reward``)."""

    path: str
    module: str
    base: str
    head: str
    step: int
    state_dict: dict[str, torch.Tensor]
    hparams: dict[str, Any]
    reward_stats: dict[str, float]


def module_head(module: str) -> str:
    """The head of the model an hhalign module trains: ``reward`` for the reward model, else ``causal_lm``."""
    return "reward" if module == "RewardModule" else "causal_lm"


def is_checkpoint_file(name_or_path: str) -> bool:
    return str(name_or_path).endswith(".ckpt")


def read_trained_weights(path: str) -> TrainedWeights:
    """Read an hhalign ``.ckpt`` as a model to start from or to export. The weights are memory-mapped:
    a caller that only wants ``base`` (the tokenizer's source) reads no tensor, and one that loads them
    into a model holds no second full copy."""
    checkpoint = AtomicCheckpointIO().load_checkpoint(path, mmap=True)
    module = checkpoint.get(FINGERPRINT_KEY, {}).get("module")
    base = checkpoint.get("hyper_parameters", {}).get("model_name_or_path")
    if module not in TRAINED_PREFIX or not base:
        raise CheckpointError(
            f"{path} holds no hhalign model (module {module!r}); give a checkpoint written by "
            f"`hhalign fit` with one of {sorted(TRAINED_PREFIX)}, or an exported Hugging Face folder"
        )
    prefix = TRAINED_PREFIX[module]
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    stats = dict(checkpoint.get(REWARD_STATS_KEY, {}))
    return TrainedWeights(
        str(path), module, str(base), module_head(module), int(checkpoint["global_step"]), state, hparams, stats
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside its target, then rename it into place.

    A kill during a save leaves the previous checkpoint whole: the rename is atomic on a local
    filesystem because the temporary file is in the same directory (Lightning's own transaction
    stages it in the system temp dir, which may be another filesystem, and buffers it in memory).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            with open(partial, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None, mmap: bool = False
    ) -> dict[str, Any]:
        """Load with ``weights_only=True`` unless the user passed ``--weights_only false``; ``mmap`` maps
        the tensors from the file instead of reading them all into memory up front."""
        if not Path(path).is_file():
            raise CheckpointError(
                f"checkpoint {path} does not exist; give a .ckpt file written by hhalign, or "
                "--ckpt_path last to resume the run directory's latest checkpoint"
            )
        safe = True if weights_only is None else weights_only
        try:
            checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=safe, mmap=mmap)
        except Exception as err:  # torch raises pickle, zip, EOF and runtime errors for a bad file
            hint = " If you trust its source and it holds custom objects, pass --weights_only false." if safe else ""
            first_line = (str(err).splitlines() or [""])[0][:200]
            raise CheckpointError(
                f"checkpoint {path} could not be read ({type(err).__name__}: {first_line}). "
                f"It may be truncated or not a Lightning checkpoint.{hint}"
            ) from None
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "global_step" not in checkpoint:
            raise CheckpointError(
                f"{path} is not a Lightning checkpoint written by hhalign (no state_dict/global_step)"
            )
        return checkpoint


def weights_fingerprint(module: nn.Module) -> str:
    """A cheap digest of a model's weights: names, shapes, each tensor's sum and its first values.

    Hashing every byte of a 7B model on each resume would take minutes; this still tells apart any
    two different checkpoints in practice.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}{tuple(tensor.shape)}{flat.double().sum().item():.10e}".encode())
        digest.update(flat[:256].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def sequences_fingerprint(rows: Iterable[Iterable[list[int]]]) -> str:
    """Digest of tokenized data: any change of records, split, tokenizer or lengths changes it."""
    digest = hashlib.sha256()
    for row in rows:
        for ids in row:
            packed = array("q", ids)
            digest.update(len(packed).to_bytes(8, "little") + packed.tobytes())
        digest.update(b"|")
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
