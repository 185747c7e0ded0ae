"""hh-rlhf dialogues through a tokenizer's chat template, for aligning instruct models in their own format.

``"\\n\\nHuman:"`` turns become ``user`` messages and ``"\\n\\nAssistant:"`` turns ``assistant`` messages.
A prompt is rendered with the generation prompt appended; a response is what the template adds to the
prompt's rendering when the reply joins the conversation, so every response of a prompt shares the
prompt's text, and tokens, exactly.
"""

from __future__ import annotations

from typing import Any

from hhalign.data.pairs import ASSISTANT, HUMAN, TURN_MARKERS
from hhalign.errors import ConfigError

_ROLES = {HUMAN: "user", ASSISTANT: "assistant"}


def to_messages(text: str) -> list[dict[str, str]]:
    """Chat messages of an hh-rlhf dialogue; a trailing empty assistant turn (a prompt) is left out."""
    messages: list[dict[str, str]] = []
    role = None
    for part in TURN_MARKERS.split(text):
        if part in _ROLES:
            role = _ROLES[part]
        elif role is not None:
            messages.append({"role": role, "content": part.strip()})
    while messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


class ChatTemplate:
    """Render prompts and responses with ``tokenizer.apply_chat_template``."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"tokenizer {tokenizer.name_or_path!r} has no chat template; turn data.chat_template off "
                "(raw hh-rlhf text) or use an instruct model's tokenizer"
            )
        self.tokenizer = tokenizer

    def prompt(self, prompt_text: str) -> str:
        messages = to_messages(prompt_text)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def pieces(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        """``(text, is_target)`` pieces of a conversation; concatenated, the template's rendering. Each
        assistant turn is its header (the generation prompt: context) then its reply and end-of-turn
        marker (the target); every other turn is context."""
        pieces, previous = [], ""
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                header = self.tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
                self._check_prefix(previous, header)
                pieces.append((header[len(previous) :], False))
                previous = header
            rendered = self.tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            self._check_prefix(previous, rendered)
            pieces.append((rendered[len(previous) :], message["role"] == "assistant"))
            previous = rendered
        return [(text, target) for text, target in pieces if text]

    @staticmethod
    def _check_prefix(prefix: str, text: str) -> None:
        if not text.startswith(prefix):
            raise ConfigError(
                "the tokenizer's chat template does not render a conversation turn by turn (its text for the "
                "first turns changes when a turn is added), so targets cannot be placed; turn data.chat_template off"
            )

    def response(self, prompt_text: str, response_text: str) -> str:
        """The text the template adds for the reply, its end-of-turn marker included (trailing space cut)."""
        messages = to_messages(prompt_text)
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        reply = {"role": "assistant", "content": response_text.strip()}
        full = self.tokenizer.apply_chat_template([*messages, reply], tokenize=False)
        if not full.startswith(prompt):
            raise ConfigError(
                "the tokenizer's chat template does not render a conversation as its prompt followed by the reply, "
                "so chosen and rejected could not share their prompt tokens; turn data.chat_template off"
            )
        return full[len(prompt) :].rstrip()
