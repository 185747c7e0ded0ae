"""One timed hhalign training run through the real Lightning path; run by ``bench.py`` in ``.venv``."""

from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import StepClock, WorkerResult  # noqa: E402

from hhalign.data.batches import PackedPairBatch  # noqa: E402
from hhalign.data.datamodule import PreferenceDataModule  # noqa: E402
from hhalign.models.forward import unwrapped  # noqa: E402
from hhalign.objectives import DPOModule, RewardModule  # noqa: E402


class Recorder(Callback):
    """Counts the timed steps' tokens from the batches the module really ran."""

    def __init__(self, result: WorkerResult, clock: StepClock) -> None:
        self.result, self.clock = result, clock

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.clock.step_end()
        step = len(self.clock.ends) - 1
        if step == 0:
            self.result.first_loss = float(outputs["loss"])
        if not self.clock.timed(step):
            return
        r = self.result
        r.pairs += batch.n_examples
        r.computed_tokens += batch.input_ids.numel()
        r.real_tokens += batch.real_tokens
        if isinstance(batch, PackedPairBatch):
            prompt = batch.prompt_lengths.sum()
            responses = batch.chosen_lengths.sum() + batch.rejected_lengths.sum()
            r.work_tokens += int(2 * prompt + responses)
            r.logit_positions += int(responses)
        else:
            r.work_tokens += batch.real_tokens
            r.logit_positions += int(batch.loss_mask.sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--task", "--model", "--data", "--out", "--settings"):
        parser.add_argument(name, required=True)
    for name in ("--batch-size", "--max-length", "--steps", "--warmup"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args()
    packed = args.settings.startswith("shared_prompt")
    switches: dict[str, Any] = {"lora_rank": 8, "lora_alpha": 16.0} if args.settings.endswith("+lora") else {}
    if "+checkpointing" in args.settings:
        switches["gradient_checkpointing"] = True
    data = PreferenceDataModule(
        path=args.data,
        tokenizer_name_or_path=args.model,
        valid_fraction=0.001,  # one pair held out: the data file holds exactly the timed work plus one
        max_length=args.max_length,
        batch_size=args.batch_size,
        shared_prompt=packed,
        group_by_length="grouped" in args.settings,
    )
    optimizer = partial(torch.optim.AdamW, lr=1e-5)
    if args.task == "dpo":
        module: Any = DPOModule(
            args.model,
            beta=0.1,
            optimizer=optimizer,
            lr_schedule="constant",
            shared_prompt=packed,
            precompute_ref_logps="+precompute" in args.settings,  # its pass runs before the timed steps
            **switches,
        )
    else:
        module = RewardModule(args.model, optimizer=optimizer, lr_schedule="constant", shared_prompt=packed, **switches)
    result = WorkerResult("hhalign", args.task, args.model, args.settings, args.batch_size, args.steps, args.warmup)
    clock = StepClock(args.warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        precision="32-true",
        max_steps=args.warmup + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[Recorder(result, clock)],
        default_root_dir=tempfile.mkdtemp(prefix="hhalign-bench-"),  # the data summary lands there
    )
    trainer.fit(module, data)
    result.seconds = clock.seconds()
    model = unwrapped(module.trainable_module())
    embeddings = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings() if args.task == "dpo" else None
    result.head_params = head.weight.numel() if head is not None else 0
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    result.body_params = sum(p.numel() for p in model.parameters()) - embeddings - (0 if tied else result.head_params)
    result.write(args.out)


if __name__ == "__main__":
    main()
