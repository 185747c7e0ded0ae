"""PPO's critic side as pure functions over ``(N, T)`` token tensors: per-token rewards (the KL penalty at every
token, the score at the last), generalized advantage estimation, and the clipped value loss.

A token's value ``V_t`` is the critic's estimate, before token ``t`` is chosen, of the reward still to come;
``mask`` marks the real completion tokens. Masked positions between real ones (a gap, e.g. an observation a tool
wrote) are skipped: the next real token's value bootstraps across them, and they get no advantage.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_rewards(scores: Tensor, token_kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """``r_t = −β·kl_t`` at every real token, plus the sequence's score at its last real token (its EOS, or
    the token where the length limit cut it), as OpenRLHF and AReaL fold them; ``(N, T)``, detached.

    Args:
        scores: ``(N,)`` each completion's reward.
        token_kl: ``(N, T)`` the per-token KL estimate (k1: ``log π_old − log π_ref``).
        mask: ``(N, T)`` real completion tokens.
    """
    real = mask.float()
    rewards = -beta * token_kl.detach() * real
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values
    has_tokens = last >= 0
    rows = torch.arange(len(scores), device=mask.device)[has_tokens]
    return rewards.index_put((rows, last[has_tokens]), scores.detach()[has_tokens].to(rewards.dtype), accumulate=True)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 1.0) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016), backwards over each completion's real tokens:
    ``δ_t = r_t + γ·V_next − V_t`` and ``A_t = δ_t + γλ·A_next``, ``V_next`` and ``A_next`` those of the next real
    token (0 after the last). Returns the advantages and the critic's targets ``A + V``, 0 where masked; detached.
    With γ = λ = 1 (the peers' default) ``A_t`` is the reward still to come minus ``V_t``."""
    rewards, values, real = rewards.detach(), values.detach(), mask.bool()
    advantages = torch.zeros_like(values)
    next_value = values.new_zeros(values.shape[0])
    next_advantage = values.new_zeros(values.shape[0])
    for t in range(values.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        here = real[:, t]
        advantages[:, t] = torch.where(here, advantage, 0.0)
        next_value = torch.where(here, values[:, t], next_value)
        next_advantage = torch.where(here, advantage, next_advantage)
    return advantages, (advantages + values) * real


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = 0.5) -> Tensor:
    """PPO's clipped value loss per token, ``½·max((V − R)², (V_clip − R)²)`` with ``V_clip = V_old +
    clip(V − V_old, −c, c)`` (OpenRLHF, verl and AReaL clip at 0.5), 0 where masked; ``clip`` None: plain
    ``½(V − R)²``. The caller reduces it (a token mean)."""
    returns, old_values = returns.detach(), old_values.detach()
    losses = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        losses = torch.maximum(losses, (clipped - returns) ** 2)
    return 0.5 * losses * mask.float()
