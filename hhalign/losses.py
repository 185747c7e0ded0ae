"""Preference losses as pure functions over tensors.

Every DPO-family loss takes per-sequence log-probs of shape ``(B,)`` and returns the unreduced
``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``, rewards detached. The caller takes
the mean, so the same functions serve training, validation and per-pair diagnostics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hhalign.errors import ConfigError

__all__ = [
    "DPO_LOSSES",
    "LENGTH_NORMALIZED_LOSSES",
    "LossOptions",
    "PairLogps",
    "bco_reward_mean",
    "bradley_terry_loss",
    "check_dpo_options",
    "dpo_loss",
    "preference_losses",
    "implicit_rewards",
    "needs_reference",
    "scattered_logps",
    "sequence_logps",
]


def sequence_logps(logits: Tensor, labels: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Sum the log-probs of the masked label tokens of each sequence.

    ``logits[:, t]`` scores ``labels[:, t + 1]``, so the shift happens here and ``loss_mask`` is
    aligned with ``labels`` (1 on the response tokens that count, EOS included). Only the masked
    rows of the logits are upcast to float32, never a full-vocabulary copy of the whole batch.

    Args:
        logits: ``(B, T, V)`` in any floating dtype.
        labels: ``(B, T)`` token ids, usually the input ids.
        loss_mask: ``(B, T)``, nonzero where a label token counts.

    Returns:
        ``(logp_sum, n_tokens)``, both ``(B,)``: the summed log-probs (float32, or float64 for
        float64 logits) and the number of tokens summed.
    """
    if logits.shape[:2] != labels.shape or labels.shape != loss_mask.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
            f"loss_mask {tuple(loss_mask.shape)}; expected (B, T, V), (B, T), (B, T)"
        )
    mask = loss_mask[:, 1:].bool()
    rows = mask.nonzero(as_tuple=True)[0]
    picked = logits[:, :-1][mask]  # (N, V): only the scored positions
    return scattered_logps(picked, labels[:, 1:][mask], rows, labels.shape[0])


def scattered_logps(token_logits: Tensor, labels: Tensor, sequences: Tensor, n_sequences: int) -> tuple[Tensor, Tensor]:
    """Sum token log-probs into their sequences, from the logits of the scored positions only.

    Args:
        token_logits: ``(N, V)``, one row per scored token, any floating dtype (upcast here).
        labels: ``(N,)`` the token each row scores.
        sequences: ``(N,)`` the sequence each token belongs to, in ``[0, n_sequences)``.

    Returns:
        ``(logp_sum, n_tokens)``, both ``(n_sequences,)``, as ``sequence_logps``.
    """
    token_logits = token_logits.to(torch.promote_types(token_logits.dtype, torch.float32))
    token_logps = -F.cross_entropy(token_logits, labels, reduction="none")
    logp_sum = token_logps.new_zeros(n_sequences).index_add(0, sequences, token_logps)
    n_tokens = torch.zeros(n_sequences, dtype=torch.long, device=labels.device).index_add(
        0, sequences, torch.ones_like(sequences)
    )
    return logp_sum, n_tokens


def implicit_rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """DPO's implicit reward ``β·(log π(y|x) − log π_ref(y|x))``, detached."""
    return (beta * (policy_logps - ref_logps)).detach()


