"""Training curves of a run from its ``metrics.csv``: ``hhalign plot RUN_DIR``, or automatically at
the end of ``fit`` with the ``PlotAtFitEnd`` callback (``hhalign plot --frontier`` draws evaluations
instead: ``hhalign.tools.frontier``). One panel per metric; the training series is
drawn raw (faint) and smoothed, validation as points joined by a line."""

from __future__ import annotations

import csv
import importlib
import math
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback

from hhalign.errors import UserError
from hhalign.tools.parsers import plot_parser

PLOT_FILE = "curves.png"


def read_series(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """Every non-empty ``(step, value)`` of every column, in file order."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                series.setdefault(key, []).append((int(float(step)), float(value)))
    return series


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction, as TensorBoard's smoothing slider."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def objective_of(run_dir: Path) -> type | None:
    """The objective class a run trained, from its ``config.yaml`` (``model.class_path``), if it says."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return None
    class_path = (yaml.safe_load(config_file.read_text()) or {}).get("model", {}).get("class_path")
    if not class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def default_panels(run_dir: Path, series: dict[str, list]) -> tuple[list[str], str]:
    """The panels the run's objective asks for, and its name; without a config, every train/val metric."""
    objective = objective_of(run_dir)
    if objective is not None:
        return list(objective.plot_panels), objective.__name__
    names = sorted({k.split("/", 1)[1] for k in series if k.startswith(("train/", "val/"))})
    return names, "run"


def plot_run(
    run_dir: str | Path, out: str | Path | None = None, panels: list[str] | None = None, title: str | None = None
) -> Path:
    """Draw ``RUN_DIR/metrics.csv`` into ``RUN_DIR/curves.png`` (or ``out``) and return its path: a panel
    for each of ``panels`` (by default those the run's objective names) that the log holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics_csv = run_dir / "metrics.csv"
    if not metrics_csv.is_file():
        raise UserError(f"{metrics_csv} does not exist; give the run directory of an `hhalign fit` run")
    series = read_series(metrics_csv)
    if panels is None:
        panels, title = default_panels(run_dir, series)
    names = [n for n in panels if f"train/{n}" in series or f"val/{n}" in series]
    if not names:
        raise UserError(f"{metrics_csv} has no train/ or val/ curves to draw yet")
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        if train := series.get(f"train/{name}"):
            steps, values = zip(*train, strict=True)
            ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
            ax.plot(steps, smooth(list(values)), color="tab:blue", label="train (smoothed)")
        if val := series.get(f"val/{name}"):
            steps, values = zip(*val, strict=True)
            ax.plot(steps, values, color="tab:orange", marker="o", label="validation")
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    figure.suptitle(f"{run_dir.parent.name}/{run_dir.name} ({title or 'run'})")
    figure.tight_layout()
    path = Path(out) if out else run_dir / PLOT_FILE
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


class PlotAtFitEnd(Callback):
    """Draw the run's curves into ``<run dir>/curves.png`` when ``fit`` ends (main process)."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.save()  # the CSV rows not yet written
        run_dir = Path(trainer.default_root_dir)
        if (run_dir / "metrics.csv").is_file():
            path = plot_run(run_dir, panels=list(pl_module.plot_panels), title=type(pl_module).__name__)
            pl_module.print(f"training curves: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = plot_parser()
    args = parser.parse_args(argv)
    if args.frontier:
        from hhalign.tools.frontier import plot_frontier

        picture, table = plot_frontier(args.paths, args.out or "frontier.png")
        print(f"{picture}\n{table.read_text()}", end="")
        return
    if len(args.paths) != 1:
        parser.error("give one run directory (or --frontier with several evaluations)")
    print(plot_run(args.paths[0], args.out))
