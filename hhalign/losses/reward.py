"""The reward model's loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


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
