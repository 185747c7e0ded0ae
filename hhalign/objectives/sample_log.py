"""A few of an online run's samples, written where a user looks: ``samples.jsonl`` in the run directory and a
wandb table beside the curves, so the reward's numbers can be read against the text that earned them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

SAMPLES_FILE = "samples.jsonl"


def sample_rows(rollout: Any, decode: Callable[[list[int]], str], step: int, prompts: int = 2) -> list[dict]:
    """One row per completion of the rollout's first ``prompts`` prompts: the text, whether it ended, each reward."""
    rows = []
    for p in range(min(prompts, len(rollout.prompts))):
        for j, completion in enumerate(rollout.completions[p]):
            row = {"step": step, "prompt_index": p, "sample": j, "prompt": decode(rollout.prompts[p])}
            row["completion"] = decode(completion.tokens)
            row["finished"] = completion.finished
            row["reward"] = float(rollout.rewards[p, j])
            row.update({f"reward_{n}": float(v[p, j]) for n, v in rollout.terms.items()})
            rows.append(row)
    return rows


def write_samples(trainer: Any, rows: list[dict]) -> None:
    """Append the rows to ``samples.jsonl`` and any wandb logger's table; rank 0 writes, every rank must call
    (``trainer.log_dir`` is a collective under DDP)."""
    log_dir = trainer.log_dir
    if log_dir is None or not trainer.is_global_zero or not rows:
        return
    path = Path(log_dir) / SAMPLES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    columns = list(rows[0])
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table("samples", columns=columns, data=[[r.get(c) for c in columns] for r in rows])
