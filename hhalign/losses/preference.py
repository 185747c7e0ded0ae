"""The pairwise preference losses (DPO and its family) as a table of pure functions.

Every loss reads per-pair log-probs (``PairLogps``, each ``(B,)``) and returns an unreduced ``(B,)`` tensor;
``preference_losses`` adds the named ones up and gives the rewards, detached. The caller takes the mean, so
the same functions serve training, validation and per-pair diagnostics. A new loss is a function and a row
of ``PREFERENCE_LOSSES``; ``LossType``, which the command line validates, follows the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hhalign.errors import ConfigError


def implicit_rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """DPO's implicit reward ``β·(log π(y|x) − log π_ref(y|x))``, detached."""
    return (beta * (policy_logps - ref_logps)).detach()


@dataclass(frozen=True)
class PairLogps:
    """Per-pair log-probs, each ``(B,)``: policy and reference sums over each response, and the
    response token counts. ``ref_*`` are None for reference-free losses; counts of None mean the
    log-probs are used as given, also by the losses that read per-token means."""

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
    """NLL of the chosen response (RPO, Pang et al. 2024): its mean negative log-prob per token, ``−ā_c``;
    a term to add to a preference loss, e.g. ``[sigmoid, sft]``."""
    chosen, _ = x.policy_means()
    return -chosen


def _log_odds(mean_logps: Tensor) -> Tensor:
    """``log(p / (1 − p))`` of ``p = exp(ā)``, with ``log(1 − eᵃ)`` as ``log(−expm1(a))``, exact near p = 1."""
    return mean_logps - torch.log(-torch.expm1(mean_logps.clamp(max=-1e-12)))


def _orpo(x: PairLogps, o: LossOptions) -> Tensor:
    """ORPO, Hong et al. 2024 eq. 6-7, reference-free: ``−ā_c − λ·log σ(log odds_c − log odds_r)`` on
    per-token-averaged log-probs (odds ``p/(1−p)`` of ``p = exp ā``), λ being ``beta``."""
    chosen, rejected = x.policy_means()
    return -chosen - o.beta * F.logsigmoid(_log_odds(chosen) - _log_odds(rejected))


@dataclass(frozen=True)
class LossSpec:
    """A loss of the table: its function, whether it needs reference log-probs, and whether it can stand
    alone (a ``term``, like ``sft``, must be added to a preference loss)."""

    function: Callable[[PairLogps, LossOptions], Tensor]
    reference: bool = True
    term: bool = False


PREFERENCE_LOSSES: dict[str, LossSpec] = {
    "sigmoid": LossSpec(_sigmoid),
    "robust": LossSpec(_robust),
    "hinge": LossSpec(_hinge),
    "ipo": LossSpec(_ipo),
    "exo_pair": LossSpec(_exo_pair),
    "nca_pair": LossSpec(_nca_pair),
    "bco_pair": LossSpec(_bco_pair),
    "sppo_hard": LossSpec(_sppo_hard),
    "aot": LossSpec(_aot),
    "apo_zero": LossSpec(_apo_zero),
    "apo_down": LossSpec(_apo_down),
    "discopop": LossSpec(_discopop),
    "simpo": LossSpec(_simpo, reference=False),
    "orpo": LossSpec(_orpo, reference=False),
    "sft": LossSpec(_sft, reference=False, term=True),
}
"""The preference losses by ``loss_type``."""

LossType = Literal[tuple(PREFERENCE_LOSSES)]  # type: ignore[valid-type]
"""The ``loss_type`` values, a type the command line validates at parse time."""


def as_list(loss_type: str | list[str] | tuple[str, ...]) -> list[str]:
    return [loss_type] if isinstance(loss_type, str) else list(loss_type)


def needs_reference(loss_type: str | list[str]) -> bool:
    return any(PREFERENCE_LOSSES[name].reference for name in as_list(loss_type))


def check_preference_options(
    beta: float,
    loss_type: str | list[str],
    loss_weights: list[float] | None = None,
    label_smoothing: float = 0.0,
) -> None:
    """Raise a ``ConfigError`` naming the option and its valid values; run once, when a module is built."""
    names = as_list(loss_type)
    for name in names:
        if name not in PREFERENCE_LOSSES:
            raise ConfigError(f"unknown loss_type {name!r}; choose one of {', '.join(PREFERENCE_LOSSES)}")
    if all(PREFERENCE_LOSSES[name].term for name in names):
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
    SimPO's ``β·(mean log π)`` when every loss is reference-free; detached. The options are those
    ``check_preference_options`` accepted.
    """
    names = as_list(loss_type)
    weights = loss_weights or [1.0] * len(names)
    losses = sum(w * PREFERENCE_LOSSES[n].function(x, options) for n, w in zip(names, weights, strict=True))
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
