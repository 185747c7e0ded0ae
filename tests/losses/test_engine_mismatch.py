"""The engine–trainer gap and truncated importance weights, against values worked by hand."""

import math

import torch

from hhalign.losses.engine_mismatch import engine_gap, truncated_importance_weights

# two completions: 3 real tokens, then 2 (the third column padding)
TRAINER = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -4.0, 0.0]])
ENGINE = torch.tensor([[-1.1, -1.0, -0.5], [-0.3, -5.0, -9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_gap_is_the_mean_absolute_token_difference_and_the_sequence_k1():
    gap = engine_gap(TRAINER, ENGINE, MASK)
    # |diff| on real tokens: 0.1, 1.0, 0.0, 0.0, 1.0 -> 2.1 over 5 tokens
    assert math.isclose(gap["logp_gap"].item(), 2.1 / 5, rel_tol=1e-6)
    # engine - trainer summed per completion: (-0.1 + 1.0 + 0) and (0 - 1.0); the padding's -9 is not counted
    torch.testing.assert_close(gap["kl"], torch.tensor([0.9, -1.0]))


def test_token_weights_are_the_ratio_truncated_at_the_cap_and_zero_on_padding():
    weights = truncated_importance_weights(TRAINER, ENGINE, MASK, cap=2.0)
    expected = torch.tensor(
        [[math.exp(0.1), min(math.exp(-1.0), 2.0), 1.0], [1.0, min(math.exp(1.0), 2.0), 0.0]]
    )  # trainer - engine: 0.1, -1.0, 0 | 0, 1.0 (e^1 = 2.718 capped at 2)
    torch.testing.assert_close(weights, expected)
    assert not weights.requires_grad


def test_sequence_weights_use_the_whole_completions_ratio():
    weights = truncated_importance_weights(TRAINER, ENGINE, MASK, cap=3.0, level="sequence")
    # trainer - engine summed: 0.1 - 1.0 = -0.9 and 0 + 1.0 = 1.0 (e^1 = 2.718 under the cap of 3)
    torch.testing.assert_close(weights, torch.tensor([math.exp(-0.9), math.exp(1.0)]))
    capped = truncated_importance_weights(TRAINER, ENGINE, MASK, cap=1.5, level="sequence")
    torch.testing.assert_close(capped, torch.tensor([math.exp(-0.9), 1.5]))


def test_an_engine_that_agrees_with_the_trainer_changes_nothing():
    assert engine_gap(TRAINER, TRAINER, MASK)["logp_gap"].item() == 0.0
    torch.testing.assert_close(truncated_importance_weights(TRAINER, TRAINER, MASK, 2.0), MASK.float())
