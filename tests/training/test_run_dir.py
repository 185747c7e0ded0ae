"""Nothing a user does loses a run: --overwrite keeps the old run until the new one has a checkpoint, --ckpt_path
last never starts over silently, a refused command leaves every file as it was, and an extended run logs each step
at its own number."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from hhalign.cli import main
from tests.conftest import fit_tiny, tiny_fit_args

pytestmark = pytest.mark.slow
DPO = "configs/tiny/dpo.yaml"


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file under a run directory, by relative path (a link by where it points)."""
    out = {}
    for path in sorted(run_dir.rglob("*")):
        key = str(path.relative_to(run_dir))
        if path.is_symlink():
            out[key] = f"-> {path.readlink()}".encode()
        elif path.is_file():
            out[key] = path.read_bytes()
    return out


def _refused(*args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    message = str(exited.value.code)
    assert message.startswith("hhalign: error: ") and "\n" not in message, message
    return message


def _rows(run_dir: Path, column: str) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get(column)]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"{column}: a step is logged twice: {steps}"
    return {int(r["step"]): float(r[column]) for r in rows}


def test_overwrite_keeps_the_earlier_run_until_the_new_one_has_a_checkpoint(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path
):
    run = fit_tiny(tmp_path, tiny_dir, small_jsonl, DPO, steps=2, val_every=2)
    before = _files(run)
    assert "checkpoints/last.ckpt" in before and "export/model.safetensors" in before
    broken = tmp_path / "broken-model"  # a tokenizer that loads, weights that do not: fails after the data loaded
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    for model, data in ((tiny_dir, tmp_path / "typo.jsonl"), (broken, small_jsonl)):
        with pytest.raises(SystemExit):
            main(tiny_fit_args(tmp_path, model, data, DPO, "--overwrite", "true", trial="t", steps=1, val_every=1))
        assert _files(run) == before, model
        assert not any(p.name.endswith(".replaced") for p in run.parent.iterdir())
    fit_tiny(tmp_path, tiny_dir, small_jsonl, DPO, "--overwrite", "true", steps=1, val_every=1)
    assert sorted(_rows(run, "train/loss")) == [0]  # the new run, alone
    assert not any(p.name.endswith(".replaced") for p in run.parent.iterdir())


def test_resume_last_after_a_kill_during_a_save_refuses_naming_the_checkpoint_to_use(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path
):
    """The state a kill -9 leaves while step 3 is written: no last.ckpt, a hidden partial file, step 2 whole."""
    run = fit_tiny(tmp_path, tiny_dir, small_jsonl, DPO, "--model.lr_schedule", "constant", steps=3, val_every=2)
    losses = _rows(run, "train/loss")
    checkpoints = run / "checkpoints"
    for path in checkpoints.iterdir():
        if path.is_symlink() or "step=3" in path.name:
            path.unlink()
    (checkpoints / ".step=3.partial-12345.ckpt").write_bytes((checkpoints / "best-step=2.ckpt").read_bytes()[:1000])
    before = _files(run)
    resume = tiny_fit_args(tmp_path, tiny_dir, small_jsonl, DPO, "--model.lr_schedule", "constant", steps=3)
    message = _refused(*resume, "--ckpt_path", "last")
    assert "last.ckpt is missing or incomplete" in message and "partial" not in message.split("newest")[1]
    named = message.rsplit("--ckpt_path ", 1)[1]
    assert Path(named).parent == checkpoints and "step=2" in Path(named).name
    assert _files(run) == before  # refused: nothing rewritten
    main([*resume, "--ckpt_path", named])
    resumed = _rows(run, "train/loss")  # steps 2.. replayed from the checkpoint, each once
    assert sorted(resumed) == [0, 1, 2] and resumed == pytest.approx(losses, abs=1e-6)
    fresh = _refused(*tiny_fit_args(tmp_path, tiny_dir, small_jsonl, DPO, trial="typo"), "--ckpt_path", "last")
    assert "typo does not exist to resume" in fresh and not (tmp_path / "tiny" / "typo").exists()


def test_extending_a_finished_run_logs_each_step_at_its_own_number(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path, capsys: pytest.CaptureFixture
):
    """5 steps then 2 more (5 is not a multiple of the validation interval, so the run ended on a forced
    validation) equals 7 steps run at once, row for row."""
    same = ("--model.lr_schedule", "constant")
    whole = fit_tiny(tmp_path, tiny_dir, small_jsonl, DPO, *same, trial="whole", steps=7, val_every=2)
    part = fit_tiny(tmp_path, tiny_dir, small_jsonl, DPO, *same, trial="part", steps=5, val_every=2)
    capsys.readouterr()
    fit_tiny(tmp_path, tiny_dir, small_jsonl, DPO, *same, "--ckpt_path", "last", trial="part", steps=7, val_every=2)
    assert _rows(part, "train/loss") == pytest.approx(_rows(whole, "train/loss"), abs=1e-6)
    assert sorted(_rows(part, "train/loss")) == list(range(7))
    validations = _rows(part, "val/loss")
    assert sorted(validations) == [1, 3, 4, 5, 6]  # step 4: the 5-step run's closing validation, kept
    for step in (1, 3, 5, 6):
        assert validations[step] == pytest.approx(_rows(whole, "val/loss")[step], abs=1e-6)
    said = capsys.readouterr().err
    assert "resuming at step 5 with changed settings" in said and "trainer.max_steps 5 -> 7" in said
    assert "max_steps: 5" in (part / "config.before-step-5.yaml").read_text()
    assert "max_steps: 7" in (part / "config.yaml").read_text()


def test_a_refused_resume_changes_nothing_in_the_run_directory(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    run = fit_tiny(tmp_path, tiny_dir, small_jsonl, DPO, steps=2, val_every=2)
    before = _files(run)
    refusals = {
        "the training module": ("configs/tiny/rm.yaml",),
        "the training data": (DPO, "--data.max_length", "96"),
    }
    for what, (config, *extra) in refusals.items():
        args = tiny_fit_args(tmp_path, tiny_dir, small_jsonl, config, *extra, trial="t", steps=4, val_every=2)
        assert f"cannot resume: {what}" in _refused(*args, "--ckpt_path", "last")
        assert _files(run) == before, what
