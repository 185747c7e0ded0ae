"""The online objectives' math (hhalign/losses/policy_gradient.py): advantages and reductions by hand, the KL
estimators and their gradients against enumeration, and the policy-gradient estimator's unbiasedness on a
policy small enough to enumerate every completion."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from hhalign.errors import ConfigError
from hhalign.losses.policy_gradient import (
    advantages,
    clipped_surrogate,
    dr_grpo_advantages,
    grpo_advantages,
    k1,
    k3,
    penalized_rewards,
    reduce_token_losses,
    rloo_advantages,
    zero_advantage_share,
)

REWARDS = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])


def test_rloo_subtracts_the_mean_of_the_other_samples():
    """Row 1: the others' means are 11/3, 10/3, 9/3, 6/3, so A = (−8/3, −4/3, 0, 4); a tied row gives 0;
    K = 2 is r_i − r_j."""
    expected = torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rloo_advantages(REWARDS), expected)
    torch.testing.assert_close(rloo_advantages(torch.tensor([[0.0, 1.0], [2.0, 2.0]])),
                               torch.tensor([[-1.0, 1.0], [0.0, 0.0]]))  # fmt: skip


def test_grpo_divides_by_the_groups_unbiased_std_and_dr_grpo_does_not():
    """Row 1: mean 3, deviations (−2, −1, 0, 3), unbiased variance 14/3."""
    deviations = torch.tensor([-2.0, -1.0, 0.0, 3.0])
    std = math.sqrt(14 / 3)
    torch.testing.assert_close(grpo_advantages(REWARDS)[0], deviations / (std + 1e-4))
    torch.testing.assert_close(grpo_advantages(REWARDS)[1], torch.zeros(4))  # tied: 0, not 0/0
    torch.testing.assert_close(dr_grpo_advantages(REWARDS)[0], deviations)
    # RLOO is the group-mean advantage scaled by K/(K−1)
    torch.testing.assert_close(rloo_advantages(REWARDS), dr_grpo_advantages(REWARDS) * 4 / 3)


def test_advantage_errors_name_the_fix():
    with pytest.raises(ConfigError, match="K >= 2"):
        rloo_advantages(torch.tensor([[1.0], [2.0]]))
    with pytest.raises(ConfigError, match="choose one of"):
        advantages(REWARDS, "ppo")
    with pytest.raises(ConfigError, match="choose one of"):
        reduce_token_losses(torch.zeros(2, 2), torch.ones(2, 2), "seq")


def test_zero_advantage_share_counts_tied_groups():
    assert zero_advantage_share(REWARDS).item() == 0.5


def test_reductions_by_hand():
    """Completion 1 has 1 real token (loss 3), completion 2 has 3 (losses 1, 2, 3); limit 4 tokens."""
    losses = torch.tensor([[3.0, 9.0, 9.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    assert reduce_token_losses(losses, mask, "grpo").item() == pytest.approx((3 + 2) / 2)
    assert reduce_token_losses(losses, mask, "bnpo").item() == pytest.approx(9 / 4)
    assert reduce_token_losses(losses, mask, "dr_grpo", max_tokens=4).item() == pytest.approx(9 / 8)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        reduce_token_losses(losses, mask, "dr_grpo")


def test_clipped_surrogate_by_hand():
    """Ratios 1.5 (A = +1: clipped to 1.2), 0.5 (A = −1: clipped to 0.8), 1.1 (inside), and a padding token."""
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1, 3.0]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = clipped_surrogate(logps, old, adv, mask)
    torch.testing.assert_close(out.token_losses[0, :3], torch.tensor([-1.2, 0.8, -1.1]))
    assert out.clip_fraction.item() == pytest.approx(2 / 3)
    (out.token_losses * mask).sum().backward()
    # clipped tokens pass no gradient; inside the clip range d(−ρA)/d log π = −ρA
    torch.testing.assert_close(logps.grad, torch.tensor([[0.0, 0.0, -1.1, 0.0]]))


def test_one_step_surrogate_is_reinforce():
    logps = torch.randn(3, 5, requires_grad=True)
    adv = torch.randn(3, 1)
    out = clipped_surrogate(logps, logps.detach(), adv, torch.ones(3, 5))
    assert out.clip_fraction.item() == 0.0
    out.token_losses.sum().backward()
    torch.testing.assert_close(logps.grad, -adv.expand(3, 5))


# --- KL estimators against enumeration -------------------------------------------------------------------


def _distributions() -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, generator=generator, dtype=torch.float64, requires_grad=True)
    ref_logps = torch.log_softmax(torch.randn(7, generator=generator, dtype=torch.float64), dim=0)
    return logits, ref_logps


def test_k1_and_k3_have_the_exact_kl_as_their_expectation():
    logits, ref_logps = _distributions()
    logps = torch.log_softmax(logits, dim=0)
    probs = logps.exp()
    exact = (probs * (logps - ref_logps)).sum()
    torch.testing.assert_close((probs * k1(logps, ref_logps)).sum(), exact)
    torch.testing.assert_close((probs * k3(logps, ref_logps)).sum(), exact)
    assert (k3(logps, ref_logps) >= 0).all() and (k1(logps, ref_logps) < 0).any()


def test_kl_gradients_k1_in_the_loss_is_zero_k3_is_forward_kl_k1_in_the_reward_is_reverse_kl():
    """With the samples held fixed (weights π detached), E[∇k1] = 0, E[∇k3] = ∇KL(π_ref‖π), and k1 as a
    detached penalty on the reward, through the score function, gives −β·∇KL(π‖π_ref)."""
    logits, ref_logps = _distributions()
    beta = 0.3

    def grad(value: Tensor) -> Tensor:
        return torch.autograd.grad(value, logits, retain_graph=True)[0]

    logps = torch.log_softmax(logits, dim=0)
    weights = logps.exp().detach()
    assert grad((weights * k1(logps, ref_logps)).sum()).abs().max().item() < 1e-12
    forward_kl = (ref_logps.exp() * (ref_logps - logps)).sum()
    torch.testing.assert_close(grad((weights * k3(logps, ref_logps)).sum()), grad(forward_kl))
    reverse_kl = (logps.exp() * (logps - ref_logps)).sum()
    penalty = penalized_rewards(torch.zeros(7, dtype=torch.float64), k1(logps, ref_logps), beta)
    torch.testing.assert_close(grad((weights * penalty * logps).sum()), -beta * grad(reverse_kl))


# --- the estimator is unbiased: every completion of a tiny policy enumerated ------------------------------

EOS, VOCAB, MAX_TOKENS = 0, 3, 3


def _completions() -> list[tuple[int, ...]]:
    """Every completion: tokens up to and including the first EOS, or MAX_TOKENS tokens without one."""
    found = set()
    for tokens in itertools.product(range(VOCAB), repeat=MAX_TOKENS):
        cut = tokens.index(EOS) + 1 if EOS in tokens else MAX_TOKENS
        found.add(tokens[:cut])
    return sorted(found)


def _token_logps(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """Log-probs ``(N, T)`` of a policy whose next-token logits depend on the position only, ``(T, V)``."""
    table = torch.log_softmax(logits, dim=-1)
    return table[torch.arange(MAX_TOKENS), tokens] * mask


def _reward(tokens: Tensor, mask: Tensor) -> Tensor:
    """How many times token 2 appears: longer completions can score more, which makes length matter."""
    return ((tokens == 2) & mask.bool()).sum(dim=-1).to(torch.float64)


def _sample(logits: Tensor, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    probs = torch.softmax(logits.detach(), dim=-1)
    tokens = torch.stack([torch.multinomial(probs[t], n, replacement=True, generator=generator)
                          for t in range(MAX_TOKENS)], dim=1)  # fmt: skip
    ended_before = torch.cumsum((tokens == EOS).long(), dim=1) - (tokens == EOS).long()
    mask = (ended_before == 0).to(torch.float64)
    return tokens * mask.long(), mask


def _objective_gradient(logits: Tensor, ref_logits: Tensor, beta: float) -> Tensor:
    """∇(E[r] − β·KL(π‖π_ref)) summed exactly over every completion."""
    rows = _completions()
    tokens = torch.tensor([list(r) + [EOS] * (MAX_TOKENS - len(r)) for r in rows])
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (MAX_TOKENS - len(r)) for r in rows], dtype=torch.float64)
    logps = _token_logps(logits, tokens, mask).sum(-1)
    ref_logps = _token_logps(ref_logits, tokens, mask).sum(-1)
    assert torch.allclose(logps.exp().sum(), torch.tensor(1.0, dtype=torch.float64))  # the enumeration is whole
    objective = (logps.exp() * (_reward(tokens, mask) - beta * (logps - ref_logps))).sum()
    return torch.autograd.grad(objective, logits)[0]


def _estimated_gradients(
    logits: Tensor, ref_logits: Tensor, beta: float, kind: str, k: int, batches: int, drop_mask: bool = False
) -> Tensor:
    """``−MAX_TOKENS·∇loss`` of many sampled batches (RLOO-style: k1 penalty in the reward, one optimizer step
    per batch, the dr_grpo reduction), one row per batch."""
    generator = torch.Generator().manual_seed(1)
    grads = []
    for _ in range(batches):
        tokens, mask = _sample(logits, 16 * k, generator)
        loss_mask = torch.ones_like(mask) if drop_mask else mask
        logps = _token_logps(logits, tokens, loss_mask)
        ref_logps = _token_logps(ref_logits, tokens, loss_mask)
        rewards = penalized_rewards(_reward(tokens, mask), k1(logps, ref_logps).sum(-1), beta)
        token_advantages = advantages(rewards.view(-1, k), kind).reshape(-1, 1)
        surrogate = clipped_surrogate(logps, logps.detach(), token_advantages, loss_mask)
        loss = reduce_token_losses(surrogate.token_losses, loss_mask, "dr_grpo", max_tokens=MAX_TOKENS)
        grads.append(-MAX_TOKENS * torch.autograd.grad(loss, logits)[0].flatten())
    return torch.stack(grads)


def _z_scores(estimates: Tensor, exact: Tensor) -> Tensor:
    mean = estimates.mean(0)
    se = estimates.std(0) / math.sqrt(estimates.shape[0])
    return (mean - exact.flatten()).abs() / se


@pytest.fixture(scope="module")
def tiny_policy() -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(MAX_TOKENS, VOCAB, generator=generator, dtype=torch.float64, requires_grad=True)
    ref_logits = torch.randn(MAX_TOKENS, VOCAB, generator=generator, dtype=torch.float64)
    return logits, ref_logits, _objective_gradient(logits, ref_logits, beta=0.5)


@pytest.mark.parametrize("k", [2, 4])
def test_rloo_estimator_is_unbiased_for_the_kl_regularized_objective(tiny_policy, k: int):
    logits, ref_logits, exact = tiny_policy
    estimates = _estimated_gradients(logits, ref_logits, 0.5, "rloo", k, batches=400)
    assert _z_scores(estimates, exact).max().item() < 4.5, (estimates.mean(0), exact.flatten())


def test_the_unbiasedness_check_catches_a_wrong_baseline_and_a_dropped_mask(tiny_policy):
    """A baseline that includes the scored sample (the group mean at K = 2 halves the gradient), and a loss
    that reads the tokens after EOS, both fail the same check."""
    logits, ref_logits, exact = tiny_policy
    wrong_baseline = _estimated_gradients(logits, ref_logits, 0.5, "dr_grpo", 2, batches=400)
    assert _z_scores(wrong_baseline, exact).max().item() > 6
    dropped_mask = _estimated_gradients(logits, ref_logits, 0.5, "rloo", 2, batches=400, drop_mask=True)
    assert _z_scores(dropped_mask, exact).max().item() > 6
