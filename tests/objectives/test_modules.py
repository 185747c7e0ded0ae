"""The modules on the tiny model: reward position, frozen reference, and learning."""

from __future__ import annotations

import math
import random
from functools import partial
from pathlib import Path

import pytest
import torch

from hhalign.data.batches import collate_packed_pairs, collate_pairs
from hhalign.data.pairs import PairTokenizer
from hhalign.data.records import Record
from hhalign.objectives import DPOModule, RewardModule
from tests.conftest import shipped_records


def _batch(tokenizer, n: int = 4, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """``n`` short real pairs whose responses both ended (EOS kept)."""
    records = [Record(r["chosen"], r["rejected"], None, "t") for r in shipped_records(80)]
    pairs = PairTokenizer(tokenizer, max_length=128, max_response_length=64)(records)
    eos = tokenizer.eos_token_id
    pairs = [p for p in pairs if p.chosen[-1] == eos and p.rejected[-1] == eos][:n]
    return collate_pairs(pairs, tokenizer.pad_token_id, padding_side)


def test_tiny_tokenizer_pads_with_its_eos(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_reward_is_read_at_the_eos_for_either_padding_side(tiny_dir: Path, tokenizer):
    module = RewardModule(str(tiny_dir))
    module.configure_model()
    module.eval()
    right = _batch(tokenizer, padding_side="right")
    left = _batch(tokenizer, padding_side="left")
    with torch.no_grad():
        r_right = module.rewards(right.input_ids, right.attention_mask)
        r_left = module.rewards(left.input_ids, left.attention_mask)
        # each row alone, unpadded: the reward of its final token, the EOS
        alone = []
        for row, mask in zip(right.input_ids, right.attention_mask, strict=True):
            ids = row[mask.bool()][None]
            assert ids[0, -1] == tokenizer.eos_token_id
            alone.append(module.rewards(ids, torch.ones_like(ids)))
    torch.testing.assert_close(r_right, torch.cat(alone), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(r_left, r_right, rtol=1e-4, atol=1e-4)
    # the library's own pooling looks for pad == EOS and lands elsewhere: the reason we do not use it
    with torch.no_grad():
        library = module.model(input_ids=right.input_ids, attention_mask=right.attention_mask).logits[:, 0]
    assert not torch.allclose(library, r_right, atol=1e-4)


def test_dpo_reference_is_frozen_and_outside_the_optimizer(tiny_dir: Path):
    module = DPOModule(str(tiny_dir))
    module.configure_model()
    module.train()
    assert module.policy.training and not module.ref.training
    assert not any(p.requires_grad for p in module.ref.parameters())
    assert all(p.requires_grad for p in module.policy.parameters())
    assert {id(p) for p in module.trainable_module().parameters()}.isdisjoint(id(p) for p in module.ref.parameters())
    assert all(m.p == 0 for m in module.policy.modules() if isinstance(m, torch.nn.Dropout))


def test_dpo_step_zero_is_ln2_with_tied_rewards(tiny_dir: Path, tokenizer):
    module = DPOModule(str(tiny_dir), beta=0.1)
    module.configure_model()
    module.train()
    out = module.pair_outputs(_batch(tokenizer))
    torch.testing.assert_close(out.losses, torch.full_like(out.losses, math.log(2)))
    values = out.metric_values()
    assert values["reward_accuracy"].sum() == 0 and values["tie_rate"].mean() == 1


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_training_moves_policy_only_and_loss_falls(tiny_dir: Path, tokenizer, loss_type: str):
    torch.manual_seed(0)
    module = DPOModule(str(tiny_dir), beta=0.1, loss_type=loss_type)
    module.configure_model()
    module.train()
    batch = _batch(tokenizer)
    policy_before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    ref_before = {k: v.clone() for k, v in module.ref.state_dict().items()}
    optimizer = torch.optim.AdamW(module.trainable_module().parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = module.pair_outputs(batch).losses.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    for key, value in module.policy.state_dict().items():
        assert not torch.equal(value, policy_before[key]), f"policy tensor {key} did not change"
    for key, value in module.ref.state_dict().items():
        assert torch.equal(value, ref_before[key]), f"reference tensor {key} changed"
    assert not module.ref.training


@pytest.mark.slow
def test_dpo_ranks_unseen_pairs_when_the_data_carry_a_learnable_preference(tiny_dir: Path, tokenizer):
    """Real prompts; chosen replies drawn from kind words, rejected ones from rude words, lengths random.
    DPO must rank held-out pairs it never saw, with the chosen reward up and the rejected one down:
    the mechanics generalize when the data let a model this small generalize."""
    rng = random.Random(0)
    kind = ["thank", "glad", "happy", "sure", "welcome", "great"]
    rude = ["stupid", "never", "hate", "awful", "ugly", "boring"]

    def reply(words: list[str]) -> str:
        return " " + " ".join(rng.choice(words) for _ in range(rng.randint(4, 8))) + "."

    marker = "\n\nAssistant:"
    prompts = [r["chosen"][: r["chosen"].rindex(marker) + len(marker)] for r in shipped_records(120)]
    records = [Record(p + reply(kind), p + reply(rude), None, "t") for p in prompts]
    pairs = PairTokenizer(tokenizer, max_length=96)(records)
    train, held_out = pairs[:80], pairs[80:]
    assert len(held_out) == 40
    # no length shortcut: the chosen reply is the longer one in at most 60% of the held-out pairs
    assert sum(len(p.chosen) > len(p.rejected) for p in held_out) <= 24
    collate = partial(collate_pairs, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    module = DPOModule(str(tiny_dir), beta=0.1)
    module.configure_model()
    module.train()
    optimizer = torch.optim.AdamW(module.trainable_module().parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = module.pair_outputs(collate(rng.sample(train, 8))).losses.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4) and max(losses[-5:]) < 0.3
    module.eval()
    with torch.no_grad():
        held = module.pair_outputs(collate(held_out)).metric_values()
    assert held["reward_accuracy"].mean() >= 0.9
    assert held["chosen_reward"].mean() > 0 > held["rejected_reward"].mean()


def test_dpo_checkpoint_leaves_the_reference_out(tiny_dir: Path):
    module = DPOModule(str(tiny_dir))
    module.configure_model()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and not any(k.startswith("ref.") for k in checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=True)


@pytest.mark.slow
def test_reward_model_fits_a_small_fixed_set(tiny_dir: Path, tokenizer):
    """32 real pairs, a few epochs: the Bradley–Terry model must separate them (accuracy ≥ 0.9, loss < 0.3)."""
    torch.manual_seed(0)
    records = [Record(r["chosen"], r["rejected"], None, "t") for r in shipped_records(60)]
    pairs = PairTokenizer(tokenizer, max_length=128, max_response_length=64)(records)[:32]
    assert len(pairs) == 32
    collate = partial(collate_pairs, pad_token_id=tokenizer.pad_token_id)
    batches = [collate(pairs[i : i + 8]) for i in range(0, 32, 8)]
    module = RewardModule(str(tiny_dir))
    module.configure_model()
    module.train()
    optimizer = torch.optim.AdamW(module.trainable_module().parameters(), lr=1e-3)
    for _ in range(12):
        for batch in batches:
            loss = module.pair_outputs(batch).losses.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    module.eval()
    with torch.no_grad():
        outs = [module.pair_outputs(b) for b in batches]
    losses = torch.cat([o.losses for o in outs])
    accuracy = torch.cat([(o.chosen_rewards > o.rejected_rewards).float() for o in outs]).mean()
    assert accuracy >= 0.9 and losses.mean() < 0.3, (accuracy.item(), losses.mean().item())


def test_length_metrics_count_longer_and_score_the_chosen_shorter_pairs():
    """Pairs (chosen, rejected) lengths: (3, 2) longer, (2, 4) shorter, (2, 2) equal, (1, 5) shorter; the
    rewards rank pairs 0 and 1 right and 2 and 3 wrong. Longer-wins baseline 1/4; chosen shorter in 2/4;
    of those two, one (pair 1) is ranked right: 1/2. The same in both layouts."""

    from hhalign.data.pairs import TokenizedPair
    from hhalign.objectives.outputs import PairOutputs, length_metrics

    lengths = [(3, 2), (2, 4), (2, 2), (1, 5)]
    pairs = [TokenizedPair([9, 8], [7] * (c - 1) + [1], [6] * (r - 1) + [1]) for c, r in lengths]
    out = PairOutputs(torch.zeros(4), torch.tensor([1.0, 2.0, 0.0, -1.0]), torch.tensor([0.0, 1.0, 0.5, 0.0]))
    for batch in (collate_packed_pairs(pairs, 1), collate_pairs(pairs, 1)):
        metrics = length_metrics(out.step_outputs(), batch)
        assert metrics["length_baseline"][0].mean() == 0.25 and metrics["chosen_shorter_rate"][0].mean() == 0.5
        correct, weights = metrics["reward_accuracy_chosen_shorter"]
        assert (correct * weights).sum() / weights.sum() == 0.5
