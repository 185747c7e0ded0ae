"""Every online objective learns a reward its policy controls, at its shipped defaults, through its real training
step (one rollout per step, Lightning's manual optimization): the share of the letter e in four-token
completions, measured on held-out prompts before and after, from the same seeds."""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from hhalign.data.batches import collate_prompts

TOPICS = ["cats", "dogs", "rain", "tea", "maps", "jazz", "bread", "stars"]


def _held_out_rewards(module, prompts: list[list[int]]) -> torch.Tensor:
    """Four samples of each held-out prompt from one fixed seed: their rewards, ``(4·P,)``."""
    module.eval()
    with torch.no_grad():
        rewards = module.rollout(prompts, 4, seed=12345).rewards.flatten()
    module.train()
    return rewards


@pytest.mark.slow
@pytest.mark.parametrize(
    ("objective", "reward", "prompts_per_step"),
    [
        ("RLOOModule", "count_of_e", 16),
        ("GRPOModule", "count_of_e", 4),
        ("OnlineDPOModule", "count_of_e", 16),
        ("PPOModule", "count_of_e", 32),
    ],
)
def test_each_online_objective_learns_a_toy_reward_at_its_defaults(tiny_dir, tokenizer, objective, reward,
                                                                    prompts_per_step):  # fmt: skip
    """30 optimizer steps at lr 3e-3 (the tiny model's scale; every other option the class default): the held-out
    reward must rise by more than 5 standard errors of the difference; the reference must not move."""
    import hhalign

    texts = [f"\n\nHuman: tell me about {t} number {i}\n\nAssistant:" for i in range(12) for t in TOPICS]
    prompts = [tokenizer.encode(t) for t in texts]
    train, held_out = prompts[:64], prompts[64:]
    module = getattr(hhalign, objective)(
        str(tiny_dir), reward_functions=[f"tests.online_rewards:{reward}"], max_completion_length=4,
        optimizer=partial(torch.optim.AdamW, lr=3e-3), lr_schedule="constant", log_samples_every_n_steps=0,
    )  # fmt: skip
    module.configure_model()
    reference = None if module.ref is None else {k: v.clone() for k, v in module.ref.state_dict().items()}
    loader = DataLoader(
        [SimpleNamespace(prompt=p) for p in train], batch_size=prompts_per_step, shuffle=True,
        collate_fn=partial(collate_prompts, pad_token_id=tokenizer.pad_token_id),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    before = _held_out_rewards(module, held_out)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=30, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, loader)
    after = _held_out_rewards(module, held_out)
    standard_error = math.sqrt(before.var() / len(before) + after.var() / len(after))
    rise = (after.mean() - before.mean()).item()
    print(f"{objective}: held-out reward {before.mean():.3f} -> {after.mean():.3f} ({rise / standard_error:.1f} SE)")
    assert rise > 5 * standard_error, (objective, before.mean().item(), after.mean().item(), standard_error)
    if reference is not None:
        assert all(torch.equal(reference[k], v) for k, v in module.ref.state_dict().items())
        assert not module.ref.training and not any(p.requires_grad for p in module.ref.parameters())
