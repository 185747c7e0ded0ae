"""A run directory that no command can lose: names that stay inside the output folder, an overwrite that keeps
the earlier run until the new one has a checkpoint, and a resume that never silently starts over."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from hhalign.errors import UserError
from hhalign.training.checkpointing import (
    LAST,
    checkpoint_dir,
    checkpoint_order,
    complete_checkpoints,
    usable_checkpoint,
)

CHECKPOINTS = "checkpoints"


def check_run_name(option: str, name: str) -> None:
    """A run name is one folder name: ``--trial_name ../..`` with ``--overwrite true`` would replace a parent."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(f"--{option} {name!r} must be a single folder name (no '/', not '.' or '..')")


def check_resume_last(run_dir: Path, folders: list[Path] | None = None) -> None:
    """``--ckpt_path last`` needs a whole ``last.ckpt``; without one Lightning would warn and train from step 0
    in the same folder. Refuse instead, naming the newest complete checkpoint the run could resume from.
    ``folders``: where the run's checkpoint callbacks write, when a config names them (else ``checkpoints/``)."""
    folders = folders or [run_dir / CHECKPOINTS]
    if any(usable_checkpoint(folder / LAST) for folder in folders):
        return
    found = sorted((c for folder in folders for c in complete_checkpoints(folder)), key=checkpoint_order)
    if found:
        raise UserError(
            f"--ckpt_path last: {folders[0] / LAST} is missing or incomplete (a run stopped while saving?); the "
            f"newest complete checkpoint is {found[-1]}: resume from it with --ckpt_path {found[-1]}"
        )
    where = "holds no checkpoint" if run_dir.is_dir() else "does not exist"
    raise UserError(
        f"--ckpt_path last: {run_dir} {where} to resume; check --output_dir, --experiment_name and --trial_name, "
        "or leave out --ckpt_path to start a new run"
    )


class EarlierRun:
    """The run that ``--overwrite true`` replaces: moved aside (not deleted) before the new run starts, deleted
    once the new run has written a checkpoint or finished, and put back if it fails before either."""

    pending: EarlierRun | None = None
    """The one set aside by this process, if any: ``main`` puts it back when the command fails."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.aside = run_dir.with_name(f".{run_dir.name}.replaced")

    @classmethod
    def set_aside(cls, run_dir: Path) -> EarlierRun:
        earlier = cls(run_dir)
        if earlier.aside.exists():  # left by a process killed mid-replacement: the run dir is the newer one
            shutil.rmtree(earlier.aside)
        os.replace(run_dir, earlier.aside)
        cls.pending = earlier
        return earlier

    def discard(self) -> None:
        shutil.rmtree(self.aside, ignore_errors=True)
        EarlierRun.pending = None

    def restore(self) -> None:
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        os.replace(self.aside, self.run_dir)
        EarlierRun.pending = None

    @classmethod
    def restore_pending(cls) -> None:
        """Put back a run set aside by a command that failed before its replacement wrote a checkpoint."""
        if cls.pending is not None:
            cls.pending.restore()


class ReplaceEarlierRun(Callback):
    """Deletes the run set aside by ``--overwrite true`` as soon as the new run holds a complete checkpoint (or
    finishes without one): from then on the new run is the one worth keeping."""

    def _discard_once_checkpointed(self, trainer: L.Trainer, finished: bool = False) -> None:
        earlier = EarlierRun.pending
        if earlier is None or not trainer.is_global_zero:
            return
        if finished or complete_checkpoints(checkpoint_dir(trainer)):
            earlier.discard()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self._discard_once_checkpointed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._discard_once_checkpointed(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._discard_once_checkpointed(trainer, finished=True)


RECORD_FILES = ("config.yaml", "data_summary.json", "hparams.yaml", "metrics.csv")
"""What a run directory says about its run; a resume rewrites them during set-up, before its checkpoint is read."""
NOT_SETTINGS = ("ckpt_path", "overwrite")


class RunRecord:
    """The record files of a run being resumed, as they were: put back byte for byte when the resume is refused
    or fails before training starts, so a refused command changes nothing."""

    pending: RunRecord | None = None

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.saved = {name: (run_dir / name).read_bytes() if (run_dir / name).is_file() else None
                      for name in RECORD_FILES}  # fmt: skip

    @classmethod
    def snapshot(cls, run_dir: Path) -> RunRecord:
        cls.pending = cls(run_dir)
        return cls.pending

    def restore(self) -> None:
        from hhalign.files import atomic_write

        for name, content in self.saved.items():
            path = self.run_dir / name
            if content is None:
                path.unlink(missing_ok=True)
            elif not path.is_file() or path.read_bytes() != content:
                with atomic_write(path) as partial:
                    partial.write_bytes(content)
        RunRecord.pending = None

    @classmethod
    def restore_pending(cls) -> None:
        if cls.pending is not None:
            cls.pending.restore()


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_settings(before: str, after: str) -> dict[str, tuple[Any, Any]]:
    """The settings two ``config.yaml`` texts disagree on, by dotted key: ``{key: (before, after)}``."""
    import yaml

    old, new = (_flat(yaml.safe_load(text) or {}) for text in (before, after))
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if key not in NOT_SETTINGS and old.get(key) != new.get(key)
    }


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RecordResume(Callback):
    """Once a resume is accepted (its checkpoint read, training about to start): keep the record files as they
    now are, and if the settings changed, say what changed and keep the old config beside the new one as
    ``config.before-step-N.yaml``."""

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        record = RunRecord.pending
        if record is None or not trainer.is_global_zero:
            return
        RunRecord.pending = None
        before, config = record.saved["config.yaml"], record.run_dir / "config.yaml"
        if before is None or not config.is_file():
            return
        changes = changed_settings(before.decode(), config.read_text())
        if not changes:
            return
        kept = record.run_dir / f"config.before-step-{trainer.global_step}.yaml"
        kept.write_bytes(before)
        listed = "; ".join(f"{key} {_short(old)} -> {_short(new)}" for key, (old, new) in changes.items())
        print(f"hhalign: resuming at step {trainer.global_step} with changed settings ({kept.name} keeps the "
              f"earlier ones): {listed}", file=sys.stderr)  # fmt: skip
