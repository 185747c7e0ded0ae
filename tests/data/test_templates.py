"""Chat templates: hh-rlhf dialogues rendered as an instruct model's conversations, prompt tokens shared."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from hhalign.data.pairs import PairTokenizer
from hhalign.data.records import Record
from hhalign.data.templates import ChatTemplate, to_messages
from hhalign.errors import ConfigError

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '[' + m['role'] + '] ' + m['content'] + eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}"
)
PROMPT = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant:"


@pytest.fixture
def chat_tokenizer(tokenizer):
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = TEMPLATE
    return templated


def test_dialogue_becomes_messages():
    assert to_messages(PROMPT) == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "how are you?"},
    ]


def test_pairs_share_the_rendered_prompt_and_end_with_one_eos(chat_tokenizer):
    tokenize = PairTokenizer(chat_tokenizer, 256, template=ChatTemplate(chat_tokenizer))
    [pair] = tokenize([Record(" fine, thanks.", " go away.", PROMPT, "t")])
    bos, eos = chat_tokenizer.bos_token, chat_tokenizer.eos_token
    expected_prompt = f"{bos}[user] hi there{eos}[assistant] hello!{eos}[user] how are you?{eos}[assistant] "
    assert chat_tokenizer.decode(pair.prompt) == expected_prompt
    assert pair.prompt.count(chat_tokenizer.bos_token_id) == 1  # the template's BOS, not a second one
    assert chat_tokenizer.decode(pair.chosen) == f"fine, thanks.{eos}"
    assert chat_tokenizer.decode(pair.rejected) == f"go away.{eos}"
    assert pair.chosen[-1] == chat_tokenizer.eos_token_id and pair.chosen[-2] != chat_tokenizer.eos_token_id


def test_long_templated_prompts_lose_whole_turns(chat_tokenizer):
    tokenize = PairTokenizer(chat_tokenizer, 24, template=ChatTemplate(chat_tokenizer))  # prompt: 32 whole, 15 cut
    [pair] = tokenize([Record(" fine.", " no.", PROMPT, "t")])
    text = chat_tokenizer.decode(pair.prompt)
    assert "hi there" not in text and text.endswith("[user] how are you?<|endoftext|>[assistant] ")
    assert tokenize.counts["cut:prompt"] == 1


def test_a_tokenizer_without_a_template_is_a_clear_error(tokenizer, tiny_dir: Path, small_jsonl: Path):
    from hhalign.data.datamodule import PreferenceDataModule

    with pytest.raises(ConfigError, match="has no chat template; turn data.chat_template off"):
        PreferenceDataModule(str(small_jsonl), str(tiny_dir), chat_template=True).setup("fit")


def test_generate_uses_the_template(chat_tokenizer, tiny_dir: Path):
    from hhalign.models.generation import Sampling
    from hhalign.models.loading import load_model
    from hhalign.tools.use import generate_reply

    model = load_model(str(tiny_dir)).eval()
    prompts = []
    generate = model.generate
    model.generate = lambda input_ids, **kw: prompts.append(input_ids) or generate(input_ids=input_ids, **kw)
    greedy = Sampling(max_new_tokens=4, temperature=0.0)
    reply = generate_reply(model, chat_tokenizer, "How do I bake bread?", greedy, chat=True)
    assert reply == generate_reply(model, chat_tokenizer, "How do I bake bread?", greedy, chat=True)
    bos, eos = chat_tokenizer.bos_token, chat_tokenizer.eos_token
    assert chat_tokenizer.decode(prompts[0][0]) == f"{bos}[user] How do I bake bread?{eos}[assistant] "


def test_sft_targets_are_the_assistant_replies_of_the_rendering(chat_tokenizer):
    from hhalign.data.dialogues import DialogueTokenizer

    dialogue_text = PROMPT + " fine, thanks."
    tokenize = DialogueTokenizer(chat_tokenizer, 256, ChatTemplate(chat_tokenizer))
    [dialogue] = tokenize([Record(dialogue_text, "x", None, "t")])
    eos = chat_tokenizer.eos_token
    messages = to_messages(dialogue_text)
    assert chat_tokenizer.decode(dialogue.ids) == chat_tokenizer.apply_chat_template(messages, tokenize=False)
    targets = [i for i, t in zip(dialogue.ids, dialogue.targets, strict=True) if t]
    assert chat_tokenizer.decode(targets) == f"hello!{eos}fine, thanks.{eos}"  # role headers are context
    assert dialogue.ids.count(chat_tokenizer.bos_token_id) == 1
    short = DialogueTokenizer(chat_tokenizer, 20, ChatTemplate(chat_tokenizer))([Record(dialogue_text, "x", None, "t")])
    assert "hi there" not in chat_tokenizer.decode(short[0].ids) and "fine" in chat_tokenizer.decode(short[0].ids)