@dataclass(frozen=True)
class PairLogps:
    """Per-pair log-probs, each ``(B,)``: policy and reference sums over each response, and the
    response token counts. ``ref_*`` are None for reference-free losses; counts of None mean the
    log-probs are already in the form the loss reads (the ``dpo_loss`` convention)."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_tokens: Tensor | None = None
    rejected_tokens: Tensor | None = None

    def reference(self) -> tuple[Tensor, Tensor]:
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ConfigError("this loss needs reference log-probs; it cannot run reference-free")
        return self.ref_chosen, self.ref_rejected

    def logratios(self, mean: bool = False) -> tuple[Tensor, Tensor]:
        """``log π − log π_ref`` of chosen and rejected, summed or per-token averaged."""
        ref_chosen, ref_rejected = self.reference()
        chosen, rejected = self.policy_chosen - ref_chosen, self.policy_rejected - ref_rejected
        if mean:
            return self._mean(chosen, self.chosen_tokens), self._mean(rejected, self.rejected_tokens)
        return chosen, rejected

    def policy_means(self) -> tuple[Tensor, Tensor]:
        chosen = self._mean(self.policy_chosen, self.chosen_tokens)
        return chosen, self._mean(self.policy_rejected, self.rejected_tokens)

    @staticmethod
    def _mean(values: Tensor, counts: Tensor | None) -> Tensor:
        return values if counts is None else values / counts.clamp(min=1)


@dataclass(frozen=True)
class LossOptions:
    """Hyper-parameters the losses read. ``bco_delta`` is ``bco_pair``'s running mean of rewards,
    kept by the caller (``DPOModule``, across steps and in its checkpoints)."""

    beta: float
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05
    simpo_gamma: float = 0.5
    bco_delta: float | Tensor = 0.0


def _smoothed(z: Tensor, epsilon: float) -> Tensor:
    """``−(1−ε)·log σ(z) − ε·log σ(−z)``: the logistic loss with labels flipped with probability ε."""
    return -(1 - epsilon) * F.logsigmoid(z) - epsilon * F.logsigmoid(-z)


def _h(x: PairLogps) -> Tensor:
    chosen, rejected = x.logratios()
    return chosen - rejected


def _sigmoid(x: PairLogps, o: LossOptions) -> Tensor:
    """DPO, Rafailov et al. 2023 eq. 7, ``−log σ(β·h)``; with ``label_smoothing`` ε, conservative DPO
    (Mitchell 2023): ``−(1−ε)·log σ(β·h) − ε·log σ(−β·h)``."""
    return _smoothed(o.beta * _h(x), o.label_smoothing)


def _robust(x: PairLogps, o: LossOptions) -> Tensor:
    """rDPO, Chowdhury et al. 2024 eq. 6: an unbiased loss under label noise ε,
    ``(−(1−ε)·log σ(β·h) + ε·log σ(−β·h)) / (1 − 2ε)``."""
    z, epsilon = o.beta * _h(x), o.label_smoothing
    return (-(1 - epsilon) * F.logsigmoid(z) + epsilon * F.logsigmoid(-z)) / (1 - 2 * epsilon)


def _hinge(x: PairLogps, o: LossOptions) -> Tensor:
    """SLiC, Zhao et al. 2023: the hinge ``max(0, 1 − β·h)``."""
    return torch.relu(1 - o.beta * _h(x))


def _ipo(x: PairLogps, o: LossOptions) -> Tensor:
    """IPO, Azar et al. 2023 eq. 17, ``(h − 1/(2β))²`` on per-token-averaged log-probs (β is the paper's τ)."""
    chosen, rejected = x.logratios(mean=True)
    return (chosen - rejected - 1 / (2 * o.beta)) ** 2


def _exo_pair(x: PairLogps, o: LossOptions) -> Tensor:
    """EXO, Ji et al. 2024 eq. 16 for two responses: ``KL(p_θ ‖ p_ε)`` between the policy's softmax over
    {chosen, rejected} with logits ``β·log-ratio`` and the smoothed label ``(1−ε, ε)``; ε defaults to 1e-3."""
    z = o.beta * _h(x)
    epsilon = torch.tensor(o.label_smoothing or 1e-3, dtype=z.dtype, device=z.device)
    return torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-epsilon)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - torch.log(epsilon)
    )


def _nca_pair(x: PairLogps, o: LossOptions) -> Tensor:
    """NCA, Chen et al. 2024 eq. 12 for a pair: ``−log σ(r_c) − ½·log σ(−r_c) − ½·log σ(−r_r)``,
    ``r = β·log-ratio``: absolute likelihoods, not only their difference."""
    chosen, rejected = x.logratios()
    r_c, r_r = o.beta * chosen, o.beta * rejected
    return -F.logsigmoid(r_c) - 0.5 * F.logsigmoid(-r_c) - 0.5 * F.logsigmoid(-r_r)


def _bco_pair(x: PairLogps, o: LossOptions) -> Tensor:
    """BCO, Jung et al. 2024 eq. 5 on pairs: binary classification of each response against the running
    mean δ of rewards, ``−log σ(r_c − δ) − log σ(−(r_r − δ))``."""
    chosen, rejected = x.logratios()
    return -F.logsigmoid(o.beta * chosen - o.bco_delta) - F.logsigmoid(-(o.beta * rejected - o.bco_delta))


def _sppo_hard(x: PairLogps, o: LossOptions) -> Tensor:
    """SPPO, Wu et al. 2024 eq. 4.7 with hard win probabilities (1 for chosen, 0 for rejected):
    ``(log-ratio_c − 1/(2β))² + (log-ratio_r + 1/(2β))²``."""
    chosen, rejected = x.logratios()
    return (chosen - 0.5 / o.beta) ** 2 + (rejected + 0.5 / o.beta) ** 2


