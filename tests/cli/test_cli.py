"""The real CLI, in-process: every shipped YAML parses, and a tiny fit runs end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from hhalign.cli import main
from tests.conftest import REPO, fit_tiny

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
TASK_CONFIGS = [c for c in CONFIGS if c.name != "base.yaml"]  # base.yaml is the block the others extend


def test_configs_are_found():
    assert {p.name for p in CONFIGS} >= {"dpo.yaml", "rm.yaml"} and len(CONFIGS) >= 4


@pytest.mark.parametrize("config", TASK_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_parses(config: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(config), "--print_config"])
    assert exited.value.code in (None, 0)
    printed = capsys.readouterr().out
    assert "class_path: hhalign." in printed and "model_name_or_path:" in printed


def test_model_path_is_linked_to_the_tokenizer(tmp_path: Path):
    from hhalign.cli import HHAlignCLI
    from hhalign.data.datamodule import PreferenceDataModule
    from hhalign.objectives import AlignmentModule

    cli = HHAlignCLI(
        AlignmentModule,
        PreferenceDataModule,
        subclass_mode_model=True,
        run=False,
        args=[
            "--config",
            str(REPO / "configs/tiny/dpo.yaml"),
            "--model.model_name_or_path",
            "/m/x",
            "--output_dir",
            str(tmp_path),
        ],
    )
    assert cli.datamodule.hparams.tokenizer_name_or_path == "/m/x"
    assert cli.model.hparams.model_name_or_path == "/m/x"


@pytest.mark.parametrize(
    ("option", "value", "line"),
    [
        (
            "--model.loss_type",
            "sigmoidd",
            "hhalign: error: --model.loss_type 'sigmoidd' is not one of: sigmoid, robust, hinge, ipo, exo_pair, "
            "nca_pair, bco_pair, sppo_hard, aot, apo_zero, apo_down, discopop, simpo, orpo, sft; "
            "did you mean 'sigmoid'?",
        ),
        ("--model.lr_schedule", "cosin", "hhalign: error: --model.lr_schedule 'cosin' is not one of: cosine, linear, "
         "constant; did you mean 'cosine'?"),
        ("--data.padding_side", "middle", "hhalign: error: --data.padding_side 'middle' is not one of: right, left"),
        ("--model.beta", "0", "hhalign: error: --model.beta must be > 0 (given 0)"),
        ("--data.batch_size", "0", "hhalign: error: --data.batch_size must be > 0 (given 0)"),
        ("--data.max_length", "-8", "hhalign: error: --data.max_length must be > 0 (given -8)"),
        ("--model.warmup_steps", "-1", "hhalign: error: --model.warmup_steps must be ≥ 0 (given -1)"),
        ("--model.val_batches_during_fit", "0", "hhalign: error: --model.val_batches_during_fit must be > 0 (given 0)"),
    ],
)  # fmt: skip
def test_a_bad_option_is_one_line_naming_option_value_and_choices(
    option: str, value: str, line: str, capsys: pytest.CaptureFixture[str]
):
    """Refused by type while parsing, before any model or data loads: no usage dump, no traceback."""
    with pytest.raises(SystemExit) as exited:
        main(["fit", "--config", str(REPO / "configs/tiny/dpo.yaml"), option, value])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [line] and captured.out == ""


def test_a_config_extends_its_base_and_overrides_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The shared trainer block comes from ``extends``; the file's own keys, then the flags, win over it."""
    base = tmp_path / "base.yaml"
    base.write_text("trainer:\n  log_every_n_steps: 7\n  max_steps: 3\n")
    task = tmp_path / "task.yaml"
    task.write_text((REPO / "configs/tiny/dpo.yaml").read_text().replace("extends: ../base.yaml", "extends: base.yaml"))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(task), "--trainer.val_check_interval", "5", "--print_config"])
    printed = capsys.readouterr().out
    assert "log_every_n_steps: 7" in printed  # from the base
    assert "max_steps: 100" in printed  # the task file's own value
    assert "val_check_interval: 5" in printed  # the flag's


