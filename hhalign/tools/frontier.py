"""``hhalign plot --frontier``: the judge's reward against KL(π‖π_ref), one point per evaluation (a run,
a β, a checkpoint), as Figure 2 of the DPO paper, a panel per judge; the reference sits at KL 0. Error bars are 95%
intervals (1.96 standard errors of the KL estimate, the reward's interval); the table behind the
picture is written beside it."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hhalign.errors import UserError

TABLE_COLUMNS = (
    "judge", "label", "kl", "kl_se", "kl_per_token", "reward", "reward_low", "reward_high", "reference_reward",
    "win_rate_vs_reference", "win_low", "win_high", "win_rate_vs_chosen", "policy_tokens", "prompts", "source",
)  # fmt: skip


def read_evaluation(path: str | Path) -> dict[str, Any]:
    """An ``evaluation.json``, given as the file, its folder, or a run directory holding ``eval/``."""
    path = Path(path)
    for candidate in (path, path / "evaluation.json", path / "eval" / "evaluation.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text()) | {"file": str(candidate)}
            except json.JSONDecodeError as err:
                raise UserError(f"{candidate}: not an evaluation written by `hhalign evaluate` ({err})") from err
    raise UserError(f"{path}: no evaluation.json there; run `hhalign evaluate` on it first")


def frontier_row(evaluation: dict[str, Any]) -> dict[str, Any]:
    kl, reward, win = evaluation["kl"], evaluation["reward"], evaluation["policy_vs_reference"]
    file = Path(evaluation["file"])
    default_label = file.parent.parent.name if file.parent.name == "eval" else file.parent.name
    return {
        "judge": judge_name(evaluation.get("judge")),
        "label": evaluation.get("label") or default_label,
        "kl": kl["sequence"]["mean"],
        "kl_se": kl["sequence"]["se"],
        "kl_per_token": kl["per_token"],
        "reward": reward["policy"]["mean"],
        "reward_low": reward["policy"]["interval95"][0],
        "reward_high": reward["policy"]["interval95"][1],
        "reference_reward": reward["reference"]["mean"],
        "win_rate_vs_reference": win["win_rate"],
        "win_low": win["interval95"][0],
        "win_high": win["interval95"][1],
        "win_rate_vs_chosen": evaluation.get("policy_vs_chosen", {}).get("win_rate", float("nan")),
        "policy_tokens": evaluation["length"]["policy"]["mean"],
        "prompts": evaluation["prompts"],
        "source": evaluation["file"],
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| judge | point | KL (± SE) | KL/token | judge reward (95%) | win rate vs reference (95%) | vs chosen "
        "| tokens |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['judge']} | {r['label']} | {r['kl']:.2f} ± {r['kl_se']:.2f} | {r['kl_per_token']:.3f} "
            f"| {r['reward']:.3f} "
            f"({r['reward_low']:.3f}–{r['reward_high']:.3f}) | {r['win_rate_vs_reference']:.3f} "
            f"({r['win_low']:.3f}–{r['win_high']:.3f}) | {r['win_rate_vs_chosen']:.3f} | {r['policy_tokens']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def judge_name(judge: Any) -> str:
    """``experiment/run`` of a judge exported by a run (``…/experiment/run/export``), else its path."""
    path = Path(str(judge))
    return "/".join(path.parts[-3:-1]) if path.name == "export" and len(path.parts) >= 3 else str(path)


def plot_frontier(paths: list[str], out: str | Path = "frontier.png") -> tuple[Path, Path]:
    """Draw the frontier of the evaluations at ``paths`` into ``out`` (PNG), one panel per judge (the same
    policies under a second reward model show how much of a gain is the training reward model's alone), with
    ``out``'s ``.md`` and ``.csv`` tables; returns the picture's and the Markdown table's paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluations = [read_evaluation(p) for p in paths]
    by_judge: dict[str, list[dict[str, Any]]] = {}
    for evaluation in evaluations:
        by_judge.setdefault(judge_name(evaluation.get("judge")), []).append(evaluation)
    figure, axes = plt.subplots(1, len(by_judge), figsize=(6.4 * len(by_judge), 4.6), squeeze=False)
    rows: list[dict[str, Any]] = []
    for ax, (judge, judged) in zip(axes[0], by_judge.items(), strict=True):
        panel = sorted((frontier_row(e) for e in judged), key=lambda r: r["kl"])
        _draw_panel(ax, panel, judge)
        rows += panel
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    table = out.with_suffix(".md")
    table.write_text(markdown_table(rows))
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return out, table


def _draw_panel(ax: Any, rows: list[dict[str, Any]], judge: str) -> None:
    """Each point's reward less its own reference's on the same prompts: runs whose prompts were cut to other
    lengths (the online runs leave room for a shorter completion) still compare like with like."""
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.plot([0.0], [0.0], "s", color="gray", label="reference (KL 0, gain 0)")
    gains = [r["reward"] - r["reference_reward"] for r in rows]
    ax.errorbar(
        [r["kl"] for r in rows], gains,
        xerr=[1.96 * r["kl_se"] for r in rows],
        yerr=[[r["reward"] - r["reward_low"] for r in rows], [r["reward_high"] - r["reward"] for r in rows]],
        fmt="o", color="tab:blue", capsize=3, label="policy (reward's 95% interval)",
    )  # fmt: skip
    for r, gain in zip(rows, gains, strict=True):
        ax.annotate(r["label"], (r["kl"], gain), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel("KL(policy ‖ reference) per completion, nats (estimated from policy samples)")
    ax.set_ylabel("judge reward of policy samples − reference's")
    ax.set_title(f"Reward–KL frontier ({rows[0]['prompts']} prompts; judge: {judge})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
