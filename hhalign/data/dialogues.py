"""SFT examples: a chosen hh-rlhf dialogue whose assistant turns are the targets.

Each turn is tokenized on its own and the pieces concatenated, so the target mask follows the turn
boundaries exactly; the human turns, the role markers and the padding carry no loss.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hhalign.data.pairs import ASSISTANT, HUMAN, TURN_MARKERS, leading_bos
from hhalign.data.records import Message, Record
from hhalign.data.templates import as_messages, reply_messages
from hhalign.errors import ConfigError


@dataclass(frozen=True)
class TokenizedDialogue:
    """Token ids of a dialogue and, aligned with them, 1 on assistant-turn tokens (EOS included)."""

    ids: list[int]
    targets: list[int]


def dialogue_pieces(text: str) -> list[tuple[str, bool]]:
    """``(text, is_target)`` pieces of a dialogue: markers and human turns are context, assistant
    turns are targets. Concatenated, the pieces give back ``text``."""
    pieces, role = [], None
    for part in TURN_MARKERS.split(text):
        if part in (HUMAN, ASSISTANT):
            role = part
            pieces.append((part, False))
        elif part:
            pieces.append((part, role == ASSISTANT))
    return pieces


class DialogueTokenizer:
    """Tokenize chosen dialogues for SFT, counting cuts and drops like ``PairTokenizer``.

    A dialogue over ``max_length`` loses whole human turns from the left (BOS kept); if its last
    exchange alone is too long it is cut at ``max_length`` and gets no EOS. With a ``template``
    (``hhalign.data.templates.ChatTemplate``) the turns are the template's rendering of the messages, and the
    template places BOS and the end-of-turn markers.
    """

    def __init__(self, tokenizer: Any, max_length: int, template: Any = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.template = template
        self.bos = [] if template is not None else leading_bos(tokenizer)
        self.counts: Counter[str] = Counter()

    def _versions(self, dialogue: str | list[Message]) -> Iterator[list[tuple[str, bool]]]:
        """The dialogue's pieces, then the same with leading exchanges dropped, one human turn at a time (the
        leading system messages kept)."""
        if isinstance(dialogue, str):
            pieces = dialogue_pieces(dialogue)
            yield pieces
            yield from (pieces[i:] for i, (part, _) in enumerate(pieces) if part == HUMAN and i > 0)
            return
        system = 0
        while system < len(dialogue) and dialogue[system]["role"] == "system":
            system += 1
        yield self.template.pieces(dialogue)
        for i in range(system + 1, len(dialogue)):
            if dialogue[i]["role"] == "user":
                yield self.template.pieces(dialogue[:system] + dialogue[i:])

    def _dialogue(self, record: Record) -> str | list[Message] | None:
        """The record's chosen conversation: text without a template, messages with one; None when it has no
        assistant turn with content."""
        if not record.is_pair:
            return None
        chosen, prompt = record.chosen, record.prompt
        if self.template is None:
            if not isinstance(chosen, str) or not isinstance(prompt, (str, type(None))):
                raise ConfigError("conversational records need a chat template to be rendered (data.chat_template)")
            text = chosen if prompt is None else prompt + chosen
            found = any(is_target and part.strip() for part, is_target in dialogue_pieces(text))
            return text if found else None
        if prompt is None:  # an hh-rlhf transcript: its turns
            messages = as_messages(chosen)  # type: ignore[arg-type]
        else:
            messages = [*as_messages(prompt), *reply_messages(chosen)]  # type: ignore[arg-type]
        found = any(m["role"] == "assistant" and m["content"].strip() for m in messages)
        return messages if found else None

    def _tokenize(self, pieces: list[tuple[str, bool]]) -> TokenizedDialogue:
        ids, targets = list(self.bos), [0] * len(self.bos)
        encoded = self.tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
        for piece_ids, (_, is_target) in zip(encoded, pieces, strict=True):
            ids += piece_ids
            targets += [int(is_target)] * len(piece_ids)
        ended = pieces[-1][1]  # the dialogue ends with an assistant turn
        if ended and (self.template is None or ids[-1] != self.tokenizer.eos_token_id):
            ids.append(self.tokenizer.eos_token_id)
            targets.append(1)
        return TokenizedDialogue(ids, targets)

    def __call__(self, records: list[Record]) -> list[TokenizedDialogue]:
        dialogues = []
        for record in records:
            conversation = self._dialogue(record)
            if conversation is None:
                self.counts["drop:no_assistant_turn"] += 1
                continue
            versions = self._versions(conversation)
            dialogue = self._tokenize(next(versions))
            for shorter in versions:
                if len(dialogue.ids) <= self.max_length:
                    break
                dialogue = self._tokenize(shorter)
                self.counts["cut:dialogue_turns"] += 1
            if len(dialogue.ids) > self.max_length:
                dialogue = TokenizedDialogue(dialogue.ids[: self.max_length], dialogue.targets[: self.max_length])
                self.counts["cut:dialogue_end"] += 1
            if not any(dialogue.targets):
                self.counts["drop:no_target_after_truncation"] += 1
                continue
            dialogues.append(dialogue)
        return dialogues
