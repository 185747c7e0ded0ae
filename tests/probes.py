"""Test-only callbacks that record what a run did from inside it, one file per process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback


class RecordRollouts(Callback):
    """Append each rollout an online objective draws (its step, whether training, prompts and rewards) to
    ``<out>/rollouts-rank<r>.jsonl``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"rollouts-rank{trainer.global_rank}.jsonl"
        original = pl_module.rollout

        def recorded(prompts: list[list[int]], k: int, seed: int, columns: Any = None) -> Any:
            rollout = original(prompts, k, seed, columns)
            row = {"step": trainer.global_step, "training": pl_module.training, "prompts": prompts}
            row["rewards"] = rollout.rewards.tolist()
            with path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            return rollout

        pl_module.rollout = recorded

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Each process's trained weights, summed: equal on every rank when gradients were averaged."""
        models = [pl_module.trainable_module(), getattr(pl_module, "critic", None)]
        total = sum(p.detach().double().abs().sum().item() for m in models if m is not None for p in m.parameters())
        (self.out / f"weights-rank{trainer.global_rank}.json").write_text(json.dumps(total))


class RecordChildren(Callback):
    """Append this process's count of child processes (an inference engine's workers would be some) to ``out``
    after every training step and at the end of fit."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def _record(self) -> None:
        import psutil

        with self.out.open("a") as handle:
            handle.write(f"{len(psutil.Process().children(recursive=True))}\n")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._record()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._record()
