"""Any Lightning logger beside the run's own: the CSV log, checkpoints, config and summary stay in the run
directory (they moved under the added logger's folder, and the summary named files that did not exist); a
logger whose package is missing, or without its folder, is refused in one line before anything loads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import fit_tiny


@pytest.mark.slow
def test_an_added_logger_logs_beside_the_runs_own_csv_log(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    other = tmp_path / "other-logs"
    run = fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "--trainer.logger", "CSVLogger",
                   "--trainer.logger.save_dir", str(other), steps=2, val_every=2)  # fmt: skip
    for name in ("metrics.csv", "config.yaml", "summary.json", "checkpoints/last.ckpt", "curves.png"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert all(Path(summary[k]).exists() for k in ("metrics", "export", "last_checkpoint"))
    (added,) = other.rglob("metrics.csv")  # the added logger has the same rows
    with added.open() as handle:
        assert any(r.get("train/loss") for r in csv.DictReader(handle))


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--trainer.logger", "TensorBoardLogger", "--trainer.logger.save_dir", "tb"], "pip install tensorboard"),
        (["--trainer.logger", "MLFlowLogger"], "pip install mlflow"),
        (["--trainer.logger", "CSVLogger"], "--trainer.logger CSVLogger needs its save_dir: add"),
    ],
)
def test_a_logger_that_cannot_run_is_refused_in_one_line(tmp_path: Path, flags: list[str], says: str, capsys):
    from hhalign.cli import main
    from tests.conftest import REPO

    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(REPO / "configs/tiny/dpo.yaml"), "--model.model_name_or_path",
              str(tmp_path / "absent"), "--output_dir", str(tmp_path / "out"), *flags])  # fmt: skip
    code, printed = exited.value.code, capsys.readouterr().err.strip()
    message = printed if code == 2 else str(code)  # a parse error is printed (exit 2), a refusal is the exit
    assert message.startswith("hhalign: error: ") and says in message and "\n" not in message
    assert not (tmp_path / "out").exists()
