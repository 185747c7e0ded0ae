"""The online objectives' math as pure functions: advantages over groups of K samples per prompt, the KL
estimators, the clipped policy-gradient surrogate per token, and how token losses are reduced to one number.

Shapes: ``rewards`` are ``(P, K)`` (P prompts, K completions each); token tensors are ``(N, T)`` with
``N = P·K`` completions in prompt-major order and a float or bool ``mask`` marking each completion's real
tokens (its EOS included, padding and the prompt not). A new advantage estimator is a function and a row of
``ADVANTAGES``; a new reduction a function and a row of ``TOKEN_REDUCTIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from hhalign.errors import ConfigError

AdvantageType = Literal["rloo", "grpo", "dr_grpo"]
TokenReduction = Literal["grpo", "bnpo", "dapo", "dr_grpo"]
LossType = Literal["sequence", "grpo", "bnpo", "dapo", "dr_grpo"]
"""``sequence``: one ratio per completion (``sequence_surrogate``); the others reduce per-token losses."""


def _grouped(rewards: Tensor, minimum: int) -> Tensor:
    if rewards.dim() != 2 or rewards.shape[1] < minimum:
        raise ConfigError(
            f"advantages need rewards of shape (prompts, K) with K >= {minimum} samples per prompt, got"
            f" {tuple(rewards.shape)}; raise the number of samples per prompt"
        )
    return rewards


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE with the leave-one-out baseline (Ahmadian et al. 2024): ``A_i = r_i − mean_{j≠i} r_j``,
    which equals ``K/(K−1)·(r_i − mean_j r_j)``. The baseline never reads the sample it scores, so the
    estimate of ``∇E[r]`` stays unbiased."""
    rewards = _grouped(rewards, 2)
    k = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def grpo_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """GRPO's group-normalized advantage (Shao et al. 2024): ``(r_i − mean r) / (std r + eps)``, the std
    unbiased (over K − 1) as in the paper's code and TRL. A group whose K rewards tie gets 0 everywhere."""
    rewards = _grouped(rewards, 2)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def dr_grpo_advantages(rewards: Tensor) -> Tensor:
    """Dr. GRPO's advantage (Liu et al. 2025): the group mean subtracted, no division by its std, which
    would weight prompts whose samples nearly agree the most."""
    rewards = _grouped(rewards, 2)
    return rewards - rewards.mean(dim=1, keepdim=True)


ADVANTAGES: dict[str, Callable[[Tensor], Tensor]] = {
    "rloo": rloo_advantages,
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
}


def advantages(rewards: Tensor, kind: str) -> Tensor:
    """The named estimator's advantages ``(P, K)`` of ``rewards`` ``(P, K)``, detached."""
    if kind not in ADVANTAGES:
        raise ConfigError(f"unknown advantage estimator {kind!r}; choose one of {sorted(ADVANTAGES)}")
    return ADVANTAGES[kind](rewards.detach())


def zero_advantage_share(rewards: Tensor) -> Tensor:
    """The share of prompts whose K samples all scored the same: they teach nothing under any estimator."""
    return (rewards == rewards[:, :1]).all(dim=1).float().mean()


def k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token ``log π(y_t) − log π_ref(y_t)`` of the policy's own samples: its expectation is
    KL(π‖π_ref), exactly; one sample's value can be negative. As a loss its expected gradient is zero (the
    score function's mean), so it belongs in the reward, detached, not in the loss."""
    return logps - ref_logps


