"""Losses against hand computations and the properties every DPO loss must have."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from hhalign.losses.preference import PREFERENCE_LOSSES
from hhalign.losses.reward import bradley_terry_loss
from tests.oracles import dpo_loss, sequence_logps


def _reference_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The plain computation: full log-softmax, shift by one, mask, sum."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)[:, :-1]
    picked = logprobs.gather(-1, labels[:, 1:, None]).squeeze(-1)
    return (picked * mask[:, 1:]).sum(-1)


def test_sequence_logps_matches_log_softmax_on_perturbed_logits():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11) * 3 + torch.randn(11)  # far from uniform
    labels = torch.randint(0, 11, (3, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]])
    logp, n = sequence_logps(logits, labels, mask)
    assert_close(logp, _reference_logps(logits, labels, mask).float(), rtol=1e-6, atol=1e-5)
    assert n.tolist() == [3, 6, 2]


def test_sequence_logps_uses_logits_of_the_previous_position():
    """A one-hot logit at position t must raise the log-prob of label t + 1, not label t."""
    vocab = 5
    logits = torch.zeros(1, 3, vocab)
    labels = torch.tensor([[1, 2, 3]])
    logits[0, 0, 2] = 100.0  # predicts labels[1] == 2 with certainty
    mask = torch.tensor([[0, 1, 0]])
    logp, _ = sequence_logps(logits, labels, mask)
    assert logp.item() == pytest.approx(0.0, abs=1e-6)


def test_uniform_logits_give_minus_log_vocab_per_token():
    vocab = 13
    logits = torch.zeros(2, 6, vocab)
    labels = torch.randint(0, vocab, (2, 6))
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]])
    logp, n = sequence_logps(logits, labels, mask)
    assert_close(logp, -n.float() * math.log(vocab))


def test_sequence_logps_upcasts_bf16_and_keeps_float64():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 9)
    labels = torch.randint(0, 9, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    low, _ = sequence_logps(logits.bfloat16(), labels, mask)
    assert low.dtype == torch.float32
    assert_close(low, _reference_logps(logits.bfloat16().float(), labels, mask).float(), rtol=1e-5, atol=1e-4)
    high, _ = sequence_logps(logits.double(), labels, mask)
    assert high.dtype == torch.float64
    assert_close(high, _reference_logps(logits, labels, mask), rtol=1e-12, atol=1e-12)


def test_sequence_logps_gradient_reaches_only_scored_positions():
    logits = torch.randn(1, 4, 6, requires_grad=True)
    labels = torch.tensor([[0, 1, 2, 3]])
    mask = torch.tensor([[0, 0, 1, 0]])  # scores labels[2] from logits[1]
    sequence_logps(logits, labels, mask)[0].sum().backward()
    touched = logits.grad.abs().sum(-1)[0]
    assert touched[1] > 0 and touched[0] == 0 and touched[2] == 0 and touched[3] == 0


def test_sigmoid_dpo_loss_by_hand():
    """h = (-1 - -2) - (-3 - -2) = 2; loss = -log σ(0.5 · 2) = log(1 + e^-1) = 0.3132617;
    rewards = 0.5 · (policy - ref) = +0.5 and -0.5."""
    losses, chosen, rejected = dpo_loss(
        torch.tensor([-1.0]),
        torch.tensor([-3.0]),
        torch.tensor([-2.0]),
        torch.tensor([-2.0]),
        beta=0.5,
        loss_type="sigmoid",
    )
    assert_close(losses, torch.tensor([math.log1p(math.exp(-1))]))
    assert_close(chosen, torch.tensor([0.5]))
    assert_close(rejected, torch.tensor([-0.5]))


def test_ipo_loss_by_hand():
    """With per-token averages giving h = 2: β = 0.5 → (2 - 1)² = 1; β = 0.1 → (2 - 5)² = 9."""
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    assert_close(dpo_loss(*args, beta=0.5, loss_type="ipo")[0], torch.tensor([1.0]))
    assert_close(dpo_loss(*args, beta=0.1, loss_type="ipo")[0], torch.tensor([9.0]))


LN2 = math.log(2)
AT_REFERENCE = {  # every loss with policy == reference (h = 0, log-ratios 0), β = 0.1, ε = 0
    "sigmoid": LN2,
    "robust": LN2,
    "hinge": 1.0,
    "ipo": 25.0,  # (0 − 1/(2·0.1))²
    "exo_pair": 0.5 * (-LN2 - math.log(0.999)) + 0.5 * (-LN2 - math.log(0.001)),  # ε defaults to 1e-3
    "nca_pair": 2 * LN2,
    "bco_pair": 2 * LN2,
    "sppo_hard": 50.0,  # 2 · (0.5/0.1)²
    "aot": LN2,
    "apo_zero": 1.0,
    "apo_down": 1.0,
    "discopop": 0.5 * LN2 + 0.5,  # modulation σ(0) = ½ between log 2 and e⁰
}


def test_every_reference_loss_has_a_value_at_the_reference():
    from hhalign.losses.preference import needs_reference

    assert {n for n in PREFERENCE_LOSSES if needs_reference(n)} == set(AT_REFERENCE)


@pytest.mark.parametrize("loss_type", sorted(AT_REFERENCE))
def test_policy_equal_to_reference(loss_type: str):
    logps = torch.tensor([-12.0, -3.5, -40.0])
    other = torch.tensor([-10.0, -7.0, -38.0])
    losses, chosen, rejected = dpo_loss(logps, other, logps, other, beta=0.1, loss_type=loss_type)
    assert_close(losses, torch.full((3,), AT_REFERENCE[loss_type]))
    assert torch.equal(chosen, torch.zeros(3)) and torch.equal(rejected, torch.zeros(3))


def _sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _nls(z: float) -> float:
    """−log σ(z)"""
    return math.log1p(math.exp(-z))


# One pair: policy chosen −1, rejected −3; reference −2 and −2: log-ratios +1 and −1, h = 2.
# Two chosen tokens, four rejected tokens (for the per-token-averaged losses).
HAND = [
    ("sigmoid", {"beta": 0.5, "label_smoothing": 0.1}, 0.9 * _nls(1) + 0.1 * _nls(-1)),
    ("robust", {"beta": 0.5, "label_smoothing": 0.1}, (0.9 * _nls(1) - 0.1 * _nls(-1)) / 0.8),
    ("hinge", {"beta": 0.25}, 0.5),  # max(0, 1 − 0.25·2)
    ("ipo", {"beta": 0.5}, 0.0625),  # averages 1/2 and −1/4: h = 0.75, (0.75 − 1)²
    (
        "exo_pair",
        {"beta": 0.5, "label_smoothing": 0.1},
        _sig(1) * (-_nls(1) - math.log(0.9)) + _sig(-1) * (-_nls(-1) - math.log(0.1)),
    ),
    ("nca_pair", {"beta": 0.5}, _nls(0.5) + 0.5 * _nls(-0.5) + 0.5 * _nls(0.5)),  # r_c = 0.5, r_r = −0.5
    ("bco_pair", {"beta": 0.5, "bco_delta": 0.2}, _nls(0.3) + _nls(0.7)),  # −log σ(0.5 − 0.2) − log σ(0.5 + 0.2)
    ("sppo_hard", {"beta": 0.25}, 2.0),  # (1 − 2)² + (−1 + 2)²
    ("apo_zero", {"beta": 0.5}, 1 - _sig(0.5) + _sig(-0.5)),
    ("apo_down", {"beta": 0.5}, _sig(0.5) + 1 - _sig(1)),
    ("discopop", {"beta": 0.5, "discopop_tau": 0.05}, (1 - _sig(20)) * _nls(1) + _sig(20) * math.exp(-1)),
    ("simpo", {"beta": 2.0, "simpo_gamma": 0.2}, _nls(0.3)),  # means −1/2, −3/4: 2·0.25 − 0.2 = 0.3
]


@pytest.mark.parametrize(("loss_type", "options", "expected"), HAND, ids=[h[0] for h in HAND])
def test_each_loss_by_hand(loss_type: str, options: dict, expected: float):
    from hhalign.losses.preference import LossOptions, PairLogps, preference_losses

    x = PairLogps(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
        torch.tensor([2]), torch.tensor([4]),
    )  # fmt: skip
    losses, _, _ = preference_losses(x, LossOptions(**options), loss_type)
    assert_close(losses, torch.tensor([expected]), rtol=1e-6, atol=1e-7)


def test_aot_matches_sorted_margins_not_pairs():
    """Policy margins [2, −1], reference margins [0, 4]: sorted [−1, 2] against [0, 4], deltas [−1, −2]."""
    losses, _, _ = dpo_loss(
        torch.tensor([-1.0, -5.0]), torch.tensor([-3.0, -4.0]), torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -6.0]),
        beta=0.5, loss_type="aot",
    )  # fmt: skip
    assert_close(losses, torch.tensor([_nls(-0.5), _nls(-1.0)]))


def test_simpo_needs_no_reference_and_rewards_are_scaled_means():
    from hhalign.losses.preference import LossOptions, PairLogps, preference_losses

    counts = {"chosen_tokens": torch.tensor([2]), "rejected_tokens": torch.tensor([4])}
    x = PairLogps(torch.tensor([-1.0]), torch.tensor([-3.0]), **counts)
    _, chosen, rejected = preference_losses(x, LossOptions(beta=2.0), "simpo")
    assert_close(chosen, torch.tensor([-1.0]))
    assert_close(rejected, torch.tensor([-1.5]))


def test_sft_term_is_each_pairs_chosen_token_mean_and_combines_with_weights():
    """Chosen sums −4 and −2 over 2 tokens each: NLL per token 2 and 1, pair by pair; [sigmoid, sft] with
    weights [1, 0.5] adds 1.0 and 0.5 to the pairs' sigmoid losses (ln 2, policy = reference)."""
    from hhalign.losses.preference import LossOptions, PairLogps, preference_losses

    x = PairLogps(
        torch.tensor([-4.0, -2.0]), torch.tensor([-3.0, -3.0]), torch.tensor([-4.0, -2.0]), torch.tensor([-3.0, -3.0]),
        torch.tensor([2, 2]), torch.tensor([3, 3]),
    )  # fmt: skip
    losses, _, _ = preference_losses(x, LossOptions(beta=0.1), ["sigmoid", "sft"], [1.0, 0.5])
    assert_close(losses, torch.tensor([LN2 + 1.0, LN2 + 0.5]))


