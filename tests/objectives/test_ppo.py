"""PPOModule through the real CLI: the critic starts from the reward model's export, is trained, checkpointed
(one optimizer, a parameter group each) and exported beside the policy; the reward model's scores reach the
reward on its validation scale; the trainer options an online step cannot honour are refused in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from hhalign.errors import ConfigError
from tests.conftest import fit_tiny, write_jsonl


@pytest.fixture
def scored_judge(tmp_path: Path, tiny_judge: Path) -> Path:
    """``tiny_judge`` with the validation statistics an hhalign reward-model export records."""
    import shutil

    out = tmp_path / "rm"
    shutil.copytree(tiny_judge, out)
    info = json.loads((out / "hhalign_export.json").read_text())
    info["reward_stats"] = {"mean": 0.25, "std": 0.5, "count": 100}
    (out / "hhalign_export.json").write_text(json.dumps(info))
    return out


def test_reward_model_scores_are_normalized_by_its_stats_and_clipped(tiny_dir, scored_judge, tokenizer):
    from hhalign.rewards.model import RewardModel
    from hhalign.rewards.terms import Rewards

    model = RewardModel.load(str(scored_judge))
    assert model.stats["std"] == 0.5
    prompts = [tokenizer.encode("\n\nHuman: hi\n\nAssistant:")]
    groups = [[type("C", (), {"tokens": tokenizer.encode(w), "finished": True, "ended": lambda s, e: s.tokens})()
               for w in (" yes", " no thanks")]]  # fmt: skip
    raw = model.score_groups(prompts, [[c.tokens for c in groups[0]]])
    normalized, terms = Rewards(model).score(prompts, groups, tokenizer.eos_token_id, tokenizer.decode)
    torch.testing.assert_close(normalized, (raw - 0.25) / 0.5)
    torch.testing.assert_close(terms["model"], (raw - 0.25) / 0.5)
    as_is, _ = Rewards(model, normalize=False).score(prompts, groups, tokenizer.eos_token_id, tokenizer.decode)
    torch.testing.assert_close(as_is, raw)
    clipped, _ = Rewards(model, clip=1e-3).score(prompts, groups, tokenizer.eos_token_id, tokenizer.decode)
    assert clipped.abs().max().item() == pytest.approx(1e-3)


@pytest.mark.slow
def test_ppo_trains_checkpoints_and_exports_its_critic(tmp_path, tiny_dir, scored_judge):
    """Two rollouts of 4 prompts, each 2 minibatches (global step 4): the critic moved from the reward model's
    weights, the checkpoint holds it and both parameter groups' optimizer state, the export holds it beside the
    policy as a reward-model folder, and the log has the critic's numbers."""
    from hhalign.models.loading import load_model

    data = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"\n\nHuman: say {w}\n\nAssistant:"} for w in "abcdefghij"]
    )
    run = fit_tiny(
        tmp_path, tiny_dir, data, "configs/tiny/ppo.yaml", "--model.reward_model", str(scored_judge),
        "--model.max_completion_length", "6", "--data.batch_size", "4", "--data.valid_fraction", "0.2",
        "--model.num_minibatches", "2", "--model.optimizer.init_args.lr", "1e-3", steps=4, val_every=2,
    )  # fmt: skip
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert [len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"]][1] > 0
    assert ckpt["optimizer_states"][0]["param_groups"][1]["lr"] == pytest.approx(1e-4)  # critic_lr
    critic = {k.removeprefix("critic."): v for k, v in ckpt["state_dict"].items() if k.startswith("critic.")}
    start = load_model(str(scored_judge), head="reward").state_dict()
    assert critic.keys() == start.keys()
    assert any(not torch.equal(critic[k], start[k]) for k in critic)  # trained
    exported = load_model(str(run / "export" / "critic"), head="reward").state_dict()
    assert all(torch.equal(exported[k], critic[k]) for k in critic)
    assert json.loads((run / "export" / "critic" / "hhalign_export.json").read_text())["role"] == "critic"
    assert (run / "export" / "model.safetensors").is_file()
    with (run / "metrics.csv").open() as handle:
        train = [r for r in csv.DictReader(handle) if r.get("train/loss")]
    assert [int(r["step"]) for r in train] == [1, 3]
    for name in ("value_loss", "policy_loss", "value", "advantage_std", "critic_grad_norm", "grad_norm"):
        assert all(r[f"train/{name}"] != "" for r in train), name


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"accumulate_grad_batches": 2}, "--model.num_minibatches"),
        ({"gradient_clip_val": 1.0}, "--model.max_grad_norm"),
    ],
)
def test_trainer_options_an_online_step_cannot_honour_are_refused_naming_the_model_option(option, message):
    from hhalign.objectives.ppo import PPOModule
    from hhalign.training.sharding import check_placement

    with pytest.raises(ConfigError, match=message):
        check_placement({"accelerator": "cpu", **option}, PPOModule, {}, "fit")


@pytest.mark.slow
def test_critic_warmup_trains_the_critic_alone_and_a_max_steps_between_rollouts_is_refused(tmp_path, tiny_dir):
    """Two warm-up steps: the checkpoint's policy is the starting model's, bit for bit, while its critic moved.
    ``max_steps`` that ends inside a rollout is refused naming a multiple."""
    from hhalign.cli import main
    from hhalign.models.loading import load_model
    from tests.conftest import tiny_fit_args

    data = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"\n\nHuman: say {w}\n\nAssistant:"} for w in "abcdefgh"]
    )
    options = (
        "--model.reward_model", "null", "--model.reward_functions", "[tests.online_rewards:count_of_e]",
        "--model.max_completion_length", "4", "--data.batch_size", "2", "--data.valid_fraction", "0.25",
    )  # fmt: skip
    run = fit_tiny(tmp_path, tiny_dir, data, "configs/tiny/ppo.yaml", *options, "--model.critic_warmup_steps", "2",
                   steps=2, val_every=2)  # fmt: skip
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    start = load_model(str(tiny_dir)).state_dict()
    assert all(torch.equal(state[f"policy.{k}"], v) for k, v in start.items())
    critic_start = load_model(str(tiny_dir), head="reward").state_dict()
    backbone = [k for k in critic_start if not k.startswith("score")]  # the head starts fresh at every load
    assert any(not torch.equal(state[f"critic.{k}"], critic_start[k]) for k in backbone)
    args = tiny_fit_args(tmp_path, tiny_dir, data, "configs/tiny/ppo.yaml", *options, "--model.num_minibatches", "2",
                         steps=3, val_every=1, trial="odd")  # fmt: skip
    with pytest.raises(SystemExit, match="--trainer.max_steps 3 counts optimizer steps.*e.g. 4"):
        main(args)