def k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token ``ρ − log ρ − 1`` with ``ρ = π_ref(y_t)/π(y_t)`` (Schulman's k3): non-negative, expectation
    KL(π‖π_ref) under the policy's samples, and as a loss (samples held fixed) its expected gradient is that
    of the *forward* KL(π_ref‖π), which is what TRL's GRPO optimizes with it."""
    log_ratio = ref_logps - logps
    return torch.exp(log_ratio) - log_ratio - 1


def penalized_rewards(rewards: Tensor, sequence_k1: Tensor, beta: float) -> Tensor:
    """The reward with the KL as a per-sequence penalty, ``r − β·Σ_t k1`` (TRL's RLOO, OpenRLHF, AReaL),
    detached: the penalty reaches the policy through the advantage, which gives ``∇KL(π‖π_ref)``."""
    return (rewards - beta * sequence_k1).detach()


@dataclass(frozen=True)
class Surrogate:
    """Per-token policy-gradient losses ``(N, T)`` and the share of real tokens whose ratio was clipped."""

    token_losses: Tensor
    clip_fraction: Tensor


def clipped_surrogate(
    logps: Tensor,
    old_logps: Tensor,
    token_advantages: Tensor,
    mask: Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> Surrogate:
    """PPO's clipped surrogate per token (Schulman et al. 2017; ε low/high as DAPO): ``−min(ρ·A,
    clip(ρ, 1−ε_low, 1+ε_high)·A)`` with ``ρ = exp(log π − log π_old)``. With one optimizer step per
    sampled batch ``old_logps`` is ``logps.detach()``: ρ = 1, nothing clips, and the gradient is REINFORCE's
    ``−A·∇log π``.

    Args:
        logps: ``(N, T)`` log-probs of the sampled tokens under the policy being trained (with grad).
        old_logps: ``(N, T)`` the same under the policy that sampled them.
        token_advantages: ``(N, T)`` or ``(N, 1)``: each completion's advantage, broadcast over its tokens.
        mask: ``(N, T)`` real completion tokens.
    """
    ratio = torch.exp(logps - old_logps.detach())
    losses, was_clipped = _clip(ratio, token_advantages.detach(), epsilon_low, epsilon_high)
    real = mask.float().sum().clamp(min=1)
    return Surrogate(losses, (was_clipped & mask.bool()).float().sum() / real)


def _clip(ratio: Tensor, advantage: Tensor, epsilon_low: float, epsilon_high: float) -> tuple[Tensor, Tensor]:
    """``−min(ρ·A, clip(ρ)·A)`` and where the clipped term is the smaller (the clip binds)."""
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * advantage
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def sequence_surrogate(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> Surrogate:
    """The clipped surrogate with one action per completion, as TRL's RLOO (Ahmadian et al. 2024): the ratio
    ``ρ = exp(Σ_t log π − Σ_t log π_old)`` of the whole completion, ``−min(ρ·A, clip(ρ)·A)`` per completion,
    ``(N,)``; the caller takes the mean over completions. With one optimizer step per rollout its gradient is
    ``−A·∇Σ_t log π``, REINFORCE's with no length weighting."""
    ratio = torch.exp(((logps - old_logps.detach()) * mask.float()).sum(dim=1))
    losses, was_clipped = _clip(ratio, advantages.detach().reshape(-1), epsilon_low, epsilon_high)
    return Surrogate(losses, was_clipped.float().mean())


def whiten(values: Tensor, mask: Tensor | None = None, total: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``(v − mean)/(std + 1e-8)`` over the real entries of the batch (OpenRLHF's and verl's advantage
    whitening, REINFORCE++'s batch normalization), 0 where masked; ``total`` sums over every process (the
    statistics are then the global batch's). Detached."""
    values = values.detach()
    real = torch.ones_like(values) if mask is None else mask.float()
    total = total or (lambda x: x)
    sums = total(torch.stack([(values * real).sum(), real.sum()]))
    mean = sums[0] / sums[1].clamp(min=1)
    variance = total(((values - mean) ** 2 * real).sum()[None])[0] / (sums[1] - 1).clamp(min=1)
    return (values - mean) / (variance.sqrt() + 1e-8) * real


def grpo_reduction(token_losses: Tensor, mask: Tensor, max_tokens: int | None = None) -> Tensor:
    """The mean over completions of each completion's token mean (GRPO as published): a long completion's
    tokens each weigh less, which biases the update towards long wrong answers and short right ones."""
    mask = mask.float()
    return ((token_losses * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


def bnpo_reduction(token_losses: Tensor, mask: Tensor, max_tokens: int | None = None) -> Tensor:
    """The mean over every real token of the batch: each token weighs the same whatever its completion."""
    mask = mask.float()
    return (token_losses * mask).sum() / mask.sum().clamp(min=1)


def dapo_reduction(
    token_losses: Tensor, mask: Tensor, max_tokens: int | None = None, tokens_per_process: Tensor | None = None
) -> Tensor:
    """The token sum over the mean real-token count of a process (DAPO; TRL's GRPO default): every token of
    the global batch weighs the same, however the tokens fall on the processes (gradients are then averaged
    over them). On one process it is ``bnpo``."""
    mask = mask.float()
    count = mask.sum() if tokens_per_process is None else tokens_per_process
    return (token_losses * mask).sum() / count.clamp(min=1)


def dr_grpo_reduction(token_losses: Tensor, mask: Tensor, max_tokens: int | None = None) -> Tensor:
    """The sum over real tokens divided by a constant, completions × the longest allowed completion (Dr.
    GRPO): no length weighting at all, so with the group-mean advantage the gradient is an unbiased multiple
    of ``∇E[r]``."""
    if max_tokens is None:
        raise ConfigError("the dr_grpo reduction needs the completion length limit (max_new_tokens)")
    return (token_losses * mask.float()).sum() / (token_losses.shape[0] * max_tokens)


TOKEN_REDUCTIONS: dict[str, Callable[..., Tensor]] = {
    "grpo": grpo_reduction,
    "bnpo": bnpo_reduction,
    "dapo": dapo_reduction,
    "dr_grpo": dr_grpo_reduction,
}


def reduce_token_losses(
    token_losses: Tensor,
    mask: Tensor,
    kind: str,
    max_tokens: int | None = None,
    tokens_per_process: Tensor | None = None,
) -> Tensor:
    """The named reduction of ``(N, T)`` token losses to the scalar the optimizer steps on; ``tokens_per_process``
    (the global batch's real tokens over the process count) is what ``dapo`` divides by."""
    if kind not in TOKEN_REDUCTIONS:
        raise ConfigError(f"unknown loss_type {kind!r}; choose one of {sorted(TOKEN_REDUCTIONS)}")
    if kind == "dapo":
        return dapo_reduction(token_losses, mask, max_tokens, tokens_per_process)
    return TOKEN_REDUCTIONS[kind](token_losses, mask, max_tokens)
