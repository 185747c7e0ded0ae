"""RewardModule: a scalar head on a causal-LM backbone, trained with the Bradley–Terry loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hhalign.checkpoint_files import REWARD_STATS_KEY
from hhalign.data.batches import AnyPairBatch, SequenceBatch
from hhalign.losses.reward import bradley_terry_loss
from hhalign.models.forward import model_inputs, score_head, sequence_rewards
from hhalign.models.loading import load_model
from hhalign.objectives.base import AlignmentModule
from hhalign.objectives.outputs import PairOutputs

__all__ = ["RewardModule"]


class RewardModule(AlignmentModule):
    """Bradley–Terry reward model over ``AutoModelForSequenceClassification`` with one label.

    The reward is read at each row's last real token (the appended EOS), found from the attention
    mask. The library's own pooling looks for the first ``pad_token_id``, which reads the wrong
    position whenever pad equals EOS, so the backbone and the head are called here directly.

    Args:
        center_rewards_coefficient: Weight of ``(r_c + r_r)²`` in the loss (0: off), centring rewards.

    Pairs whose records carry a ``margin`` are trained with it (``bradley_terry_loss``). Each validation
    also measures the mean and standard deviation of the rewards it saw (``reward_stats``): they are
    saved in checkpoints and with exported models, so users can normalise scores.
    """

    head = "reward"

    def __init__(self, model_name_or_path: str, center_rewards_coefficient: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, **kwargs)
        self.model: nn.Module | None = None
        self.reward_stats: dict[str, float] = {}
        self._moments = torch.zeros(3, dtype=torch.float64)  # count, sum, sum of squares

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model = load_model(self.hparams.model_name_or_path, head="reward", **self.load_kwargs())
        self.model = self.prepare_trainable(model)

    def score_head(self) -> nn.Module:
        return score_head(self.trainable_module())

    def rewards(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Scalar reward of each row, ``(N,)`` float32, read at its last real token."""
        return self.batch_rewards(SequenceBatch(input_ids, attention_mask, attention_mask))

    def batch_rewards(self, batch: SequenceBatch | AnyPairBatch) -> Tensor:
        """Rewards of the sequences of a batch read at each one's last real token, ``(N,)`` float32: one per
        row of plain rows, and for pairs of either layout chosen first, ``(2B,)``."""
        model = self.trainable_module()
        return sequence_rewards(model, model_inputs(model, batch, self.hparams.shared_prompt))

    def pair_outputs(self, batch: AnyPairBatch) -> PairOutputs:
        rewards = self.batch_rewards(batch)
        if not self.training:
            values = rewards.detach().double().cpu()
            self._moments += torch.stack([values.new_tensor(len(values)), values.sum(), (values**2).sum()])
        chosen, rejected = rewards.chunk(2)
        losses = bradley_terry_loss(chosen, rejected, batch.margins, self.hparams.center_rewards_coefficient)
        return PairOutputs(losses, chosen.detach(), rejected.detach())

    def on_validation_epoch_start(self) -> None:
        self._moments.zero_()

    def on_validation_epoch_end(self) -> None:
        moments = self._moments.to(self.device)
        if self._trainer is not None:
            moments = self.trainer.strategy.reduce(moments, reduce_op="sum")
        count, total, squares = (float(v) for v in moments)
        if count > 0:
            mean = total / count
            self.reward_stats = {"mean": mean, "std": max(squares / count - mean**2, 0.0) ** 0.5, "count": count}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[REWARD_STATS_KEY] = self.reward_stats

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.reward_stats = checkpoint.get(REWARD_STATS_KEY, {})
