"""How hhalign runs a Hugging Face model over a typed batch: the backbone over every token, the LM head
only where a log-prob is read (real vocabularies are ~150k wide, and prompt logits are pure waste), and
there in chunks of tokens, recomputed in the backward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hhalign.data.batches import GroupBatch, PackedPairBatch, SequenceBatch
from hhalign.losses.logps import linear_token_logps, sum_by_sequence
from hhalign.models.layout import (
    MASK_ATTENTION,
    ScoredTokens,
    group_attention,
    last_tokens,
    mask_for_attention,
    scored_tokens,
    shared_prompt_attention,
    unpack,
    unpack_groups,
)

LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")
"""Config fields of models whose forward changes the logits after the head; those get the full forward."""


def attention_implementation(model: nn.Module) -> str:
    return str(getattr(model.config, "_attn_implementation", None))


def takes_shared_prompt(model: nn.Module) -> bool:
    """Whether the model's attention reads a dense 4D mask as given (flash and flex kernels do not)."""
    return attention_implementation(model) in MASK_ATTENTION


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that count real tokens only, so left-padded rows start at 0 like right-padded ones."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass(frozen=True)
class ModelInputs:
    """A batch in the layout the model runs it, with the attention mask (2D, or the 4D shared-prompt mask in
    the form the attention reads) and the positions."""

    batch: SequenceBatch | PackedPairBatch | GroupBatch
    attention_mask: Tensor
    position_ids: Tensor

    def forward_args(self) -> dict[str, Any]:
        """Keyword arguments of the model's forward; no KV cache, which a scoring pass never reads."""
        return {
            "input_ids": self.batch.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "use_cache": False,
        }


def model_inputs(
    model: nn.Module, batch: SequenceBatch | PackedPairBatch | GroupBatch, shared_prompt: bool = True
) -> ModelInputs:
    """The batch as the model reads it. A packed or group batch keeps its layout when ``shared_prompt`` is
    on and the attention takes a 4D mask, and is otherwise unpacked into plain rows on its device."""
    packed = isinstance(batch, (PackedPairBatch, GroupBatch))
    if packed and not (shared_prompt and takes_shared_prompt(model)):
        batch = unpack_groups(batch) if isinstance(batch, GroupBatch) else unpack(batch)
    if isinstance(batch, SequenceBatch):
        return ModelInputs(batch, batch.attention_mask, position_ids_from_mask(batch.attention_mask))
    allowed = group_attention(batch) if isinstance(batch, GroupBatch) else shared_prompt_attention(batch)
    dtype = next(model.parameters()).dtype
    mask = mask_for_attention(allowed, attention_implementation(model), dtype)
    return ModelInputs(batch, mask, batch.position_ids)


def unwrapped(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (its layers carry the adapters in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model: nn.Module) -> nn.Module:
    model = unwrapped(model)
    return getattr(model, model.base_model_prefix)


def _plain_head(model: nn.Module) -> bool:
    return all(getattr(model.config, name, None) in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)


@dataclass(frozen=True)
class ScoredStates:
    """A forward's result at the scored positions: the hidden states there and the LM head that reads them,
    or, for a model whose forward changes the logits after the head (or whose head is not a plain linear
    layer), the logits themselves. Log-probs come from it in chunks (``linear_token_logps``)."""

    scored: ScoredTokens
    hidden: Tensor | None = None
    head: nn.Linear | None = None
    logits: Tensor | None = None

    def token_logps(self, temperature: float = 1.0) -> Tensor:
        """The log-prob of each scored token, ``(N,)``, float32 at least; at a sampling ``temperature`` τ, of
        the distribution the samples came from, ``softmax(logits / τ)``."""
        if self.logits is not None:
            logits = self.logits.to(torch.promote_types(self.logits.dtype, torch.float32))
            return -F.cross_entropy(logits / temperature, self.scored.labels, reduction="none")
        assert self.hidden is not None and self.head is not None
        hidden, bias = self.hidden, self.head.bias
        if temperature != 1.0:  # (h/τ)Wᵀ + b/τ: the head is linear
            hidden, bias = hidden / temperature, None if bias is None else bias / temperature
        return linear_token_logps(hidden, self.head.weight, bias, self.scored.labels)

    def sequence_logps(self) -> tuple[Tensor, Tensor]:
        """Summed log-probs and token counts of every scored sequence, ``(n_sequences,)`` each."""
        return sum_by_sequence(self.token_logps(), self.scored.sequences, self.scored.n_sequences)

    def logits_at(self, index: Tensor) -> Tensor:
        """Logits ``(len(index), V)`` of some scored tokens, e.g. a chunk of them for a diagnostic."""
        if self.logits is not None:
            return self.logits[index]
        assert self.hidden is not None and self.head is not None
        return self.head(self.hidden[index])


def response_states(model: nn.Module, inputs: ModelInputs) -> ScoredStates:
    """Run ``model`` over ``inputs`` (from ``model_inputs``) and keep what its scored positions need: the
    backbone runs over every token, the LM head over none yet."""
    scored = scored_tokens(inputs.batch)
    model = unwrapped(model)
    head = model.get_output_embeddings()
    if isinstance(head, nn.Linear) and _plain_head(model):
        hidden = backbone(model)(**inputs.forward_args()).last_hidden_state
        return ScoredStates(scored, hidden=hidden[scored.rows, scored.predictors], head=head)
    logits = model(**inputs.forward_args()).logits[scored.rows, scored.predictors]
    return ScoredStates(scored, logits=logits)


def response_logps(model: nn.Module, inputs: ModelInputs) -> tuple[Tensor, Tensor]:
    """Summed log-probs and token counts of every response of ``inputs`` (from ``model_inputs``),
    ``(2B,)`` each for pairs, chosen sequences first."""
    return response_states(model, inputs).sequence_logps()


def last_hidden(model: nn.Module, inputs: ModelInputs) -> Tensor:
    """The backbone's hidden state at each sequence's last token, ``(2B, H)``, chosen first."""
    hidden = backbone(model)(**inputs.forward_args()).last_hidden_state
    rows, cols = last_tokens(inputs.batch)
    return hidden[rows, cols]


def score_head(model: nn.Module) -> nn.Module:
    """The linear sequence-classification head of a reward model (``score`` or ``classifier``)."""
    model = unwrapped(model)
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise TypeError(
        f"{type(model).__name__} has no 'score' or 'classifier' head; hhalign's reward models are decoder "
        "models whose sequence-classification head is a linear layer"
    )


def sequence_rewards(model: nn.Module, inputs: ModelInputs) -> Tensor:
    """A reward model's score of every sequence of ``inputs``, read at each one's last real token (found from
    the lengths: the library's own pooling looks for the first pad id, wrong whenever pad equals EOS),
    ``(N,)`` float32."""
    return score_head(model)(last_hidden(model, inputs)).squeeze(-1).float()


def token_values(model: nn.Module, inputs: ModelInputs) -> Tensor:
    """A critic's value before each scored token, ``(N,)`` float32: its scalar head read at the position that
    predicts the token (where a policy's log-prob of it is read), so values and log-probs line up token for
    token."""
    scored = scored_tokens(inputs.batch)
    hidden = backbone(model)(**inputs.forward_args()).last_hidden_state
    return score_head(model)(hidden[scored.rows, scored.predictors]).squeeze(-1).float()


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass: less memory for about a third more compute."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
