"""RewardModule: a scalar head on a causal-LM backbone, trained with the Bradley–Terry loss."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from hhalign.forward import last_hidden, model_inputs
from hhalign.loading import load_model
from hhalign.losses import bradley_terry_loss
from hhalign.modules.base import AlignmentModule, PairOutputs


class RewardModule(AlignmentModule):
    """Bradley–Terry reward model over ``AutoModelForSequenceClassification`` with one label.

    The reward is read at each row's last real token (the appended EOS), found from the attention
    mask. The library's own pooling looks for the first ``pad_token_id``, which reads the wrong
    position whenever pad equals EOS, so the backbone and the head are called here directly.
    """

    def __init__(self, model_name_or_path: str, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, **kwargs)
        self.model: nn.Module | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model = load_model(self.hparams.model_name_or_path, head="reward", **self.load_kwargs())
        self.model = self.prepare_trainable(model)

    def trainable_module(self) -> nn.Module:
        assert self.model is not None, "configure_model() has not run"
        return self.model

    def score_head(self) -> nn.Module:
        model = self.trainable_module()
        for name in ("score", "classifier"):
            head = getattr(model, name, None)
            if isinstance(head, nn.Module):
                return head
        raise TypeError(
            f"{type(model).__name__} has no 'score' or 'classifier' head; RewardModule supports "
            "decoder models whose sequence-classification head is a linear layer"
        )

    def rewards(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Scalar reward of each row, ``(N,)`` float32, read at its last real token."""
        return self.batch_rewards({"input_ids": input_ids, "attention_mask": attention_mask})

    def batch_rewards(self, batch: dict[str, Tensor]) -> Tensor:
        """Rewards of the sequences of a batch of either layout, chosen first, ``(2B,)`` float32
        (or one per row for plain rows without pairs)."""
        model = self.trainable_module()
        last = last_hidden(model, model_inputs(model, batch, self.hparams.shared_prompt))
        return self.score_head()(last).squeeze(-1).float()

    def pair_outputs(self, batch: dict[str, Tensor]) -> PairOutputs:
        chosen, rejected = self.batch_rewards(batch).chunk(2)
        return PairOutputs(bradley_terry_loss(chosen, rejected), chosen.detach(), rejected.detach())
