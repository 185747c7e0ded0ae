"""The online objectives under Lightning's real FSDPStrategy on 2 CPU processes (``tests.sharded``): PPO samples
from the sharded policy (every rank decoding until all are done), trains policy and critic with the global
gradient norm clipped, checkpoints both with their parameter groups, resumes exactly, validates by sampling and
exports the critic beside the policy, gathered on rank 0."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_args, write_jsonl
from tests.sharded import fsdp_overlay, run_cli, train_rows

pytestmark = [pytest.mark.slow, pytest.mark.sharded]


def test_fsdp_ppo_trains_both_models_resumes_exactly_and_exports_the_critic(tmp_path: Path, tiny_dir: Path,
                                                                           tiny_judge: Path):  # fmt: skip
    prompts = [{"prompt": f"\n\nHuman: say {w} {i}\n\nAssistant:"} for w in "abcd" for i in range(5)]
    data = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    every_2 = ("--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
               "--trainer.callbacks.every_n_train_steps", "2", "--trainer.callbacks.save_top_k", "-1")  # fmt: skip

    def fit(trial: str, *extra: str):
        return run_cli(tiny_args(
            "fit", "configs/tiny/ppo.yaml", tiny_dir, data, tmp_path, "--config", str(fsdp_overlay(tmp_path, "full")),
            "--trial_name", trial, "--model.reward_model", str(tiny_judge), "--model.max_completion_length", "5",
            "--data.batch_size", "2", "--data.val_batch_size", "2", "--data.valid_fraction", "0.2",
            "--model.optimizer.init_args.lr", "1e-3", "--trainer.max_steps", "4", "--trainer.val_check_interval", "4",
            *every_2, *extra,
        ))  # fmt: skip

    whole = fit("whole")
    assert whole.returncode == 0, whole.stderr[-4000:]
    run = tmp_path / "tiny" / "whole"
    rows = train_rows(run)
    assert sorted(rows) == [0, 1, 2, 3]
    for row in rows.values():
        assert float(row["train/grad_norm"]) > 0 and float(row["train/critic_grad_norm"]) > 0
    with (run / "metrics.csv").open() as handle:  # validation sampled from the sharded policy
        assert any(float(r["val/reward"]) for r in csv.DictReader(handle) if r.get("val/reward"))
    checkpoint = torch.load(run / "checkpoints" / "epoch=0-step=2.ckpt", weights_only=True)
    assert len(checkpoint["optimizer_states"][0]["param_groups"]) == 2  # policy and critic
    assert any(k.startswith("critic.") for k in checkpoint["state_dict"])

    start, policy = load_file(tiny_dir / "model.safetensors"), load_file(run / "export" / "model.safetensors")
    assert sorted(start) == sorted(policy) and any(not torch.equal(start[k], policy[k]) for k in start)
    judge = load_file(tiny_judge / "model.safetensors")
    critic = load_file(run / "export" / "critic" / "model.safetensors")
    assert sorted(judge) == sorted(critic) and any(not torch.equal(judge[k], critic[k]) for k in judge)
    assert json.loads((run / "export" / "critic" / "hhalign_export.json").read_text())["role"] == "critic"
    for key in critic:  # the export is the checkpoint's critic, gathered whole
        assert critic[key].shape == checkpoint["state_dict"][f"critic.{key}"].shape

    resumed = fit("resumed", "--ckpt_path", str(run / "checkpoints" / "epoch=0-step=2.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    again = train_rows(tmp_path / "tiny" / "resumed")
    for step in (2, 3):
        for name in ("train/loss", "train/reward", "train/value_loss", "train/kl_k1", "train/grad_norm"):
            assert float(again[step][name]) == pytest.approx(float(rows[step][name]), abs=1e-6), (step, name)