def test_shipped_task_configs_share_one_trainer_block():
    """Every task config extends the base, and none repeats its callbacks."""
    for config in TASK_CONFIGS:
        text = config.read_text()
        assert "\nextends: " in text and "callbacks:" not in text, config


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_dpo_fit_end_to_end(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    run_dir = fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml")
    rows = _rows(run_dir)
    train = [r for r in rows if r.get("train/loss")]
    assert [int(r["step"]) for r in train] == [0, 1, 2, 3]
    assert abs(float(train[0]["train/loss"]) - math.log(2)) < 0.005
    assert float(train[0]["train/tie_rate"]) == 1.0 and float(train[0]["train/reward_accuracy"]) == 0.0
    assert all(r.get("train/grad_norm") for r in train)
    speed = [r for r in rows if r.get("train/device/samples_per_sec")]  # Lightning's ThroughputMonitor, own rows
    assert [int(r["step"]) for r in speed] == [1, 2, 3]
    assert all(float(r["train/device/flops_per_sec"]) > 0 and float(r["train/device/items_per_sec"]) > 0 for r in speed)
    val = [r for r in rows if r.get("val/reward_accuracy")]
    assert len(val) == 2 and all(0 <= float(r["val/reward_accuracy"]) <= 1 for r in val)
    assert any(r.get("lr-AdamW") for r in rows)
    # the final validation saw every validation pair, and the summary puts error bars on its accuracy
    n_val = json.loads((run_dir / "data_summary.json").read_text())["kept"]["val"]
    assert float(val[-1]["val/examples"]) == n_val
    interval = json.loads((run_dir / "summary.json").read_text())["reward_accuracy_interval"]
    low, high = interval["wilson95"]
    assert interval["pairs"] == n_val and low <= float(val[-1]["val/reward_accuracy"]) <= high
    # beside it, how far "the longer reply wins" gets on the same pairs, and the chosen-shorter accuracy
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["length_baseline_interval"]["pairs"] == n_val
    shorter = round(n_val * float(val[-1]["val/chosen_shorter_rate"]))
    assert 0 < shorter < n_val and summary["reward_accuracy_chosen_shorter_interval"]["pairs"] == shorter
    written = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "data_summary.json", "metrics.csv", "curves.png", "summary.json", "export"} <= written
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_dpo_checkpoint_holds_no_reference_and_resumes(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    import torch

    run_dir = fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml")
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = checkpoint["state_dict"].keys()
    assert any(k.startswith("policy.") for k in keys) and not any(k.startswith("ref.") for k in keys)
    assert checkpoint["global_step"] == 4
    fit_tiny(
        tmp_path,
        tiny_dir,
        small_jsonl,
        "configs/tiny/dpo.yaml",
        "--trainer.max_steps",
        "6",
        "--ckpt_path",
        str(run_dir / "checkpoints" / "last.ckpt"),
    )
    train_steps = [int(r["step"]) for r in _rows(run_dir) if r.get("train/loss")]
    assert train_steps == [0, 1, 2, 3, 4, 5]


@pytest.mark.slow
def test_rm_fit_end_to_end(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    run_dir = fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/rm.yaml")
    rows = _rows(run_dir)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert any(r.get("val/reward_accuracy") for r in rows)
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_missing_model_path_is_a_clear_error(tmp_path: Path, small_jsonl: Path):
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "fit",
                "--config",
                str(REPO / "configs/tiny/dpo.yaml"),
                "--model.model_name_or_path",
                str(tmp_path / "no-such-model"),
                "--data.path",
                str(small_jsonl),
                "--output_dir",
                str(tmp_path),
            ]
        )
    message = str(exited.value.code)
    assert "no-such-model' does not exist" in message and "make-tiny" in message


@pytest.mark.parametrize(
    ("path", "command"),
    [
        ("artifacts/smollm2-135m-instruct", "make model"),
        ("outputs/tiny/sft/export", "hhalign fit --config configs/tiny/sft.yaml"),
        ("artifacts/tiny", "hhalign make-tiny --out artifacts/tiny"),
        ("artifacts/nope", "a folder written by save_pretrained"),  # not the tiny model: no make-tiny to build it
    ],
)
def test_a_missing_model_folder_names_the_command_that_makes_it(tmp_path: Path, path: str, command: str):
    """Relative folders that the earlier stages write are refused as missing before any hub lookup."""
    import os

    here = os.getcwd()
    os.chdir(tmp_path)  # none of these exists here
    try:
        with pytest.raises(SystemExit) as exited:
            main(["fit", "--config", str(REPO / "configs/tiny/dpo.yaml"), "--model.model_name_or_path", path])
    finally:
        os.chdir(here)
    message = str(exited.value.code)
    assert message.count("\n") == 0 and f"'{path}' does not exist" in message and command in message
    assert ("make-tiny --out" in message) == (path == "artifacts/tiny")


def test_an_earlier_run_is_not_overwritten(tmp_path: Path, small_jsonl: Path):
    run_dir = tmp_path / "tiny" / "dpo"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("step,train/loss\n0,0.69\n")
    args = [
        "fit",
        "--config",
        str(REPO / "configs/tiny/dpo.yaml"),
        "--data.path",
        str(small_jsonl),
        "--output_dir",
        str(tmp_path),
        "--model.model_name_or_path",
        str(tmp_path / "absent"),
    ]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert "already holds a run" in str(exited.value.code) and "--ckpt_path last" in str(exited.value.code)
    assert (run_dir / "metrics.csv").read_text() == "step,train/loss\n0,0.69\n"
    with pytest.raises(SystemExit) as exited:  # replacing it is explicit, and the next error is the model path
        main([*args, "--overwrite", "true"])
    assert "does not exist" in str(exited.value.code)
    assert (run_dir / "metrics.csv").read_text() == "step,train/loss\n0,0.69\n"  # put back: nothing replaced it
    assert (run_dir / "checkpoints").is_dir() and sorted(p.name for p in run_dir.parent.iterdir()) == ["dpo"]