def test_orpo_by_hand():
    """Per-token means ā_c = ln 0.5 (2 tokens summing 2·ln 0.5) and ā_r = ln 0.25 (1 token): odds 1 and 1/3,
    log odds ratio ln 3; with λ = 0.2 the loss is −ln 0.5 − 0.2·log σ(ln 3) = ln 2 + 0.2·ln(4/3), since
    σ(ln 3) = 3/4. No reference is read; rewards are λ·ā, detached."""
    from hhalign.losses.preference import LossOptions, PairLogps, needs_reference, preference_losses

    x = PairLogps(
        torch.tensor([2 * math.log(0.5)], requires_grad=True), torch.tensor([math.log(0.25)]),
        chosen_tokens=torch.tensor([2]), rejected_tokens=torch.tensor([1]),
    )  # fmt: skip
    losses, chosen, rejected = preference_losses(x, LossOptions(beta=0.2), "orpo")
    assert_close(losses, torch.tensor([LN2 + 0.2 * math.log(4 / 3)]))
    assert_close(chosen, torch.tensor([0.2 * math.log(0.5)]))
    assert_close(rejected, torch.tensor([0.2 * math.log(0.25)]))
    assert not needs_reference("orpo") and not chosen.requires_grad
    losses.sum().backward()  # the NLL term pulls the chosen likelihood up: its gradient is negative
    assert x.policy_chosen.grad is not None and float(x.policy_chosen.grad) < 0


