"""Judging a policy by what it writes, as the DPO paper does (``hhalign evaluate`` runs it): for held-out
prompts, completions sampled from the policy and from its reference, both (and the dataset's chosen
reply) scored by a reward model, and KL(π‖π_ref) estimated from the policy's own samples; every number
with its uncertainty, every sample kept for reading by eye."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hhalign.data.pairs import TokenizedPair
from hhalign.files import atomic_write
from hhalign.models.engines import HFEngine, RolloutEngine
from hhalign.models.generation import Completion, Sampling, completion_logps
from hhalign.rewards.model import check_reward_model
from hhalign.tools import estimates

RESULTS_FILE = "evaluation.json"
SAMPLES_FILE = "samples.jsonl"


class Judge:
    """A reward model scoring token sequences (an hhalign reward-model export or RM ``.ckpt``), or any
    callable from sequences to scores (the tests judge by length)."""

    def __init__(self, scorer: Any, name: str = "judge", batch_size: int = 16) -> None:
        self.scorer, self.name, self.batch_size = scorer, name, batch_size

    @classmethod
    def load(cls, path: str, device: torch.device | str = "cpu", batch_size: int = 16) -> Judge:
        from hhalign.objectives.reward import RewardModule

        check_reward_model(path)
        module = RewardModule(path)
        module.configure_model()
        return cls(module.eval().to(device), path, batch_size)

    def __call__(self, sequences: Sequence[Sequence[int]], description: str | None = None) -> list[float]:
        if callable(self.scorer) and not isinstance(self.scorer, nn.Module):
            return [float(s) for s in self.scorer(sequences)]
        from hhalign.tools.use import rewards

        return rewards(self.scorer, [list(s) for s in sequences], self.batch_size, description)


@dataclass
class Evaluation:
    """Everything an evaluation found: ``results`` (the numbers) and ``rows`` (one per sample)."""

    results: dict[str, Any]
    rows: list[dict[str, Any]]

    def write(self, out: str | Path) -> Path:
        """``out/evaluation.json`` and ``out/samples.jsonl``, each written whole or not at all."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (
            (SAMPLES_FILE, "".join(json.dumps(row) + "\n" for row in self.rows)),
            (RESULTS_FILE, json.dumps(self.results, indent=2) + "\n"),
        ):
            with atomic_write(out / name) as partial:
                partial.write_text(text)
        return out / RESULTS_FILE


def choose_prompts(pairs: Sequence[TokenizedPair], n: int, seed: int) -> list[TokenizedPair]:
    """``n`` pairs drawn without replacement by a seeded draw (all of them when there are fewer)."""
    picked = random.Random(seed).sample(range(len(pairs)), min(n, len(pairs)))
    return [pairs[i] for i in picked]


