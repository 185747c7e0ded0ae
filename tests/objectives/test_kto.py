"""KTO: the loss and its reference point by hand, the unpaired batch, step 0, and training by its effect."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from hhalign.data.batches import collate_unpaired
from hhalign.data.examples import ExampleSettings, TokenizedCompletion, UnpairedExamples
from hhalign.data.pairs import PairTokenizer
from hhalign.data.records import Record
from hhalign.losses.kto import kto_loss, kto_reference_point
from tests.conftest import fit_tiny, shipped_records

EXAMPLES = [TokenizedCompletion([5, 6], [7, 1], True), TokenizedCompletion([5], [4, 4, 1], False)]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_loss_by_hand():
    """r = (1, −1), z₀ = 0.5, β = 0.5, λ_D = 1, λ_U = 2: the desirable completion loses 1 − σ(0.5·(1 − 0.5)),
    the undesirable one 2 − 2·σ(0.5·(0.5 + 1)); rewards are β·r."""
    losses, rewards = kto_loss(torch.tensor([1.0, -1.0]), torch.tensor([True, False]), torch.tensor(0.5), 0.5, 1.0, 2.0)
    assert_close(losses, torch.tensor([1 - sigmoid(0.25), 2 - 2 * sigmoid(0.75)]))
    assert_close(rewards, torch.tensor([0.5, -0.5]))
    assert not rewards.requires_grad


def test_reference_point_is_the_clamped_detached_mean_of_mismatched_log_ratios():
    ratios = torch.tensor([0.2, 1.0], requires_grad=True)
    assert_close(kto_reference_point(ratios), torch.tensor(0.6))
    assert not kto_reference_point(ratios).requires_grad
    assert float(kto_reference_point(torch.tensor([-1.0, -2.0]))) == 0.0  # a KL estimate is never below 0


def test_unpaired_collator_exact_tensors_with_pad_equal_to_eos():
    batch = collate_unpaired(EXAMPLES, pad_token_id=1)
    assert batch.completions.input_ids.tolist() == [[5, 6, 7, 1], [5, 4, 4, 1]]
    assert batch.completions.loss_mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    # each prompt before the next example's completion (the last wraps to the first), right-padded
    assert batch.mismatched.input_ids.tolist() == [[5, 6, 4, 4, 1], [5, 7, 1, 1, 1]]
    assert batch.mismatched.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch.mismatched.loss_mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert batch.desirable.tolist() == [True, False] and batch.n_examples == 2 and batch.real_tokens == 8


def test_pairs_split_into_a_desirable_and_an_undesirable_completion(tokenizer):
    records = [Record(r["chosen"], r["rejected"], None, str(i)) for i, r in enumerate(shipped_records(6))]
    pairs = PairTokenizer(tokenizer, 256)(records)
    completions = UnpairedExamples(ExampleSettings(256)).tokenizer(tokenizer, None)(records)
    assert len(completions) == 2 * len(pairs)
    for pair, good, bad in zip(pairs, completions[::2], completions[1::2], strict=True):
        assert (good.prompt, good.completion, good.desirable) == (pair.prompt, pair.chosen, True)
        assert (bad.prompt, bad.completion, bad.desirable) == (pair.prompt, pair.rejected, False)


def _batch(tokenizer, n: int = 8):
    records = [Record(r["chosen"], r["rejected"], None, str(i)) for i, r in enumerate(shipped_records(n))]
    examples = UnpairedExamples(ExampleSettings(128, 64)).tokenizer(tokenizer, None)(records)
    return collate_unpaired(examples[:n], tokenizer.pad_token_id)


def test_step_zero_reads_half_of_each_weight(tiny_dir: Path, tokenizer):
    """Policy = reference: every log-ratio and z₀ are 0, so each loss is λ − λ·σ(0) = λ/2."""
    from hhalign.objectives import KTOModule

    module = KTOModule(str(tiny_dir), desirable_weight=1.0, undesirable_weight=2.0)
    module.configure_model()
    batch = _batch(tokenizer)
    with torch.no_grad():
        out = module.step_outputs(batch)
    expected = torch.where(batch.desirable, 0.5, 1.0)
    assert_close(out.metrics["loss"][0], expected)
    assert float(out.metrics["kl"][0][0]) == 0.0


def test_training_raises_desirable_rewards_above_undesirable(tiny_dir: Path, tokenizer):
    """Ten AdamW steps on one batch: the loss falls, desirable completions gain reward over undesirable ones,
    every policy tensor moves and the reference stays bit-identical."""
    from hhalign.objectives import KTOModule

    torch.manual_seed(0)
    module = KTOModule(str(tiny_dir), beta=0.5)
    module.configure_model()
    batch = _batch(tokenizer)
    reference = {k: v.clone() for k, v in module.ref.state_dict().items()}
    start = {k: v.clone() for k, v in module.policy.state_dict().items()}
    optimizer = torch.optim.AdamW(module.policy.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        out = module.step_outputs(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.detach().item())
    with torch.no_grad():
        rewards = module.step_outputs(batch).metrics["desirable_reward"][0]
    good, bad = rewards[batch.desirable].mean(), rewards[~batch.desirable].mean()
    assert losses[-1] < losses[0] - 0.05 and good > bad
    assert all(not torch.equal(start[k], v) for k, v in module.policy.state_dict().items())
    assert all(torch.equal(reference[k], v) for k, v in module.ref.state_dict().items())
    assert not module.ref.training and not any(p.requires_grad for p in module.ref.parameters())


@pytest.mark.slow
def test_kto_fit_end_to_end(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    run_dir = fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/kto.yaml", steps=3, val_every=3)
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    train = [r for r in rows if r.get("train/loss")]
    assert len(train) == 3 and float(train[0]["train/loss"]) == pytest.approx(0.5, abs=1e-6)  # step 0: λ/2
    assert all(r.get("train/kl") for r in train) and any(r.get("val/loss") for r in rows)
    assert (run_dir / "export" / "model.safetensors").is_file() and (run_dir / "curves.png").is_file()
    assert list((run_dir / "checkpoints").glob("best-step=*.ckpt"))  # BestCheckpoint by val/loss
