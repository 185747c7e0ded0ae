"""One timed hhalign RLOO or PPO run through the real Lightning path; run by ``bench.py --tasks online`` in ``.venv``.
PPO samples one completion of K times the prompts, so both draw the same completions a step."""

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

from hhalign.data.datamodule import PreferenceDataModule  # noqa: E402
from hhalign.objectives import PPOModule, RLOOModule  # noqa: E402


class Recorder(Callback):
    """Times each step and adds up where it went: sampling, scoring, and the rest (forwards, backward, step)."""

    def __init__(self, result: WorkerResult, clock: StepClock, k: int) -> None:
        self.result, self.clock, self.k = result, clock, k
        self.seconds = {"sampling": 0.0, "scoring": 0.0}
        self.first_sampling = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.clock.step_end()
        step = len(self.clock.ends) - 1
        if step == 0:
            self.result.first_loss = float(trainer.callback_metrics["train/loss"])
            self.first_sampling = module.last_rollout_seconds.get("sampling", 0.0)
        if self.clock.timed(step):
            self.result.pairs += len(batch.prompts) * module.hparams.num_generations  # completions (pairs column)
            for name, value in module.last_rollout_seconds.items():
                self.seconds[name] += value


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--model", "--reward-model", "--data", "--out"):
        parser.add_argument(name, required=True)
    for name in ("--prompts-per-step", "--k", "--max-new-tokens", "--max-length", "--steps", "--warmup"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--objective", choices=["rloo", "ppo"], default="rloo")
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="what samples (vllm: in this process)")
    parser.add_argument("--engine-compile", action="store_true", help="vllm: compiled, not eager")
    args = parser.parse_args()
    ppo = args.objective == "ppo"
    data = PreferenceDataModule(
        path=args.data,
        tokenizer_name_or_path=args.model,
        valid_fraction=0.001,
        max_length=args.max_length,
        max_response_length=args.max_new_tokens,
        batch_size=args.prompts_per_step * (args.k if ppo else 1),
        examples="prompts",
    )
    module = (PPOModule if ppo else RLOOModule)(
        args.model,
        reward_model=args.reward_model,
        num_generations=1 if ppo else args.k,
        max_completion_length=args.max_new_tokens,
        beta=0.05,
        generation_batch_size=args.prompts_per_step * args.k,
        micro_batch_size=args.prompts_per_step if ppo else None,  # PPO's passes: as many rows as RLOO's prompts
        log_samples_every_n_steps=0,
        optimizer=partial(torch.optim.AdamW, lr=1e-5),
        lr_schedule="constant",
        rollout_engine=args.engine,
        engine_compile=args.engine_compile,
    )
    result = WorkerResult(
        "hhalign", "online", args.model, args.objective, args.prompts_per_step, args.steps, args.warmup
    )
    clock = StepClock(args.warmup)
    recorder = Recorder(result, clock, args.k)
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
        callbacks=[recorder],
        default_root_dir=tempfile.mkdtemp(prefix="hhalign-bench-"),
    )
    trainer.fit(module, data)
    result.seconds = clock.seconds()
    result.extra = {f"{name}_seconds": value for name, value in recorder.seconds.items()}
    result.extra["first_sampling_seconds"] = recorder.first_sampling  # the warm-up step's: vLLM starts in it
    result.write(args.out)


if __name__ == "__main__":
    main()