def _aot(x: PairLogps, o: LossOptions) -> Tensor:
    """AOT, Melnyk et al. 2024: distributional alignment by optimal transport: the sorted policy margins
    ``log π(y_c) − log π(y_r)`` of the batch against the sorted reference margins, through the (smoothed)
    logistic loss. Per pair after sorting, so pairs are not matched to their own inputs."""
    ref_chosen, ref_rejected = x.reference()
    policy, _ = torch.sort(x.policy_chosen - x.policy_rejected, dim=0)
    reference, _ = torch.sort(ref_chosen - ref_rejected, dim=0)
    return _smoothed(o.beta * (policy - reference), o.label_smoothing)


def _apo_zero(x: PairLogps, o: LossOptions) -> Tensor:
    """APO-zero, D'Oosterlinck et al. 2024 eq. 7: raise the chosen likelihood and lower the rejected one,
    ``1 − σ(β·log-ratio_c) + σ(β·log-ratio_r)``; for chosen responses better than the model's own."""
    chosen, rejected = x.logratios()
    return 1 - torch.sigmoid(o.beta * chosen) + torch.sigmoid(o.beta * rejected)


def _apo_down(x: PairLogps, o: LossOptions) -> Tensor:
    """APO-down, D'Oosterlinck et al. 2024 eq. 8: lower both, the rejected more,
    ``σ(β·log-ratio_c) + 1 − σ(β·h)``; for chosen responses worse than the model's own."""
    chosen, _ = x.logratios()
    return torch.sigmoid(o.beta * chosen) + 1 - torch.sigmoid(o.beta * _h(x))


def _discopop(x: PairLogps, o: LossOptions) -> Tensor:
    """DiscoPOP, Chris Lu et al. 2024 eq. 5: a log-ratio-modulated blend of the logistic and exponential
    losses, ``(1 − σ(βh/τ))·(−log σ(βh)) + σ(βh/τ)·exp(−βh)``."""
    z = o.beta * _h(x)
    modulation = torch.sigmoid(z / o.discopop_tau)
    return (1 - modulation) * -F.logsigmoid(z) + modulation * torch.exp(-z)


def _simpo(x: PairLogps, o: LossOptions) -> Tensor:
    """SimPO, Meng et al. 2024 eq. 6, reference-free: ``−log σ(β·(ā_c − ā_r) − γ)`` on the policy's
    per-token-averaged log-probs, γ the target margin (with ``label_smoothing``, smoothed like cDPO)."""
    chosen, rejected = x.policy_means()
    return _smoothed(o.beta * (chosen - rejected) - o.simpo_gamma, o.label_smoothing)


def _sft(x: PairLogps, o: LossOptions) -> Tensor:
    """NLL of the chosen responses (RPO, Pang et al. 2024): the batch's mean negative log-prob per chosen
    token, the same value for every pair so that the batch mean is that token mean."""
    if x.chosen_tokens is None:
        raise ConfigError("the sft term needs the chosen token counts")
    token_mean = -x.policy_chosen.sum() / x.chosen_tokens.sum().clamp(min=1)
    return token_mean.expand_as(x.policy_chosen)


@dataclass(frozen=True)
class LossSpec:
    function: Callable[[PairLogps, LossOptions], Tensor]
    reads: str  # "sum" or "mean" (per-token-averaged) log-probs
    reference: bool  # whether it needs the reference model


DPO_LOSSES: dict[str, LossSpec] = {
    "sigmoid": LossSpec(_sigmoid, "sum", True),
    "robust": LossSpec(_robust, "sum", True),
    "hinge": LossSpec(_hinge, "sum", True),
    "ipo": LossSpec(_ipo, "mean", True),
    "exo_pair": LossSpec(_exo_pair, "sum", True),
    "nca_pair": LossSpec(_nca_pair, "sum", True),
    "bco_pair": LossSpec(_bco_pair, "sum", True),
    "sppo_hard": LossSpec(_sppo_hard, "sum", True),
    "aot": LossSpec(_aot, "sum", True),
    "apo_zero": LossSpec(_apo_zero, "sum", True),
    "apo_down": LossSpec(_apo_down, "sum", True),
    "discopop": LossSpec(_discopop, "sum", True),
    "simpo": LossSpec(_simpo, "mean", False),
    "sft": LossSpec(_sft, "mean", False),
}
"""The preference losses by ``loss_type``."""

