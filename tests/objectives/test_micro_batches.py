"""An optimizer step taken in several passes (``micro_batch_size``) is the step taken in one: for every online
objective and loss reduction, one rollout trained by plain SGD moves every weight (policy and critic) as the
one-pass step does. SGD and no clipping, so that a pass weighted wrongly shows in the weights (AdamW's first step
would hide a wrong overall scale)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from hhalign.data.batches import collate_prompts

WORDS = ["cats", "a long question about the weather in spring", "tea", "maps of the old city", "jazz", "bread"]


def _train_one_rollout(tiny_dir, tokenizer, objective: str, micro_batch_size: int | None, **options):
    """The trained weights after one rollout of 6 prompts, and how many forward passes took a gradient."""
    import hhalign

    torch.manual_seed(0)  # the critic's fresh head
    module = getattr(hhalign, objective)(
        str(tiny_dir), reward_functions=["tests.online_rewards:count_of_e"], max_completion_length=5,
        optimizer=partial(torch.optim.SGD, lr=0.05), lr_schedule="constant", log_samples_every_n_steps=0,
        max_grad_norm=None, micro_batch_size=micro_batch_size, **options,
    )  # fmt: skip
    prompts = [SimpleNamespace(prompt=tokenizer.encode(f"\n\nHuman: {w}\n\nAssistant:")) for w in WORDS]
    loader = DataLoader(prompts, batch_size=6, collate_fn=partial(collate_prompts, pad_token_id=tokenizer.pad_token_id))
    passes = []
    forwards = module.forwards
    module.forwards = lambda batch: passes.append(torch.is_grad_enabled()) or forwards(batch)
    updates = options.get("num_iterations", 1) * options.get("num_minibatches", 1)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=updates, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    module.configure_model()
    start = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer.fit(module, loader)
    moved = {n: p.detach() - start[n] for n, p in module.named_parameters() if n in start}
    return moved, sum(passes)


@pytest.mark.parametrize(
    ("objective", "options", "passes"),
    [
        ("RLOOModule", {}, 3),  # loss_type sequence; one update: the one-pass step reuses its forward
        ("RLOOModule", {"loss_type": "bnpo", "num_minibatches": 2}, 4),
        ("GRPOModule", {"num_generations": 3, "num_iterations": 2}, 6),  # dapo, the ratio away from 1
        ("RLOOModule", {"loss_type": "dr_grpo"}, 3),
        ("PPOModule", {}, 3),  # dapo on the policy and the critic
        ("OnlineDPOModule", {}, 3),  # a mean over untied pairs
    ],
)
def test_a_step_in_passes_moves_the_weights_as_the_step_in_one(tiny_dir, tokenizer, objective, options, passes):
    whole, whole_passes = _train_one_rollout(tiny_dir, tokenizer, objective, None, **options)
    parts, parts_passes = _train_one_rollout(tiny_dir, tokenizer, objective, 2, **options)
    assert parts_passes == passes > whole_passes  # the rollout's 6 prompts in passes of 2 (minibatches of 3: 2+1)
    norm = torch.cat([d.flatten() for d in whole.values()]).norm()
    gap = torch.cat([(parts[n] - whole[n]).flatten() for n in whole]).norm()
    assert norm > 1e-3  # the step moved the weights
    assert gap / norm < 1e-4, (objective, options, (gap / norm).item())
    if objective == "PPOModule":
        assert any(n.startswith("critic.") and d.abs().max() > 0 for n, d in parts.items())
