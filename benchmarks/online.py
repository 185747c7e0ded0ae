"""``make bench ARGS="--tasks online [--peer trl]"``: RLOO steps (sample K completions of each prompt, score them
with a reward model, one optimizer step) by hhalign and by TRL's ``RLOOTrainer`` on the same model, reward
model, prompts, K and completion length. The models have random weights and never stop early, so every
completion is ``max_new_tokens`` long in both tools: the same work, token for token."""

from __future__ import annotations

import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

from hhalign.data.pairs import split_dialogues
from hhalign.data.reading import read_records
from hhalign.models.loading import load_tokenizer

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent / "data" / "hh-rlhf"


def write_prompts(model_dir: Path, n: int, max_prompt_tokens: int, out: Path) -> int:
    """``n`` distinct shipped prompts (raw hh-rlhf text, a seeded shuffle) short enough that neither tool
    truncates them; returns their mean token count."""
    tokenizer = load_tokenizer(str(model_dir))
    seen, kept = set(), []
    for record in read_records(str(SHIPPED)).records:
        prompt = split_dialogues(record.chosen, record.rejected)[0]
        if prompt and prompt not in seen and len(tokenizer.encode(prompt)) <= max_prompt_tokens:
            seen.add(prompt)
            kept.append(prompt)
    random.Random(0).shuffle(kept)
    kept = kept[:n]
    out.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in kept))
    return round(statistics.mean(len(tokenizer.encode(p)) for p in kept))


def make_reward_model(model_dir: Path, out: Path) -> Path:
    """The policy's backbone with a fresh one-output score head: a reward model of the same shapes."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if not (out / "config.json").exists():
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1)
        model.save_pretrained(out)
        load_tokenizer(str(model_dir)).save_pretrained(out)
    return out


def run_online(args: Any, models: dict[str, Path], work: Path, run_worker: Any, trl_python: Path | None) -> list[str]:
    """Alternate the tools inside each repeat; return the report's lines (a table and the ratios)."""
    prompts_per_step, k, new_tokens = args.online_prompts, args.online_k, args.online_new_tokens
    lines, runs = [], []
    for size, model_dir in models.items():
        reward_dir = make_reward_model(model_dir, work / "models" / f"{size}-rm")
        n_prompts = (args.warmup + args.steps) * prompts_per_step * k + 1  # PPO: K times the prompts, one sample each
        data = work / f"prompts-{size}.jsonl"
        mean_prompt = write_prompts(model_dir, n_prompts, args.max_length - new_tokens, data)
        common = ["--model", str(model_dir), "--reward-model", str(reward_dir), "--data", str(data)]
        common += ["--prompts-per-step", str(prompts_per_step), "--k", str(k), "--max-new-tokens", str(new_tokens)]
        common += ["--max-length", str(args.max_length), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        by_tool: dict[str, list[Any]] = {}
        for repeat in range(args.repeats):
            tools = [("hhalign", [sys.executable, str(HERE / "online_worker.py")])]
            tools += [("hhalign-vllm", [sys.executable, str(HERE / "online_worker.py"), "--engine", "vllm"])]
            compiled = ["--engine", "vllm", "--engine-compile"]
            tools += [("hhalign-vllm-compiled", [sys.executable, str(HERE / "online_worker.py"), *compiled])]
            tools += [("hhalign-ppo", [sys.executable, str(HERE / "online_worker.py"), "--objective", "ppo"])]
            tools += [("trl", [str(trl_python), str(HERE / "trl_online_worker.py")])] if trl_python else []
            tools = [(tool, command) for tool, command in tools if tool in args.online_tools or tool == "trl"]
            for tool, command in tools:
                out = work / f"online-{tool}-{size}-{repeat}.json"
                result = run_worker([*command, *common, "--out", str(out)], out)
                by_tool.setdefault(tool, []).append(result)
                runs.append(result.__dict__)
                rate, per_step = result.pairs / result.seconds, result.seconds / args.steps
                tag = f"[{repeat + 1}/{args.repeats}] {tool:11s} online {size}"
                memory = f"{result.peak_rss_mb:.0f} MB"
                print(f"{tag}: {per_step:.1f} s/step, {rate:.2f} completions/s, {memory}", flush=True)
        lines += _table(size, by_tool, args.steps, prompts_per_step, k, new_tokens, mean_prompt)
    (work / "online-runs.json").write_text(json.dumps(runs, indent=2) + "\n")
    return lines


def _table(size: str, by_tool: dict[str, list[Any]], steps: int, p: int, k: int, t: int, prompt: int) -> list[str]:
    lines = [
        "\nonline RLOO (hhalign: sampled by transformers' generate; hhalign-vllm: by vLLM in the process; trl) and PPO "
        f"(hhalign-ppo: {p * k} prompts × 1, passes of {p}), {size}: "
        f"{p} prompts × K = {k} a step, {t} new tokens each, prompts {prompt} tokens on average",
        "| tool | s/step (median) | completions/s | sampling share | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    rates = {}
    for tool, results in by_tool.items():
        rates[tool] = [r.pairs / r.seconds for r in results]
        sampling = statistics.median(r.extra.get("sampling_seconds", 0.0) / r.seconds for r in results)
        lines.append(
            f"| {tool} | {statistics.median(r.seconds / steps for r in results):.1f} | "
            f"{statistics.median(rates[tool]):.3f} | {sampling:.2f} | "
            f"{statistics.median(r.peak_rss_mb for r in results):.0f} |"
        )
    comparisons = [("hhalign-vllm", "hhalign"), ("hhalign-vllm-compiled", "hhalign-vllm"), ("hhalign", "trl")]
    for faster, baseline in comparisons:  # the ratios of the tools that ran, repeat by repeat
        if faster in rates and baseline in rates:
            ratios = [f / b for f, b in zip(rates[faster], rates[baseline], strict=True)]
            each, median = ", ".join(f"{r:.2f}" for r in ratios), statistics.median(ratios)
            lines.append(f"- completions/s, {faster} over {baseline}, each repeat: {each}; median {median:.2f}")
    return lines
