"""Sharded and multi-process training on this CPU: Lightning's real FSDPStrategy over 2 gloo processes
(``tests.sharded.CPUFSDPStrategy``) and DDP, through the real CLI and configs. Every run has a deadline, so a
hang (a rank waiting in a collective the other never joins) fails the test instead of stalling the suite."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hhalign.training.checkpointing import complete_checkpoints
from tests.conftest import REPO, tiny_args
from tests.sharded import fsdp_overlay, last_validation, run_cli, train_rows

pytestmark = [pytest.mark.slow, pytest.mark.sharded]
UNEVEN = ("--data.val_batch_size", "5")
"""12 validation pairs (24 completions for KTO) in batches of at most 5: 3 (or 5) batches, uneven over 2 ranks
before validation cut the pairs into a multiple of the processes' count."""


def _fit(tmp: Path, tiny: Path, data: Path, config: str, trial: str, *extra: str, steps: int = 2) -> list[str]:
    run = ["--trial_name", trial, "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps)]
    return tiny_args("fit", config, tiny, data, tmp, *run, *extra)


def _ok(result) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


def test_fsdp_fit_clips_logs_the_global_norm_validates_uneven_shards_exports_and_evaluates(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path, tiny_judge: Path
):
    fsdp = fsdp_overlay(tmp_path)
    sharded = run_cli(
        _fit(
            tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "fsdp", "--config", str(fsdp), *UNEVEN,
            "--trainer.gradient_clip_val", "1.0", "--model.warmup_steps", "0",
            "--trainer.callbacks+=hhalign.tools.evaluate.EvaluateAtFitEnd", f"--trainer.callbacks.judge={tiny_judge}",
            "--trainer.callbacks.prompts=4", "--trainer.callbacks.max_new_tokens=4",
        )
    )  # fmt: skip
    _ok(sharded)
    run = tmp_path / "tiny" / "fsdp"
    # one process over the same global batch (2 ranks x 8 pairs): the gradient norm FSDP logs is the whole one
    single = run_cli(
        _fit(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "single", "--data.batch_size", "16", steps=1)
    )
    _ok(single)
    norm, expected = (float(train_rows(d)[0]["train/grad_norm"]) for d in (run, tmp_path / "tiny" / "single"))
    assert norm == pytest.approx(expected, rel=1e-5)
    assert norm > 1.0  # so clipping at 1.0 acted: the second step moved the policy by a clipped update
    assert float(train_rows(run)[0]["train/loss"]) == pytest.approx(math.log(2), abs=1e-6)
    assert last_validation(run)["val/examples"] == 12  # every validation pair once, over uneven batches
    assert json.loads((run / "eval" / "evaluation.json").read_text())["prompts"] == 4  # evaluated at fit end
    step = run / "checkpoints" / "step=2.ckpt"
    assert step.is_dir()  # a sharded checkpoint folder; `hhalign export` reads it whole
    exported = run_cli(["export", "--ckpt", str(step), "--out", str(tmp_path / "from-folder")])
    _ok(exported)
    at_fit_end, from_folder = (load_file(d / "model.safetensors") for d in (run / "export", tmp_path / "from-folder"))
    assert sorted(at_fit_end) == sorted(from_folder) and not any(k.startswith("ref.") for k in at_fit_end)
    for key, tensor in at_fit_end.items():
        assert torch.equal(tensor, from_folder[key]), key
    start = load_file(tiny_dir / "model.safetensors")
    assert any(not torch.equal(start[k], at_fit_end[k]) for k in start)  # trained weights, not the start


@pytest.mark.parametrize("state_dict_type", ["sharded", "full"])
def test_fsdp_dpo_killed_then_resumed_logs_the_losses_of_an_uninterrupted_run(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path, state_dict_type: str
):
    fsdp = fsdp_overlay(tmp_path, state_dict_type)
    every_2 = ("--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
               "--trainer.callbacks.every_n_train_steps", "2", "--trainer.callbacks.save_last", "true")  # fmt: skip
    common = ("--config", str(fsdp), "--model.warmup_steps", "0", "--trainer.val_check_interval", "100", *every_2)

    def fit(trial: str, *extra: str):
        return run_cli(_fit(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", trial, *common, *extra, steps=5))

    _ok(fit("whole"))
    killed = fit("killed", "--trainer.callbacks+=tests.faults.KillAtStep", "--trainer.callbacks.step", "3")
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL, 1), killed.stderr[-3000:]
    _ok(fit("killed", "--ckpt_path", "last"))  # from step 2: the reference's weights and fingerprint restored
    expected, got = train_rows(tmp_path / "tiny" / "whole"), train_rows(tmp_path / "tiny" / "killed")
    assert sorted(got) == sorted(expected) == [0, 1, 2, 3, 4]
    for step in expected:
        assert float(got[step]["train/loss"]) == pytest.approx(float(expected[step]["train/loss"]), abs=1e-6), step
    if state_dict_type == "sharded":  # its optimizer state is sharded: one process refuses it, changing nothing
        run = tmp_path / "tiny" / "killed"
        records = {name: (run / name).read_bytes() for name in ("config.yaml", "data_summary.json", "metrics.csv")}
        folder = complete_checkpoints(run / "checkpoints")[-1]
        assert folder.is_dir()
        alone = run_cli(_fit(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "killed", "--model.warmup_steps",
                             "0", "--ckpt_path", str(folder), steps=6))  # fmt: skip
        errors = [line for line in alone.stderr.splitlines() if line.startswith("hhalign: error:")]
        assert alone.returncode == 1 and "Traceback" not in alone.stderr, alone.stderr[-2000:]
        assert len(errors) == 1 and "is an FSDP sharded checkpoint" in errors[0] and "hhalign export" in errors[0]
        assert records == {name: (run / name).read_bytes() for name in records}


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_kto_validates_uneven_shards_without_hanging(tmp_path: Path, tiny_dir: Path, small_jsonl: Path, strategy: str):
    """KTO's reference point is a collective while training; it used to be one in validation steps too."""
    where = ("--config", str(fsdp_overlay(tmp_path))) if strategy == "fsdp" else ("--trainer.strategy", "ddp",
                                                                                  "--trainer.devices", "2")  # fmt: skip
    _ok(run_cli(_fit(tmp_path, tiny_dir, small_jsonl, "configs/tiny/kto.yaml", strategy, *where, *UNEVEN)))
    assert last_validation(tmp_path / "tiny" / strategy)["val/examples"] == 24  # 12 pairs as 24 completions


def test_precompute_under_ddp_shares_the_pass_frees_the_reference_and_fsdp_refuses_it(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path
):
    precompute = ("--model.precompute_ref_logps", "true")
    ddp = _fit(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "ddp", *precompute, "--trainer.strategy",
               "ddp", "--trainer.devices", "2", "--trainer.callbacks+=tests.sharded.AssertReferenceFreed")  # fmt: skip
    result = run_cli(ddp)
    _ok(result)
    assert "reference freed" in result.stdout
    _ok(run_cli(_fit(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "single", *precompute)))
    shared, alone = (torch.load(tmp_path / "tiny" / t / "ref_logps.pt") for t in ("ddp", "single"))
    assert shared["key"] == alone["key"]
    for split in ("train", "val"):  # each rank computed half; gathered, every pair has its own values
        torch.testing.assert_close(torch.tensor(shared[split]), torch.tensor(alone[split]), rtol=0, atol=1e-4)
    refused = run_cli(
        _fit(
            tmp_path,
            tiny_dir,
            small_jsonl,
            "configs/tiny/dpo.yaml",
            "fsdp",
            *precompute,
            "--config",
            str(fsdp_overlay(tmp_path)),
        )  # fmt: skip
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("hhalign: error:")]
    assert len(errors) == 1 and "precompute_ref_logps is not supported under FSDP" in errors[0], refused.stderr[-2000:]


def test_the_7b_recipes_run_sft_then_dpo_and_rm_from_its_export_with_resume(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path
):
    """``configs/sft.yaml``, ``dpo.yaml`` and ``rm.yaml`` as shipped (FSDP FULL_SHARD, sharded checkpoints,
    bf16-mixed, gradient clipping, accumulation, gradient checkpointing, data workers, export at fit end), with
    only the model (the tiny one), the devices (2 CPU processes, the harness's strategy), the data (a local file,
    a quarter held out, uneven validation batches), the logger (no wandb) and the run's length changed."""
    import yaml

    fsdp = str(fsdp_overlay(tmp_path))

    def recipe(config: str, model: Path, trial: str, *extra: str) -> Path:
        args = ["fit", "--config", str(REPO / "configs" / config), "--config", fsdp, "--model.model_name_or_path",
                str(model), "--data.path", str(small_jsonl), "--data.val_split", "null", "--data.valid_fraction",
                "0.25", *UNEVEN, "--wandb_mode", "disabled", "--output_dir", str(tmp_path), "--trial_name", trial,
                "--trainer.max_steps", "2", "--trainer.val_check_interval", "4", "--trainer.enable_progress_bar",
                "false", *extra]  # fmt: skip
        _ok(run_cli(args))
        run = tmp_path / f"hh-rlhf-{config.removesuffix('.yaml')}" / trial
        resolved = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
        assert resolved["precision"] == "bf16-mixed" and resolved["gradient_clip_val"] == 1.0
        assert (
            resolved["accumulate_grad_batches"] == 2
            and resolved["strategy"]["init_args"]["state_dict_type"] == "sharded"
        )
        assert last_validation(run)["val/examples"] == 12
        return run

    sft = recipe("sft.yaml", tiny_dir, "sft")
    export = sft / "export"
    assert json.loads((export / "hhalign_export.json").read_text())["step"] == 2
    dpo = recipe("dpo.yaml", export, "dpo")
    assert float(train_rows(dpo)[0]["train/loss"]) == pytest.approx(math.log(2), abs=1e-6)  # SFT = policy = ref
    before = load_file(dpo / "export" / "model.safetensors")
    recipe("dpo.yaml", export, "dpo", "--ckpt_path", "last", "--trainer.max_steps", "3")
    assert sorted(train_rows(dpo)) == [0, 1, 2]  # resumed at step 2, each step logged once
    assert json.loads((dpo / "export" / "hhalign_export.json").read_text())["step"] == 3
    after = load_file(dpo / "export" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rm = recipe("rm.yaml", export, "rm")
    info = json.loads((rm / "export" / "hhalign_export.json").read_text())
    assert info["head"] == "reward" and info["base"] == str(export)


def test_fsdp_lora_fits_exports_merged_adapters_and_validates_its_sharded_checkpoint(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path
):
    """LoRA's reference is the policy with its adapters off, run inside the same wrapped forward."""
    fsdp = ("--config", str(fsdp_overlay(tmp_path)))
    lora = ("--model.lora_rank", "4")
    _ok(run_cli(_fit(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "lora", *fsdp, *lora, *UNEVEN)))
    run = tmp_path / "tiny" / "lora"
    assert float(train_rows(run)[0]["train/loss"]) == pytest.approx(math.log(2), abs=1e-6)
    _ok(run_cli(["export", "--ckpt", str(run / "checkpoints" / "step=2.ckpt"), "--out", str(tmp_path / "folder")]))
    at_fit_end, from_folder = (load_file(d / "model.safetensors") for d in (run / "export", tmp_path / "folder"))
    start = load_file(tiny_dir / "model.safetensors")
    assert sorted(at_fit_end) == sorted(from_folder) == sorted(start)  # adapters merged into a plain model
    assert all(torch.equal(at_fit_end[k], from_folder[k]) for k in start)
    assert any(not torch.equal(at_fit_end[k], start[k]) for k in start)
    _ok(run_cli(["export", "--ckpt", str(run / "checkpoints" / "step=2.ckpt"), "--out", str(tmp_path / "adapters"),
                 "--adapters_only"]))  # fmt: skip
    for adapters in (run / "export" / "adapter", tmp_path / "adapters"):  # at fit end, gathered; and from the folder
        weights = load_file(adapters / "adapter_model.safetensors")
        assert weights and all("lora_" in k for k in weights), adapters
    assert json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())["r"] == 4
    folder = str(run / "checkpoints" / "step=2.ckpt")
    validate = tiny_args("validate", "configs/tiny/dpo.yaml", tiny_dir, small_jsonl, tmp_path, *fsdp, *lora, *UNEVEN,
                         "--trial_name", "validate", "--ckpt_path", folder)  # fmt: skip
    _ok(run_cli(validate))
    validated, at_fit_end_validation = last_validation(tmp_path / "tiny" / "validate"), last_validation(run)
    for key in ("val/loss", "val/reward_accuracy", "val/examples"):
        assert validated[key] == pytest.approx(at_fit_end_validation[key], abs=1e-5), key
