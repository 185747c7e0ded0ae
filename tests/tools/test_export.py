"""An exported reward model scores through plain ``transformers`` (templated, batched, padded) as inside hhalign."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hhalign.data.pairs import PairTokenizer
from hhalign.data.records import Record
from hhalign.data.templates import ChatTemplate
from hhalign.objectives.reward import RewardModule
from hhalign.tools.export import export_model

NEWLINE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<' + m['role'] + '>\\n' + m['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<assistant>\\n' }}{% endif %}"
)
"""Like SmolLM2's: every turn ends ``<eos>\\n``, so the text of a finished conversation ends after its EOS."""
CONVERSATIONS = [
    [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello, how can I help?"}],
    [{"role": "user", "content": "what is two and two?"}, {"role": "assistant", "content": "four"}],
    [
        {"role": "user", "content": "tell me a story"},
        {"role": "assistant", "content": "once upon a time"},
        {"role": "user", "content": "go on"},
        {"role": "assistant", "content": "there was a small model that learned to read its own end"},
    ],
]


def test_a_reward_export_reads_each_reply_at_its_eos_through_plain_transformers(tmp_path: Path, tiny_dir: Path):
    from hhalign.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_dir))
    tokenizer.chat_template = NEWLINE_TEMPLATE
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the case that went wrong
    module = RewardModule(str(tiny_dir))
    module.configure_model()
    module.eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(module.model.score.weight, std=1.0)  # a head whose reading position matters
    before = copy.deepcopy(module.model)
    out = export_model(module.model, tokenizer, tmp_path / "rm", {"head": "reward", "base": str(tiny_dir)})

    # hhalign's reading: prompt and reply tokenized as training does, the score at the reply's EOS
    tokenize = PairTokenizer(tokenizer, 256, template=ChatTemplate(tokenizer))
    records = [
        Record([c[-1]], [{"role": "assistant", "content": "no"}], c[:-1], str(i)) for i, c in enumerate(CONVERSATIONS)
    ]
    ids = [p.prompt + p.chosen for p in tokenize(records)]
    with torch.no_grad():
        ours = torch.stack([module.rewards(torch.tensor([row]), torch.ones(1, len(row)))[0] for row in ids])

    # the plain path: the export's tokenizer and model, templated text, one padded batch (both sides)
    plain_tokenizer = AutoTokenizer.from_pretrained(out)
    scorer = AutoModelForSequenceClassification.from_pretrained(out).eval()
    texts = plain_tokenizer.apply_chat_template(CONVERSATIONS, tokenize=False)
    for side in ("right", "left"):
        plain_tokenizer.padding_side = side
        batch = plain_tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        assert (batch["attention_mask"] == 0).any()  # padded
        with torch.no_grad():
            theirs = scorer(**batch).logits[:, 0]
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)

    # what the same folder did before: pad == EOS in the config, the template's newline after the EOS
    tokenizer.pad_token = tokenizer.eos_token
    texts = tokenizer.apply_chat_template(CONVERSATIONS, tokenize=False)
    batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    before.config.pad_token_id = tokenizer.eos_token_id
    with torch.no_grad():
        stale = before(**batch).logits[:, 0]
    assert not torch.allclose(stale, ours, atol=1e-3)

    reading = json.loads((out / "hhalign_export.json").read_text())["reading"]
    assert reading["batched_with_padding"] and reading["chat_template_trimmed"]
    assert reading["pad_token_id"] == plain_tokenizer.bos_token_id != reading["eos_token_id"]
    assert "AutoModelForSequenceClassification" in (out / "README.md").read_text()


def test_a_policy_export_keeps_its_tokenizer_as_it_was(tmp_path: Path, tiny_dir: Path):
    from hhalign.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_dir))
    out = export_model(load_model(str(tiny_dir)), tokenizer, tmp_path / "lm", {"head": "causal_lm"})
    again = AutoTokenizer.from_pretrained(out)
    assert again.pad_token_id == again.eos_token_id
    assert "AutoModelForCausalLM" in (out / "README.md").read_text()  # every export has a card


def test_lora_adapters_export_alone_and_read_back_over_the_base_with_peft(tmp_path: Path, tiny_dir: Path):
    """The adapters in peft's format (a few kilobytes beside the base's weights) give the trained model's logits
    when peft loads them over the base; the merged export gives the same."""
    from peft import PeftModel

    from hhalign.models.loading import load_model, load_tokenizer, merged, with_lora
    from hhalign.tools.export import export_adapters

    torch.manual_seed(0)
    trained = with_lora(load_model(str(tiny_dir)), 4, 16.0, None)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.1)  # adapters that change the model
    tokenizer = load_tokenizer(str(tiny_dir))
    out = export_adapters(trained, tokenizer, tmp_path / "adapter", {"head": "causal_lm"})
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert (out / "adapter_model.safetensors").stat().st_size < (tiny_dir / "model.safetensors").stat().st_size / 4
    ids = torch.tensor([tokenizer.encode("\n\nHuman: hi\n\nAssistant: hello")])
    read_back = PeftModel.from_pretrained(load_model(str(tiny_dir)), out).eval()
    plain = export_model(merged(trained), tokenizer, tmp_path / "merged", {"head": "causal_lm"})
    with torch.no_grad():
        expected = trained.eval()(input_ids=ids).logits
        torch.testing.assert_close(read_back(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(load_model(str(plain))(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(load_model(str(tiny_dir))(input_ids=ids).logits, expected, atol=1e-3)