def _wandb_record(path: Path, expected: bytes, seconds: float = 30.0) -> bytes:
    """The offline run's record once ``expected`` is in it: wandb's service process may still be writing it
    after ``wandb.finish()`` returns (seen once in CI under load, the file holding only its 7-byte header)."""
    import time

    deadline = time.monotonic() + seconds
    while expected not in (record := path.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return record


@pytest.mark.slow
def test_wandb_offline_beside_the_csv_log_resumes_its_run_and_keeps_secrets_out(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path, monkeypatch: pytest.MonkeyPatch
):
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_API_KEY", secret)
    run_dir = fit_tiny(
        tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "--wandb_mode", "offline", "--trainer.max_steps", "2"
    )
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and offline_runs[0].name.endswith(run_id) and any(offline_runs[0].rglob("*.wandb"))
    assert [int(r["step"]) for r in _rows(run_dir) if r.get("train/loss")] == [0, 1]
    # the resolved config travels with the wandb run (project = experiment, run name = trial)
    record = _wandb_record(next(offline_runs[0].rglob("*.wandb")), b"hhalign.DPOModule")
    assert b"hhalign_config" in record and b"hhalign.DPOModule" in record
    assert str(small_jsonl).encode() in record and b"tiny" in record

    fit_tiny(
        tmp_path,
        tiny_dir,
        small_jsonl,
        "configs/tiny/dpo.yaml",
        "--wandb_mode",
        "offline",
        "--trainer.max_steps",
        "3",
        "--ckpt_path",
        "last",
    )
    assert (run_dir / "wandb_run_id.txt").read_text().strip() == run_id
    assert all(p.name.endswith(run_id) for p in (run_dir / "wandb").glob("offline-run-*"))
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"the wandb key leaked into {path}"


@pytest.mark.slow
def test_resume_from_an_earlier_checkpoint_logs_each_step_once(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    import shutil

    run_dir = fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "--trainer.max_steps", "2")
    early = tmp_path / "step2.ckpt"
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", early)
    fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "--ckpt_path", str(early))  # on to step 4
    fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "--ckpt_path", str(early))  # steps 2, 3 again
    rows = _rows(run_dir)
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [0, 1, 2, 3]
    assert sum(1 for r in rows if r.get("val/reward_accuracy")) == 2


@pytest.mark.slow
def test_no_lightning_advert_and_no_warning_about_the_frozen_reference(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path, caplog: pytest.LogCaptureFixture
):
    import logging
    import warnings

    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", steps=1, val_every=1)
    assert any("GPU available" in r.getMessage() for r in caplog.records)  # Lightning's info log is captured
    assert not any("Tip" in r.getMessage() for r in caplog.records)  # Lightning advertises a cloud logger
    assert not any("in eval mode" in str(w.message) for w in caught)


def test_a_slurm_task_other_than_rank_0_deletes_nothing_and_reports_nothing(
    tmp_path: Path, small_jsonl: Path, monkeypatch: pytest.MonkeyPatch
):
    """``srun`` starts every task at once and sets only ``SLURM_PROCID``: task 1 must leave the run directory
    (and the error message) to task 0, or each task would delete the others' run under --overwrite."""
    run_dir = tmp_path / "tiny" / "dpo"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("step,train/loss\n0,0.69\n")
    monkeypatch.setenv("SLURM_PROCID", "1")
    args = ["fit", "--config", str(REPO / "configs/tiny/dpo.yaml"), "--data.path", str(small_jsonl),
            "--output_dir", str(tmp_path), "--model.model_name_or_path", str(tmp_path / "absent"),
            "--overwrite", "true"]  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 1  # the missing model, said once by task 0, not by every task
    assert (run_dir / "metrics.csv").exists() and (run_dir / "checkpoints").exists()


def test_deepspeed_is_refused_in_one_line_before_anything_starts(tmp_path: Path, small_jsonl: Path):
    args = ["fit", "--config", str(REPO / "configs/tiny/dpo.yaml"), "--data.path", str(small_jsonl),
            "--output_dir", str(tmp_path), "--trainer.strategy", "deepspeed_stage_2"]  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        main(args)
    message = str(exited.value.code)
    assert message.startswith("hhalign: error: DeepSpeed is not supported") and "fsdp" in message
    assert not (tmp_path / "tiny").exists()