def test_orpo_log_odds_stay_finite_near_certainty():
    """A chosen response the policy is sure of (ā → 0⁻) has odds → ∞; the loss must stay finite there."""
    from hhalign.losses.preference import LossOptions, PairLogps, preference_losses

    x = PairLogps(
        torch.tensor([-1e-9, -1e-3]),
        torch.tensor([-5.0, -5.0]),
        chosen_tokens=torch.ones(2),
        rejected_tokens=torch.ones(2),
    )
    losses, _, _ = preference_losses(x, LossOptions(beta=0.1), "orpo")
    assert torch.isfinite(losses).all() and (losses >= 0).all()


def test_swapping_chosen_and_rejected_flips_the_margin():
    pc, pr, rc, rr = torch.tensor([-4.0, -9.0]), torch.tensor([-6.0, -8.0]), torch.tensor([-5.0]), torch.tensor([-7.0])
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.2)
    loss_swapped, chosen_s, rejected_s = dpo_loss(pr, pc, rr, rc, beta=0.2)
    assert_close(chosen - rejected, -(chosen_s - rejected_s))
    # -log σ(x) - -log σ(-x) = -x, so the two losses differ by exactly the margin
    assert_close(loss - loss_swapped, -(chosen - rejected))


def test_rewards_are_detached():
    policy = torch.tensor([-1.0, -2.0], requires_grad=True)
    losses, chosen, _ = dpo_loss(policy[:1], policy[1:], torch.tensor([-1.0]), torch.tensor([-1.0]), beta=0.1)
    assert losses.requires_grad and not chosen.requires_grad


