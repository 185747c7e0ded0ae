"""PPO's math by hand (hhalign/losses/critic.py and the new rows of policy_gradient.py): per-token rewards, GAE
over a trajectory with a mask gap, the clipped value loss and where it stops pulling, whitening, the ``dapo``
reduction, the sequence-level surrogate; and PPO's estimator, unbiased for the KL-regularized objective on a
policy small enough to enumerate."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from hhalign.losses.critic import gae, token_rewards, value_loss
from hhalign.losses.policy_gradient import (
    clipped_surrogate,
    k1,
    reduce_token_losses,
    sequence_surrogate,
    whiten,
)
from tests.losses.test_policy_gradient import (  # noqa: F401 (tiny_policy: a fixture)
    MAX_TOKENS,
    _reward,
    _sample,
    _token_logps,
    _z_scores,
    tiny_policy,
)


def test_token_rewards_put_the_kl_on_every_real_token_and_the_score_on_the_last():
    """β 0.5: row 1 has 2 real tokens (KL 0.1, 0.2; score 2), row 2 has 3 (KL 0.5 each; score −1)."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    got = token_rewards(torch.tensor([2.0, -1.0]), kl, mask, beta=0.5)
    torch.testing.assert_close(got, torch.tensor([[-0.05, 1.9, 0.0], [-0.25, -0.25, -1.25]]))


def test_gae_by_hand_over_a_trajectory_with_a_mask_gap():
    """γ 0.9, λ 0.8, real tokens 0, 1, 3, 4 (token 2 masked: its reward 9 and value 7 must not count).
    Backwards: δ4 = 1 − 0.6 = 0.4, A4 = 0.4; δ3 = 0.3 + 0.9·0.6 − 0.2 = 0.64, A3 = 0.64 + 0.72·0.4 = 0.928;
    token 1 bootstraps from token 3: δ1 = −0.2 + 0.9·0.2 − 0.4 = −0.42, A1 = −0.42 + 0.72·0.928 = 0.24816;
    δ0 = 0.1 + 0.9·0.4 − 0.5 = −0.04, A0 = −0.04 + 0.72·0.24816 = 0.1386752. Returns = A + V."""
    rewards = torch.tensor([[0.1, -0.2, 9.0, 0.3, 1.0], [5.0, 5.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.4, 7.0, 0.2, 0.6], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1, 1], [0, 0, 0, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected = torch.tensor([[0.1386752, 0.24816, 0.0, 0.928, 0.4], [0.0] * 5], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, (expected + values) * mask)
    # γ = λ = 1: the reward still to come (masked reward left out) minus the value
    advantages, _ = gae(rewards, values, mask)
    torch.testing.assert_close(advantages[0], torch.tensor([0.7, 0.7, 0.0, 1.1, 0.4], dtype=torch.float64))


def test_value_loss_by_hand_and_no_pull_beyond_the_clip():
    """Old values 0.5, clip 0.2. Token 0: V 1 → (1 − 2)² = 1, clipped V 0.7 → 1.69: the max, 0.845, and no
    gradient (the clipped branch is flat in V). Token 1: V 0 → 1, clipped 0.3 → 0.49: 0.5, gradient V − R = −1.
    Token 2 masked."""
    values = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    old, returns, mask = torch.full((1, 3), 0.5), torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1, 1, 0]])
    losses = value_loss(values, old, returns, mask, clip=0.2)
    torch.testing.assert_close(losses, torch.tensor([[0.845, 0.5, 0.0]]))
    losses.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -1.0, 0.0]]))
    torch.testing.assert_close(value_loss(values, old, returns, mask, clip=None), torch.tensor([[0.5, 0.5, 0.0]]))


def test_whitening_dapo_and_the_sequence_surrogate_by_hand():
    """Whitening over real entries 1, 2, 3 (mean 2, unbiased std 1), the masked 100 ignored. ``dapo`` divides the
    token sum by the tokens a process holds on average (here 6: other processes held more). The sequence ratio
    of row 1 is e^0.2 ≈ 1.221 > 1.2 with A = +1 (clipped to 1.2, no gradient); row 2's e^0.3 with A = −1 is
    not clipped (loss ρ)."""
    values, mask = torch.tensor([[1.0, 2.0], [3.0, 100.0]]), torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(whiten(values, mask), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    losses = torch.tensor([[3.0, 9.0, 9.0], [1.0, 2.0, 3.0]])
    token_mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    assert reduce_token_losses(losses, token_mask, "dapo").item() == pytest.approx(9 / 4)
    assert reduce_token_losses(losses, token_mask, "dapo", tokens_per_process=torch.tensor(6.0)).item() == 1.5
    logps = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    old = logps.detach() - torch.tensor([[0.1, 0.1], [0.3, 7.0]])  # the 7 is padding: it must not count
    out = sequence_surrogate(logps, old, torch.tensor([1.0, -1.0]), torch.tensor([[1, 1], [1, 0]]))
    torch.testing.assert_close(out.token_losses, torch.tensor([-1.2, torch.tensor(0.3).exp().item()]))
    assert out.clip_fraction.item() == 0.5
    out.token_losses.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[0.0, 0.0], [torch.tensor(0.3).exp().item(), 0.0]]))


def _ppo_gradients(logits: Tensor, ref_logits: Tensor, beta: float, critic: Callable, batches: int) -> Tensor:
    """``−MAX_TOKENS·∇loss`` of many sampled batches as PPOModule takes its first step on a rollout: per-token
    rewards (−β·k1, the score at the last token), GAE with γ = λ = 1 over ``critic(tokens, mask)``'s values, ratio
    1, token losses summed per completion."""
    generator = torch.Generator().manual_seed(2)
    grads = []
    for _ in range(batches):
        tokens, mask = _sample(logits, 32, generator)
        logps = _token_logps(logits, tokens, mask)
        ref_logps = _token_logps(ref_logits, tokens, mask)
        rewards = token_rewards(_reward(tokens, mask), k1(logps, ref_logps), mask, beta)
        advantages, _ = gae(rewards, critic(tokens, mask), mask)
        surrogate = clipped_surrogate(logps, logps.detach(), advantages, mask)
        loss = reduce_token_losses(surrogate.token_losses, mask, "dr_grpo", max_tokens=MAX_TOKENS)
        grads.append(-MAX_TOKENS * torch.autograd.grad(loss, logits)[0].flatten())
    return torch.stack(grads)


def test_ppo_estimator_is_unbiased_for_the_kl_regularized_objective_and_a_leaking_critic_is_not(tiny_policy):  # noqa: F811
    """The critic is a baseline: any value of the state before a token (here a function of its position) leaves
    the expected gradient exact. A critic that reads the sample's own outcome (its final score) does not."""
    logits, ref_logits, exact = tiny_policy
    by_position = torch.tensor([0.7, -0.3, 1.5], dtype=torch.float64)[:MAX_TOKENS]
    estimates = _ppo_gradients(logits, ref_logits, 0.5, lambda t, m: by_position.expand(m.shape) * m, batches=300)
    assert _z_scores(estimates, exact).max().item() < 4.5, (estimates.mean(0), exact.flatten())
    leaking = _ppo_gradients(logits, ref_logits, 0.5, lambda t, m: _reward(t, m)[:, None] * m, batches=300)
    assert _z_scores(leaking, exact).max().item() > 6