def evaluate(
    policy: Any,
    reference: Any,
    judge: Judge,
    pairs: Sequence[TokenizedPair],
    sampling: Sampling,
    stop_id: int,
    pad_id: int,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    decode: Any = None,
    progress: bool = True,
    engine: RolloutEngine | None = None,
) -> Evaluation:
    """Sample ``samples`` completions of each pair's prompt from ``policy`` and from ``reference``, judge
    them against each other and against the pair's chosen reply, and estimate KL(π‖π_ref).

    Log-probs are of the completions as sampled (up to their first EOS); the judge reads each reply, the
    chosen ones too, with its EOS (``Completion.ended``). ``engine`` samples (default: Hugging Face generation)."""
    started = time.perf_counter()
    prompts = [p.prompt for p in pairs for _ in range(samples)]
    has_chosen = all(hasattr(p, "chosen") for p in pairs)  # prompt-only data has no dataset reply to compare
    chosen = [p.chosen for p in pairs for _ in range(samples)] if has_chosen else []

    sampler = engine or HFEngine()

    def draw(model: Any, model_seed: int, name: str) -> list[Completion]:
        label = f"sampling {name}" if progress else None
        groups = sampler.sample(model, prompts, 1, sampling, stop_id, pad_id, model_seed, batch_size, False, label)
        return [group[0] for group in groups]

    drawn = {"policy": draw(policy, seed, "policy"), "reference": draw(reference, seed + 1, "reference")}
    sampled_at = time.perf_counter()
    tokens = {side: [c.tokens for c in completions] for side, completions in drawn.items()}
    logps = {
        (side, model_name): completion_logps(
            model,
            prompts,
            tokens[side],
            batch_size,
            f"log-probs of {side} samples under {model_name}" if progress else None,
        )
        for side in drawn
        for model_name, model in (("policy", policy), ("reference", reference))
    }
    log_ratio = {
        side: [a - b for a, b in zip(logps[side, "policy"], logps[side, "reference"], strict=True)] for side in drawn
    }
    scores = {
        side: judge(
            [p + c.ended(stop_id) for p, c in zip(prompts, drawn[side], strict=True)],
            f"judging {side} samples" if progress else None,
        )
        for side in drawn
    }
    lengths = {side: [len(t) for t in tokens[side]] for side in drawn}
    if has_chosen:
        chosen_scores = judge(
            [p.prompt + Completion(p.chosen, p.chosen[-1:] == [stop_id]).ended(stop_id) for p in pairs],
            "judging the chosen replies" if progress else None,
        )
        scores["chosen"] = [s for s in chosen_scores for _ in range(samples)]
        lengths["chosen"] = [len(c) for c in chosen]
    K = samples
    versus_chosen = {
        f"{side}_vs_chosen": estimates.compare(scores[side], scores["chosen"], K).as_dict()
        for side in ("policy", "reference")
        if has_chosen
    }
    results: dict[str, Any] = {
        "prompts": len(pairs),
        "samples_per_prompt": K,
        "sampling": dataclasses.asdict(sampling),
        "kl_from_model_samples": sampling.samples_the_model,
        "policy_vs_reference": estimates.compare(scores["policy"], scores["reference"], K).as_dict(),
        **versus_chosen,
        "reward": {side: estimates.mean_over_prompts(scores[side], K).as_dict() for side in scores},
        "kl": estimates.kl_estimate(log_ratio["policy"], lengths["policy"], K).as_dict(),
        "reverse_kl": estimates.kl_estimate([-r for r in log_ratio["reference"]], lengths["reference"], K).as_dict(),
        "length": {
            side: estimates.mean_over_prompts([float(n) for n in lengths[side]], K).as_dict() for side in lengths
        },
        "finished": {side: sum(c.finished for c in drawn[side]) / len(prompts) for side in drawn},
        "longer_wins": estimates.longer_wins(lengths["policy"], lengths["reference"], K).as_dict(),
        "judge_prefers_longer": estimates.judge_prefers_longer(
            scores["policy"], scores["reference"], lengths["policy"], lengths["reference"]
        ),
        "seconds": {"sampling": sampled_at - started, "total": time.perf_counter() - started},
    }
    decode = decode or (lambda ids, prompt=False: ids)
    rows = []
    for i in range(len(prompts)):
        row: dict[str, Any] = {"prompt_index": i // K, "sample": i % K, "prompt": decode(prompts[i], True)}
        for side in scores:
            row[side] = decode(tokens[side][i] if side in tokens else chosen[i])
            row[f"{side}_reward"] = scores[side][i]
            row[f"{side}_tokens"] = lengths[side][i]
        for side in drawn:
            row[f"{side}_finished"] = drawn[side][i].finished
            row[f"{side}_log_ratio"] = log_ratio[side][i]
        a, b = scores["policy"][i], scores["reference"][i]
        row["winner"] = "policy" if a > b else "reference" if b > a else "tie"
        rows.append(row)
    return Evaluation(results, rows)


def format_results(results: dict[str, Any]) -> str:
    """The evaluation on one screen."""

    def share(name: str, what: str) -> str:
        r = results[name]
        low, high = r["interval95"]
        return (
            f"  {what:<34} {r['win_rate']:.3f}  (95% {low:.3f}–{high:.3f}; {r['wins']} won, {r['losses']} lost, "
            f"{r['ties']} tied)"
        )

    def mean(entry: dict[str, Any], digits: int = 3) -> str:
        low, high = entry["interval95"]
        return f"{entry['mean']:.{digits}f} (95% {low:.{digits}f}–{high:.{digits}f})"

    kl = results["kl"]
    lines = [
        f"== hhalign evaluate: {results['prompts']} prompts × {results['samples_per_prompt']} samples, "
        f"{results['sampling']['max_new_tokens']} new tokens at most ==",
        share("policy_vs_reference", "win rate, policy over reference"),
        *(
            share(name, what)
            for name, what in (
                ("policy_vs_chosen", "win rate, policy over dataset chosen"),
                ("reference_vs_chosen", "win rate, reference over chosen"),
            )
            if name in results
        ),
        share("longer_wins", "'longer wins' baseline (policy)"),
        f"  {'judge prefers the longer reply':<34} {results['judge_prefers_longer']:.3f}",
        "  mean reward: " + ", ".join(f"{side} {mean(e)}" for side, e in results["reward"].items()),
        f"  KL(policy‖reference) per sequence {kl['sequence']['mean']:.3f} ± {kl['sequence']['se']:.3f} (SE), "
        f"per token {kl['per_token']:.4f}" + ("" if results["kl_from_model_samples"] else "  [not from model samples]"),
        "  tokens: " + ", ".join(f"{side} {mean(e, 1)}" for side, e in results["length"].items())
        + "; finished: " + ", ".join(f"{side} {v:.2f}" for side, v in results["finished"].items()),
        f"  {results['seconds']['total']:.0f} s ({results['seconds']['sampling']:.0f} s sampling)",
    ]  # fmt: skip
    return "\n".join(lines)
