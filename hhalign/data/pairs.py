"""From text records to token pairs that share their prompt tokens exactly.

Tokenizing ``prompt + response`` as one string lets BPE merge across the boundary, so chosen and
rejected could disagree on the prompt. Here the prompt is tokenized once and each response
separately, then concatenated: the two sequences of a pair differ only after the prompt.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hhalign.data.records import Record
from hhalign.errors import ModelLoadError

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
TURN_MARKERS = re.compile(f"({re.escape(HUMAN)}|{re.escape(ASSISTANT)})")
"""Splits a dialogue into its markers and turns, keeping the markers (``TURN_MARKERS.split``)."""


@dataclass(frozen=True)
class TokenizedPair:
    """Prompt ids (BOS included when the tokenizer uses one) and the two response ids."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    margin: float | None = None
    ref_logps: tuple[float, float] | None = None  # the reference's summed log-probs of chosen, rejected


def split_dialogues(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """Split two hh-rlhf dialogues into ``(prompt, chosen_response, rejected_response)``.

    The prompt is their longest common prefix cut back to just after its last ``ASSISTANT``
    marker, so a response that itself contains the marker stays whole. None when there is none.
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT)
    if cut < 0:
        return None
    end = cut + len(ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def turn_starts(prompt: str) -> list[int]:
    """Character offsets where a human turn begins, the places a prompt may be cut from the left."""
    starts, at = [], prompt.find(HUMAN)
    while at >= 0:
        starts.append(at)
        at = prompt.find(HUMAN, at + 1)
    return starts


class PairTokenizer:
    """Tokenize and truncate records, counting every cut and drop by reason.

    ``max_length`` bounds prompt + the longer response. A response over ``max_response_length``
    tokens is cut and gets no EOS, since it did not end. A prompt over the remaining budget loses
    whole human turns from the left; a pair whose last human turn alone does not fit is dropped.

    With a ``template`` (``hhalign.data.templates.ChatTemplate``) prompts and responses are rendered through
    the tokenizer's chat template; the template then places BOS, and a response gets an EOS only when
    its end-of-turn marker is not the EOS already.
    """

    def __init__(
        self, tokenizer: Any, max_length: int, max_response_length: int | None = None, template: Any = None
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise ModelLoadError(
                f"tokenizer {tokenizer.name_or_path!r} has no EOS token; set one (tokenizer.eos_token) "
                "so that responses can be marked as ended"
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_response_length = max_response_length or max_length
        self.template = template
        self.bos = [] if template is not None else leading_bos(tokenizer)
        self.counts: Counter[str] = Counter()

    def _prompt_text(self, prompt: str) -> str:
        return self.template.prompt(prompt) if self.template is not None else prompt

    def _response_text(self, prompt: str, response: str) -> str:
        return self.template.response(prompt, response) if self.template is not None else response

    def encode_prompt(self, prompt: str) -> list[int]:
        """One prompt's ids as training sees them (BOS or template included, not truncated)."""
        return self.bos + self._encode([self._prompt_text(prompt)])[0]

    def encode_response(self, prompt: str, response: str) -> list[int]:
        """One response's ids as training sees them (end-of-turn or EOS included)."""
        return self._response(self._encode([self._response_text(prompt, response)])[0])

    def encode_prompt_texts(self, prompts: list[str]) -> list[list[int]]:
        """Prompts' ids before ``fit_prompt`` (no BOS yet, template applied), in one tokenizer call."""
        return self._encode([self._prompt_text(p) for p in prompts])

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def _response(self, ids: list[int]) -> list[int]:
        if self.template is None or not ids or ids[-1] != self.tokenizer.eos_token_id:
            ids = ids + [self.tokenizer.eos_token_id]
        if len(ids) > self.max_response_length:
            self.counts["cut:response"] += 1
            return ids[: self.max_response_length]
        return ids

    def fit_prompt(self, prompt: str, ids: list[int], budget: int) -> list[int] | None:
        """The prompt's ids with BOS within ``budget`` tokens, whole human turns cut from the left; None when
        its last human turn alone does not fit."""
        if len(self.bos) + len(ids) <= budget:
            return self.bos + ids
        for start in (s for s in turn_starts(prompt) if s > 0):
            shorter = self.bos + self._encode([self._prompt_text(prompt[start:])])[0]
            if len(shorter) <= budget:
                self.counts["cut:prompt"] += 1
                return shorter
        return None

    def __call__(self, records: list[Record]) -> list[TokenizedPair]:
        """Tokenize a list of records; the dropped ones are only counted."""
        texts: list[tuple[str, str, str]] = []
        margins: list[float | None] = []
        for record in records:
            parts = self._parts(record)
            if parts is not None:
                texts.append(parts)
                margins.append(record.margin)
        prompts = self._encode([self._prompt_text(p) for p, _, _ in texts])
        chosen = self._encode([self._response_text(p, c) for p, c, _ in texts])
        rejected = self._encode([self._response_text(p, r) for p, _, r in texts])
        pairs = []
        for (prompt_text, _, _), prompt_ids, chosen_ids, rejected_ids, margin in zip(
            texts, prompts, chosen, rejected, margins, strict=True
        ):
            chosen_ids, rejected_ids = self._response(chosen_ids), self._response(rejected_ids)
            prompt_ids = self.fit_prompt(
                prompt_text, prompt_ids, self.max_length - max(len(chosen_ids), len(rejected_ids))
            )
            if prompt_ids is None:
                self.counts["drop:prompt_too_long"] += 1
            elif chosen_ids == rejected_ids:
                self.counts["drop:identical_after_truncation"] += 1
            else:
                pairs.append(TokenizedPair(prompt_ids, chosen_ids, rejected_ids, margin))
        return pairs

    def _parts(self, record: Record) -> tuple[str, str, str] | None:
        if record.prompt is not None and not record.chosen and not record.rejected:
            self.counts["drop:prompt_only"] += 1
            return None
        if record.prompt is not None:
            parts: tuple[str, str, str] | None = (record.prompt, record.chosen, record.rejected)
        else:
            parts = split_dialogues(record.chosen, record.rejected)
        if parts is None:
            self.counts["drop:no_assistant_turn"] += 1
        elif not parts[1].strip() or not parts[2].strip():
            self.counts["drop:empty_response"] += 1
        elif parts[1] == parts[2]:
            self.counts["drop:identical"] += 1
        else:
            return parts
        return None


def leading_bos(tokenizer: Any) -> list[int]:
    """``[bos_id]`` when the tokenizer puts BOS in front of a text by itself, else ``[]``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []
