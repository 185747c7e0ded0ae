"""A frozen reward model as an online reward: an hhalign reward-model export or ``.ckpt``, or any
``AutoModelForSequenceClassification`` folder with one output, scoring token sequences at their last token."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hhalign.checkpoint_files import is_checkpoint_file, read_reward_stats, read_trained_weights
from hhalign.data.batches import collate_groups, collate_sequences
from hhalign.errors import ConfigError, UserError
from hhalign.models.forward import model_inputs, sequence_rewards
from hhalign.models.loading import load_model, load_tokenizer


def check_reward_model(path: str, option: str = "--judge") -> None:
    """A reward model must have been trained as one: a causal LM would load with a random score head."""
    if is_checkpoint_file(path):
        head = read_trained_weights(path).head
    else:
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            raise UserError(f"{option} {path!r}: no config.json there; give a reward model's export folder or .ckpt")
        architectures = json.loads(config_file.read_text()).get("architectures") or []
        head = "reward" if any(a.endswith("ForSequenceClassification") for a in architectures) else "causal_lm"
    if head != "reward":
        raise UserError(
            f"{option} {path!r} is not a reward model (its head is {head}); give the export of an "
            "`hhalign fit --config configs/…/rm.yaml` run, e.g. outputs/smollm2/rm/export"
        )


def check_same_tokenizer(reward_path: str, policy_tokenizer: Any, option: str = "--model.reward_model") -> None:
    """The reward model reads the policy's token ids as they are, so it must share the policy's tokenizer:
    another vocabulary would score other words without an error anywhere."""
    theirs = load_tokenizer(reward_path)
    if theirs.get_vocab() != policy_tokenizer.get_vocab():
        raise ConfigError(
            f"{option} {reward_path!r} uses another tokenizer than the policy ({len(theirs)} vs "
            f"{len(policy_tokenizer)} tokens, or the same count with other ids); train the reward model from the "
            "policy's base model, or score text with a reward function (--model.reward_functions module:function)"
        )


class RewardModel:
    """A reward model held frozen and in eval mode outside the trained module (never in its checkpoints or its
    optimizer), on the device it is moved to; ``stats`` are its scores' validation ``mean`` and ``std`` where its
    hhalign export recorded them (``normalized`` puts a score on that scale)."""

    def __init__(
        self, model: nn.Module, name: str, batch_size: int = 16, stats: dict[str, float] | None = None
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.batch_size = batch_size
        self.stats = stats or {}

    @classmethod
    def load(cls, path: str, option: str = "--model.reward_model", **load_kwargs: Any) -> RewardModel:
        check_reward_model(path, option)
        return cls(load_model(path, head="reward", **load_kwargs), path, stats=read_reward_stats(path))

    def normalized(self, scores: Tensor) -> Tensor:
        """``(score − mean)/std`` with the validation statistics; the scores as they are without them."""
        if not self.stats.get("std"):
            return scores
        return (scores - self.stats["mean"]) / self.stats["std"]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> RewardModel:
        self.model.to(device)
        return self

    @torch.no_grad()
    def score_groups(self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]]) -> Tensor:
        """Rewards ``(P, K)`` of K completions of each prompt (each ending with its EOS, where a reward model
        reads), the prompt computed once per group where the attention takes the packed layout."""
        out = []
        step = max(1, self.batch_size // len(completions[0]))
        for start in range(0, len(prompts), step):
            batch = collate_groups(prompts[start : start + step], completions[start : start + step], pad_token_id=0).to(
                self.device
            )
            out.append(
                sequence_rewards(self.model, model_inputs(self.model, batch)).view(batch.completion_lengths.shape)
            )
        return torch.cat(out)

    @torch.no_grad()
    def score(self, sequences: Sequence[Sequence[int]]) -> Tensor:
        """Rewards ``(N,)`` of whole token sequences, read at each one's last token."""
        out = []
        for start in range(0, len(sequences), self.batch_size):
            batch = collate_sequences(sequences[start : start + self.batch_size], None, 0).to(self.device)
            out.append(sequence_rewards(self.model, model_inputs(self.model, batch)))
        return torch.cat(out) if out else torch.zeros(0)
