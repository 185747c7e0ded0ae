"""One timed TRL ``DPOTrainer`` run on the same work; run by ``bench.py`` in TRL's own virtual environment."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import StepClock, WorkerResult  # noqa: E402

SETTINGS = {
    # TRL 1.16 offers no loss-preserving speed switch that works here: padding_free is disabled since its
    # DPO refactor (and needs FlashAttention), and the Trainer's group_by_length sampler stops with
    # "Can only automatically infer lengths for datasets whose items are dictionaries with an 'input_ids'
    # key" on DPO's tokenized pairs. precompute_ref_log_probs would change the work (offline reference).
    "default": {},
}


class Recorder(TrainerCallback):
    def __init__(self, result: WorkerResult, clock: StepClock) -> None:
        self.result, self.clock = result, clock
        self.step_counts = [0, 0]  # computed, real tokens of the policy forwards of this step

    def count(self, module: Any, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.step_counts[0] += input_ids.numel()
        self.step_counts[1] += int(mask.sum()) if mask is not None else input_ids.numel()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_counts = [0, 0]

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.clock.step_end()
        if self.clock.timed(len(self.clock.ends) - 1):
            self.result.computed_tokens += self.step_counts[0]
            self.result.real_tokens += self.step_counts[1]

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs and state.global_step == 1:
            self.result.first_loss = float(logs["loss"])


def main() -> None:
    from trl import DPOConfig, DPOTrainer

    parser = argparse.ArgumentParser()
    for name in ("--model", "--data", "--out", "--settings"):
        parser.add_argument(name, required=True)
    for name in ("--batch-size", "--max-length", "--steps", "--warmup"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=args.data, split="train")
    result = WorkerResult("trl", "dpo", args.model, args.settings, args.batch_size, args.steps, args.warmup)
    result.pairs = args.batch_size * args.steps
    result.extra["trl_settings"] = SETTINGS[args.settings]
    clock = StepClock(args.warmup)
    recorder = Recorder(result, clock)
    model.register_forward_pre_hook(recorder.count, with_kwargs=True)
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            max_length=args.max_length,
            max_steps=args.warmup + args.steps,
            learning_rate=1e-5,
            lr_scheduler_type="constant",
            beta=0.1,
            loss_type=["sigmoid"],
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            bf16=False,
            fp16=False,
            use_cpu=True,
            gradient_checkpointing=False,
            disable_dropout=True,
            dataloader_num_workers=0,
            seed=0,
            **SETTINGS[args.settings],
        )
        trainer = DPOTrainer(
            model=model, ref_model=ref, args=config, train_dataset=dataset, processing_class=tokenizer,
            callbacks=[recorder],
        )  # fmt: skip
        trainer.train()
    result.seconds = clock.seconds()
    result.work_tokens = result.real_tokens  # plain rows: the policy sees each pair's 2P + C + R tokens
    embeddings = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    result.head_params = head.numel()
    result.body_params = sum(p.numel() for p in model.parameters()) - embeddings.numel()
    result.body_params -= 0 if head is embeddings else head.numel()
    result.logit_positions = result.real_tokens  # TRL computes logits at every position
    result.write(args.out)


if __name__ == "__main__":
    main()
