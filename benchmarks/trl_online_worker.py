"""One timed TRL ``RLOOTrainer`` run on the same online work (HF generation, no vLLM); run by
``bench.py --tasks online --peer trl`` in TRL's own virtual environment."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import StepClock, WorkerResult  # noqa: E402


class Recorder(TrainerCallback):
    """Times each optimizer step, and the time inside ``generate`` (TRL's sampling) during the timed ones."""

    def __init__(self, result: WorkerResult, clock: StepClock) -> None:
        self.result, self.clock = result, clock
        self.sampling = 0.0
        self._step_sampling = 0.0

    def wrap_generate(self, model: Any) -> None:
        original = model.generate

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._step_sampling += time.perf_counter() - started

        model.generate = timed

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.clock.step_end()
        if self.clock.timed(len(self.clock.ends) - 1):
            self.sampling += self._step_sampling
        self._step_sampling = 0.0


def main() -> None:
    from trl import RLOOConfig, RLOOTrainer

    parser = argparse.ArgumentParser()
    for name in ("--model", "--reward-model", "--data", "--out"):
        parser.add_argument(name, required=True)
    for name in ("--prompts-per-step", "--k", "--max-new-tokens", "--max-length", "--steps", "--warmup"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    reward_tokenizer = AutoTokenizer.from_pretrained(args.reward_model)
    reward = AutoModelForSequenceClassification.from_pretrained(args.reward_model, dtype=torch.float32)
    reward.config.pad_token_id = reward_tokenizer.pad_token_id  # TRL pads the reward batch; the pooling needs it
    dataset = load_dataset("json", data_files=args.data, split="train")
    result = WorkerResult("trl", "online", args.model, "rloo", args.prompts_per_step, args.steps, args.warmup)
    result.pairs = args.prompts_per_step * args.k * args.steps  # completions, in the pairs column
    clock = StepClock(args.warmup)
    recorder = Recorder(result, clock)
    recorder.wrap_generate(model)
    with tempfile.TemporaryDirectory() as out:
        config = RLOOConfig(
            output_dir=out,
            per_device_train_batch_size=args.prompts_per_step * args.k,  # completions a step
            num_generations=args.k,
            max_completion_length=args.max_new_tokens,
            max_steps=args.warmup + args.steps,
            learning_rate=1e-5,
            lr_scheduler_type="constant",
            beta=0.05,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            bf16=False,
            fp16=False,
            use_cpu=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = RLOOTrainer(
            model=model, reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tokenizer,
            reward_processing_classes=reward_tokenizer, callbacks=[recorder],
        )  # fmt: skip
        trainer.train()
    result.seconds = clock.seconds()
    result.extra = {"sampling_seconds": recorder.sampling}
    result.write(args.out)


if __name__ == "__main__":
    main()
