"""Dialogues through a tokenizer's chat template, for aligning instruct models in their own format.

Conversational records are messages already; in hh-rlhf text ``"\\n\\nHuman:"`` turns become ``user`` messages
and ``"\\n\\nAssistant:"`` turns ``assistant`` messages, and plain text with neither is one user turn.
A prompt is rendered with the generation prompt appended; a response is what the template adds to the
prompt's rendering when the reply joins the conversation, so every response of a prompt shares the
prompt's text, and tokens, exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hhalign.data.pairs import ASSISTANT, HUMAN, TURN_MARKERS
from hhalign.data.records import Message, Turns
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


def as_messages(turns: Turns) -> list[Message]:
    """A prompt or dialogue as messages: messages as they are, hh-rlhf text parsed, plain text one user turn."""
    if isinstance(turns, list):
        return turns
    return to_messages(turns) or [{"role": "user", "content": turns.strip()}]


def reply_messages(turns: Turns) -> list[Message]:
    """A reply as messages: a string is one assistant message (surrounding space cut, as hh-rlhf's replies)."""
    return turns if isinstance(turns, list) else [{"role": "assistant", "content": turns.strip()}]


def template_for(tokenizer: Any, option: bool | str, conversational: str | None) -> ChatTemplate | None:
    """The chat template a run renders with: none for text records unless ``data.chat_template`` is on; always
    when there are conversational records (``conversational`` names the first one's origin). A string option is
    a Jinja template (a file, or the text itself) that replaces the tokenizer's."""
    if isinstance(option, str):
        path = Path(option).expanduser()
        text = path.read_text() if path.is_file() else option
        if "{%" not in text and "{{" not in text:
            raise ConfigError(
                f"--data.chat_template {option!r} is neither true/false, a Jinja template file nor a template"
            )
        tokenizer.chat_template = text
        return ChatTemplate(tokenizer)
    if option or conversational:
        return ChatTemplate(tokenizer, None if option else conversational)
    return None


class ChatTemplate:
    """Render prompts and responses with ``tokenizer.apply_chat_template``."""

    def __init__(self, tokenizer: Any, messages_at: str | None = None) -> None:
        """``messages_at``: where the conversational records that need the template begin, for the error."""
        if not getattr(tokenizer, "chat_template", None):
            name = tokenizer.name_or_path
            if messages_at is not None:
                raise ConfigError(
                    f"{messages_at}: conversational records are rendered by the tokenizer's chat template, and "
                    f"tokenizer {name!r} has none; set --data.chat_template to a Jinja template file, or use an "
                    "instruct model's tokenizer"
                )
            raise ConfigError(
                f"tokenizer {name!r} has no chat template; turn data.chat_template off (raw hh-rlhf text) or use an "
                "instruct model's tokenizer"
            )
        self.tokenizer = tokenizer

    def prompt(self, prompt: Turns) -> str:
        return self.tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)

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

    def response(self, prompt: Turns, response: Turns) -> str:
        """The text the template adds for the reply, its end-of-turn marker included (trailing space cut)."""
        messages = as_messages(prompt)
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template([*messages, *reply_messages(response)], tokenize=False)
        if not full.startswith(rendered):
            raise ConfigError(
                "the tokenizer's chat template does not render a conversation as its prompt followed by the reply, "
                "so chosen and rejected could not share their prompt tokens; turn data.chat_template off"
            )
        return full[len(rendered) :].rstrip()
