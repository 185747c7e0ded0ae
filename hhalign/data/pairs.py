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

from hhalign.data.records import Record, Turns
from hhalign.errors import ConfigError, ModelLoadError

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


def shorter_prompts(prompt: Turns) -> list[Turns]:
    """The prompt with whole exchanges dropped from the left, longest first: text from each later human turn;
    messages from each later user turn, the leading system messages kept."""
    if isinstance(prompt, str):
        return [prompt[start:] for start in turn_starts(prompt) if start > 0]
    system = 0
    while system < len(prompt) and prompt[system]["role"] == "system":
        system += 1
    starts = [i for i, m in enumerate(prompt) if m["role"] == "user" and i > system]
    return [prompt[:system] + prompt[i:] for i in starts]


def is_empty(turns: Turns) -> bool:
    return not turns.strip() if isinstance(turns, str) else not any(m["content"].strip() for m in turns)


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

    def _prompt_text(self, prompt: Turns) -> str:
        if self.template is not None:
            return self.template.prompt(prompt)
        return self._plain(prompt)

    def _response_text(self, prompt: Turns, response: Turns) -> str:
        if self.template is not None:
            return self.template.response(prompt, response)
        return self._plain(response)

    @staticmethod
    def _plain(turns: Turns) -> str:
        if not isinstance(turns, str):
            raise ConfigError("conversational records need a chat template to be rendered (data.chat_template)")
        return turns

    def encode_prompt(self, prompt: Turns) -> list[int]:
        """One prompt's ids as training sees them (BOS or template included, not truncated)."""
        return self.bos + self._encode([self._prompt_text(prompt)])[0]

    def encode_response(self, prompt: Turns, response: Turns) -> list[int]:
        """One response's ids as training sees them (end-of-turn or EOS included)."""
        return self._response(self._encode([self._response_text(prompt, response)])[0])

    def encode_prompt_texts(self, prompts: list[Turns]) -> list[list[int]]:
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

    def fit_prompt(self, prompt: Turns, ids: list[int], budget: int) -> list[int] | None:
        """The prompt's ids with BOS within ``budget`` tokens, whole human turns cut from the left; None when
        its last human turn alone does not fit."""
        if len(self.bos) + len(ids) <= budget:
            return self.bos + ids
        for cut in shorter_prompts(prompt):
            shorter = self.bos + self._encode([self._prompt_text(cut)])[0]
            if len(shorter) <= budget:
                self.counts["cut:prompt"] += 1
                return shorter
        return None

    def __call__(self, records: list[Record]) -> list[TokenizedPair]:
        """Tokenize a list of records; the dropped ones are only counted."""
        texts: list[tuple[Turns, Turns, Turns]] = []
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

    def completions(self, pairs: list[tuple[Turns, Turns]]) -> list[tuple[list[int], list[int]] | None]:
        """``(prompt ids, completion ids)`` of each ``(prompt, completion)``, bounded as a pair's prompt and longer
        response are; None (counted) where the prompt does not fit."""
        prompts = self._encode([self._prompt_text(p) for p, _ in pairs])
        replies = self._encode([self._response_text(p, c) for p, c in pairs])
        out: list[tuple[list[int], list[int]] | None] = []
        for (prompt, _), prompt_ids, reply_ids in zip(pairs, prompts, replies, strict=True):
            reply_ids = self._response(reply_ids)
            fitted = self.fit_prompt(prompt, prompt_ids, self.max_length - len(reply_ids))
            if fitted is None:
                self.counts["drop:prompt_too_long"] += 1
            out.append(None if fitted is None else (fitted, reply_ids))
        return out

    def _parts(self, record: Record) -> tuple[Turns, Turns, Turns] | None:
        if not record.is_pair:
            self.counts["drop:unpaired" if record.completion is not None else "drop:prompt_only"] += 1
            return None
        assert record.chosen is not None and record.rejected is not None
        if record.prompt is not None:
            parts: tuple[Turns, Turns, Turns] | None = (record.prompt, record.chosen, record.rejected)
        else:
            parts = split_dialogues(record.chosen, record.rejected)  # type: ignore[arg-type]
        if parts is None:
            self.counts["drop:no_shared_prompt"] += 1
        elif is_empty(parts[1]) or is_empty(parts[2]):
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
