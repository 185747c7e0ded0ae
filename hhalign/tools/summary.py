"""The one-screen summary at the end of ``fit`` (also saved as ``summary.json``), and
``hhalign summary DIR…``, a table of the final validation numbers of several runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from hhalign.errors import UserError
from hhalign.tools.export import ExportAtFitEnd
from hhalign.tools.parsers import summary_parser

SUMMARY_FILE = "summary.json"
TABLE_METRICS = ("val/reward_accuracy", "val/reward_margin", "val/chosen_reward", "val/rejected_reward", "val/loss")


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96): unlike the normal approximation it
    stays inside [0, 1] and behaves near 0 and 1, which an accuracy over a few hundred pairs needs."""
    if n <= 0:
        raise ValueError(f"n must be positive (got {n})")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(final_validation: dict[str, float], metric: str = "reward_accuracy") -> dict[str, Any] | None:
    """The 95% interval of a share in the final validation (``reward_accuracy``, ``length_baseline`` or
    ``reward_accuracy_chosen_shorter``) over the pairs it is a share of, when the run logged their count."""
    value, pairs = final_validation.get(f"val/{metric}"), final_validation.get("val/examples")
    if metric == "reward_accuracy_chosen_shorter" and pairs:
        pairs = round(pairs * final_validation.get("val/chosen_shorter_rate", 0.0))
    if value is None or not pairs:
        return None
    low, high = wilson_interval(round(value * pairs), int(pairs))
    return {"pairs": int(pairs), "wilson95": [low, high]}


INTERVAL_METRICS = {
    "reward_accuracy": "chance is 0.5",
    "length_baseline": "'the longer reply wins' on these pairs",
    "reward_accuracy_chosen_shorter": "on the pairs whose chosen reply is the shorter",
}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class RunSummary(Callback):
    """Print where everything is and how the run ended; runs after the export and plot callbacks."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.state.fn == "validate":  # `hhalign validate`: the numbers of the weights as given
            self.on_fit_end(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        run_dir = Path(trainer.default_root_dir)
        final = {k: _number(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        earlier = run_dir / SUMMARY_FILE
        if trainer.state.fn == "fit" and not final and earlier.is_file():  # resumed with nothing left to train
            final = json.loads(earlier.read_text()).get("final_validation", {})
        summary: dict[str, Any] = {
            "module": type(pl_module).__name__,
            "model": pl_module.hparams.model_name_or_path,
            "steps": trainer.global_step,
            "final_validation": {k: v for k, v in sorted(final.items()) if v is not None},
            "run_dir": str(run_dir),
        }
        if (run_dir / "metrics.csv").is_file():  # another logger may keep its own
            summary["metrics"] = str(run_dir / "metrics.csv")
        for metric in INTERVAL_METRICS:
            if interval := accuracy_interval(summary["final_validation"], metric):
                summary[f"{metric}_interval"] = interval
        if trainer.state.fn == "validate" and trainer.ckpt_path:
            summary["validated_checkpoint"] = trainer.ckpt_path
        elif trainer.state.fn == "validate":  # no checkpoint: the model's own weights
            summary["validated_model"] = pl_module.hparams.model_name_or_path
        for callback in trainer.checkpoint_callbacks if trainer.state.fn == "fit" else []:
            if not isinstance(callback, ModelCheckpoint):
                continue
            best_score = _number(callback.best_model_score)
            if callback.monitor and best_score is not None:
                summary["best"] = {
                    "metric": callback.monitor,
                    "value": best_score,
                    "checkpoint": callback.best_model_path,
                }
            if callback.last_model_path:
                summary["last_checkpoint"] = callback.last_model_path
        for callback in trainer.callbacks:
            export = Path(getattr(callback, "dirpath", None) or run_dir / "export")
            if isinstance(callback, ExportAtFitEnd) and (export / "config.json").is_file():  # written, not planned
                summary["export"] = str(export)
            if evaluation := getattr(callback, "evaluation_summary", None):  # EvaluateAtFitEnd, when it ran
                summary["evaluation"] = evaluation
        if trainer.state.fn == "fit" and (run_dir / "curves.png").exists():
            summary["curves"] = str(run_dir / "curves.png")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        pl_module.print(format_summary(summary))


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"== hhalign: {summary['module']} on {summary['model']}, {summary['steps']} training steps =="]
    for key, value in summary["final_validation"].items():
        line = f"  {key:<32} {int(value)}" if key.endswith("/examples") else f"  {key:<32} {value:.4f}"
        metric = key.split("/", 1)[-1]
        if metric in INTERVAL_METRICS and (interval := summary.get(f"{metric}_interval")):
            low, high = interval["wilson95"]
            line += f"  (95% interval {low:.3f}–{high:.3f} over {interval['pairs']} pairs; {INTERVAL_METRICS[metric]})"
        lines.append(line)
    if best := summary.get("best"):
        lines.append(f"  best {best['metric']} = {best['value']:.4f}: {best['checkpoint']}")
    for key, value in summary.get("evaluation", {}).items():
        lines.append(f"  {key:<32} {value:.4f}" if isinstance(value, float) else f"  {key:<32} {value}")
    for key in ("validated_checkpoint", "validated_model", "last_checkpoint", "curves", "export", "metrics"):
        if key in summary:
            lines.append(f"  {key.replace('_', ' '):<16} {summary[key]}")
    return "\n".join(lines)


def summary_table(run_dirs: list[str]) -> str:
    """A markdown table of the final validation of each run directory that holds a summary."""
    rows = []
    for run_dir in run_dirs:
        path = Path(run_dir) / SUMMARY_FILE
        if not path.is_file():
            raise UserError(f"{path} does not exist; give run directories of finished `hhalign fit` runs")
        rows.append(json.loads(path.read_text()))
    columns = [m for m in (*TABLE_METRICS, "val/perplexity") if any(m in r["final_validation"] for r in rows)]
    intervals = [m for m in INTERVAL_METRICS if any(f"{m}_interval" in r for r in rows)]
    titles = {
        "reward_accuracy": "accuracy 95% interval (pairs)",
        "length_baseline": "longer-wins baseline (95%)",
        "reward_accuracy_chosen_shorter": "accuracy when chosen is shorter (95%, pairs)",
    }
    headers = [*columns, *(titles[m] for m in intervals)]
    lines = ["| run | module | model | steps | " + " | ".join(headers) + " |", "|---" * (4 + len(headers)) + "|"]
    for r in rows:
        values = [r["final_validation"].get(m) for m in columns]
        cells = ["" if v is None else f"{v:.4f}" for v in values]
        for metric in intervals:
            interval = r.get(f"{metric}_interval")
            value = r["final_validation"].get(f"val/{metric}")
            cells.append(_interval_cell(value, interval, with_pairs=metric != "length_baseline"))
        name = "/".join(Path(r["run_dir"]).parts[-2:])
        lines.append(f"| {name} | {r['module']} | {r['model']} | {r['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval_cell(value: float | None, interval: dict[str, Any] | None, with_pairs: bool) -> str:
    if value is None or not interval:
        return ""
    low, high = interval["wilson95"]
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" + (f" ({interval['pairs']})" if with_pairs else "")


def main(argv: list[str] | None = None) -> None:
    print(summary_table(summary_parser().parse_args(argv).run_dirs))