LossType = Literal[
    "sigmoid", "robust", "hinge", "ipo", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "apo_zero",
    "apo_down", "discopop", "simpo", "sft",
]  # fmt: skip
"""The ``loss_type`` values, as a type the CLI validates at parse time; keep in step with ``DPO_LOSSES``."""

LENGTH_NORMALIZED_LOSSES = frozenset(name for name, spec in DPO_LOSSES.items() if spec.reads == "mean")
"""Loss types that read per-token-averaged log-probs rather than sums."""


def as_list(loss_type: str | list[str] | tuple[str, ...]) -> list[str]:
    return [loss_type] if isinstance(loss_type, str) else list(loss_type)


def needs_reference(loss_type: str | list[str]) -> bool:
    return any(DPO_LOSSES[name].reference for name in as_list(loss_type) if name in DPO_LOSSES)


def check_dpo_options(
    beta: float,
    loss_type: str | list[str],
    loss_weights: list[float] | None = None,
    label_smoothing: float = 0.0,
) -> None:
    """Raise a ``ConfigError`` naming the option and its valid values."""
    names = as_list(loss_type)
    for name in names:
        if name not in DPO_LOSSES:
            raise ConfigError(f"unknown loss_type {name!r}; choose one of {sorted(DPO_LOSSES)}")
    if not names or names == ["sft"]:
        raise ConfigError("loss_type needs a preference loss; 'sft' is a term to add to one, e.g. [sigmoid, sft]")
    if loss_weights is not None and len(loss_weights) != len(names):
        raise ConfigError(f"loss_weights has {len(loss_weights)} values for {len(names)} loss types {names}")
    if not beta > 0:
        raise ConfigError(f"beta must be > 0 (got {beta}); typical values are 0.01 to 0.5")
    if not 0 <= label_smoothing < 0.5:
        raise ConfigError(f"label_smoothing must be in [0, 0.5) (got {label_smoothing}): it is a label-flip rate")


def preference_losses(
    x: PairLogps,
    options: LossOptions,
    loss_type: str | list[str] = "sigmoid",
    loss_weights: list[float] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The weighted sum of the losses named in ``loss_type``, unreduced ``(B,)``, and the rewards.

    Rewards are DPO's ``β·(log π − log π_ref)`` of the summed log-probs when there is a reference, and
    SimPO's ``β·(mean log π)`` when every loss is reference-free; detached.
    """
    names = as_list(loss_type)
    check_dpo_options(options.beta, names, loss_weights, options.label_smoothing)
    weights = loss_weights or [1.0] * len(names)
    losses = sum(w * DPO_LOSSES[n].function(x, options) for n, w in zip(names, weights, strict=True))
    if x.ref_chosen is not None and x.ref_rejected is not None:
        chosen = implicit_rewards(x.policy_chosen, x.ref_chosen, options.beta)
        rejected = implicit_rewards(x.policy_rejected, x.ref_rejected, options.beta)
    else:
        chosen, rejected = (options.beta * m.detach() for m in x.policy_means())
    return losses, chosen, rejected  # type: ignore[return-value]


def bco_reward_mean(x: PairLogps, beta: float) -> Tensor:
    """The batch mean of the chosen and rejected rewards, which ``bco_pair``'s running mean δ follows."""
    chosen, rejected = x.logratios()
    return (beta * torch.cat([chosen, rejected])).mean().detach()


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    **options: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO-family loss of a batch of pairs.

    ``h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))``. Pass summed log-probs for the
    types that read sums and per-token averages for those in ``LENGTH_NORMALIZED_LOSSES`` (the log-probs
    are used as given). ``options`` are ``LossOptions`` fields (``label_smoothing``, ``discopop_tau``, …).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``; rewards are
        ``β·(policy − reference)`` of the log-probs passed in, detached.
    """
    x = PairLogps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return preference_losses(x, LossOptions(beta=beta, **options), loss_type)


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margins: Tensor | None = None,
    center_rewards_coefficient: float = 0.0,
) -> Tensor:
    """Bradley–Terry negative log-likelihood ``−log σ(r_c − r_r − m)``, unreduced ``(B,)``.

    ``margins`` m: how much better chosen is when the data says (Llama 2, Touvron et al. 2023, eq. 2).
    ``center_rewards_coefficient`` c adds ``c·(r_c + r_r)²``, pulling rewards towards zero mean
    (Eisenstein et al. 2023), which the Bradley–Terry loss alone leaves free.
    """
    difference = chosen_rewards - rejected_rewards
    if margins is not None:
        difference = difference - margins
    losses = -F.logsigmoid(difference)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return losses