def test_bradley_terry_by_hand():
    """-log σ(1 - 0) = log(1 + e^-1); -log σ(0) = log 2; -log σ(-2) = log(1 + e^2)."""
    losses = bradley_terry_loss(torch.tensor([1.0, 3.0, 0.0]), torch.tensor([0.0, 3.0, 2.0]))
    assert_close(losses, torch.tensor([math.log1p(math.exp(-1)), math.log(2), math.log1p(math.exp(2))]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"beta": 0.1, "loss_type": "kto"}, "unknown loss_type 'kto'; choose one of sigmoid, robust, hinge, ipo"),
        ({"beta": 0.1, "loss_type": "sft"}, "loss_type needs a preference loss"),
        ({"beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.5}, "label_smoothing must be in"),
        ({"beta": 0.0, "loss_type": "sigmoid"}, "beta must be > 0"),
        ({"beta": -1.0, "loss_type": "ipo"}, "beta must be > 0"),
    ],
)
def test_bad_options_raise_value_error_naming_valid_values(options: dict, message: str):
    from hhalign.losses.preference import check_preference_options

    with pytest.raises(ValueError, match=message):
        check_preference_options(**options)


def test_loss_type_choices_match_the_loss_table():
    from typing import get_args

    from hhalign.losses.preference import LossType

    assert sorted(get_args(LossType)) == sorted(PREFERENCE_LOSSES)


def test_bradley_terry_with_margins_and_centering_by_hand():
    """r_c = 2, r_r = 1, margin 0.5: −log σ(0.5); centering 0.1 adds 0.1·(2 + 1)² = 0.9."""
    chosen, rejected = torch.tensor([2.0]), torch.tensor([1.0])
    assert_close(bradley_terry_loss(chosen, rejected, torch.tensor([0.5])), torch.tensor([math.log1p(math.exp(-0.5))]))
    assert_close(
        bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.1),
        torch.tensor([math.log1p(math.exp(-1.0)) + 0.9]),
    )
