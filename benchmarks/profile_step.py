"""Where one DPO training step's time goes, by kind of operator: ``python benchmarks/profile_step.py MODEL PAIRS``.

Runs the same Lightning path as ``hhalign_worker.py`` for one warm-up step, then profiles one step with
``torch.profiler`` (CPU) and sums self time by kind: matrix multiplies, attention, elementwise and the rest.
MODEL and PAIRS are what ``bench.py`` writes under ``benchmarks/work/`` (a model folder, a pairs file).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from functools import partial

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.profiler import ProfilerActivity, profile

from hhalign.data.datamodule import PreferenceDataModule
from hhalign.objectives import DPOModule

KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
    "optimizer": ("Optimizer.step", "aten::_foreach", "aten::lerp", "aten::addcdiv", "aten::addcmul"),
}


def kind_of(name: str) -> str:
    for kind, prefixes in KINDS.items():
        if name.startswith(prefixes):
            return kind
    return "elementwise and other"


class ProfileSecondStep(Callback):
    def __init__(self) -> None:
        self.prof: profile | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if batch_idx == 1:
            self.prof = profile(activities=[ProfilerActivity.CPU])
            self.prof.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if batch_idx == 1 and self.prof is not None:
            self.prof.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("pairs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    data = PreferenceDataModule(args.pairs, args.model, valid_fraction=0.01, max_length=args.max_length,
                                batch_size=args.batch_size, group_by_length=True)  # fmt: skip
    module = DPOModule(args.model, optimizer=partial(torch.optim.AdamW, lr=1e-5), lr_schedule="constant")
    recorder = ProfileSecondStep()
    trainer = L.Trainer(accelerator="cpu", precision="32-true", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[recorder],
                        default_root_dir=tempfile.mkdtemp(prefix="hhalign-profile-"))  # fmt: skip
    trainer.fit(module, data)
    assert recorder.prof is not None
    totals: dict[str, float] = defaultdict(float)
    for event in recorder.prof.key_averages():
        totals[kind_of(event.key)] += event.self_cpu_time_total / 1e6
    whole = sum(totals.values())
    shares = {kind: round(seconds / whole, 3) for kind, seconds in sorted(totals.items(), key=lambda kv: -kv[1])}
    print(json.dumps({"step_cpu_seconds": round(whole, 2), "shares": shares}))


if __name__ == "__main__":
    main()
