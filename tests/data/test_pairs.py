"""Prompt splitting, shared prompt tokens, truncation and drop accounting."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from hhalign.data.pairs import ASSISTANT, PairTokenizer, split_dialogues
from hhalign.data.reading import read_records
from hhalign.data.records import Record
from tests.conftest import SHIPPED


def rec(chosen: str, rejected: str, prompt: str | None = None) -> Record:
    return Record(chosen, rejected, prompt, "test")


def test_split_uses_common_prefix_cut_at_last_assistant_marker():
    chosen = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: yes"
    rejected = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: no"
    assert split_dialogues(chosen, rejected) == (
        "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:",
        " yes",
        " no",
    )


def test_split_keeps_a_response_that_contains_the_marker_whole():
    prompt = "\n\nHuman: q\n\nAssistant:"
    chosen, rejected = prompt + " ok\n\nAssistant: more", prompt + " bad"
    assert split_dialogues(chosen, rejected) == (prompt, " ok\n\nAssistant: more", " bad")


def test_split_without_marker_is_none():
    assert split_dialogues("\n\nHuman: x", "\n\nHuman: y") is None


def test_chosen_and_rejected_share_identical_prompt_tokens(tokenizer):
    pairs = PairTokenizer(tokenizer, max_length=512)(
        [rec("\n\nHuman: What is 2+2?\n\nAssistant: 4", "\n\nHuman: What is 2+2?\n\nAssistant:4?")]
    )
    (pair,) = pairs
    assert pair.prompt[0] == tokenizer.bos_token_id
    assert tokenizer.bos_token_id not in pair.prompt[1:] + pair.chosen + pair.rejected
    assert pair.chosen[-1] == pair.rejected[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(pair.prompt[1:]) == "\n\nHuman: What is 2+2?\n\nAssistant:"
    assert tokenizer.decode(pair.chosen[:-1]) == " 4"


def test_long_response_is_cut_without_eos(tokenizer):
    long = " " + "word " * 200
    pt = PairTokenizer(tokenizer, max_length=512, max_response_length=16)
    (pair,) = pt([rec("\n\nHuman: hi\n\nAssistant:" + long, "\n\nHuman: hi\n\nAssistant: short")])
    assert len(pair.chosen) == 16 and tokenizer.eos_token_id not in pair.chosen
    assert pair.rejected[-1] == tokenizer.eos_token_id
    assert pt.counts == Counter({"cut:response": 1})


def test_long_prompt_loses_whole_turns_from_the_left(tokenizer):
    old = "\n\nHuman: " + "tell me a long story " * 40 + "\n\nAssistant: " + "once upon a time " * 40
    last = "\n\nHuman: and now?\n\nAssistant:"
    pt = PairTokenizer(tokenizer, max_length=64)
    (pair,) = pt([rec(old + last + " fine", old + last + " bad")])
    assert pair.prompt[0] == tokenizer.bos_token_id
    assert tokenizer.decode(pair.prompt[1:]) == last
    assert len(pair.prompt) + max(len(pair.chosen), len(pair.rejected)) <= 64
    assert pt.counts == Counter({"cut:prompt": 1})


def test_drops_are_counted_by_reason(tokenizer):
    turn = "\n\nHuman: hi\n\nAssistant:"
    huge = "\n\nHuman: " + "blah " * 300 + ASSISTANT
    pt = PairTokenizer(tokenizer, max_length=48, max_response_length=4)
    kept = pt(
        [
            rec("no marker here", "nor here"),
            rec(turn + " ", turn + " no"),  # empty chosen response
            rec(turn + " same", turn + " same"),
            rec(huge + " a", huge + " b"),  # the last human turn alone does not fit
            rec(turn + " one two three four five six", turn + " one two three four five seven"),  # same after cut
            rec(turn + " good", turn + " bad"),
        ]
    )
    assert len(kept) == 1
    assert pt.counts == Counter(
        {
            "drop:no_shared_prompt": 1,
            "drop:empty_response": 1,
            "drop:identical": 1,
            "drop:prompt_too_long": 1,
            "drop:identical_after_truncation": 1,
            "cut:response": 2,
        }
    )


def test_explicit_prompt_records(tokenizer):
    (pair,) = PairTokenizer(tokenizer, 128)([rec(" Paris.", " Rome.", prompt="Capital of France?")])
    assert tokenizer.decode(pair.prompt[1:]) == "Capital of France?"
    assert tokenizer.decode(pair.chosen[:-1]) == " Paris."


def test_tokenizer_without_bos_gets_none(tokenizer):
    class NoBos:
        """The tiny tokenizer seen through a model that uses no BOS (GPT-2 and Qwen style)."""

        bos_token_id = None
        eos_token_id = tokenizer.eos_token_id

        def __call__(self, texts, add_special_tokens=False):
            return tokenizer(texts, add_special_tokens=False)

    (pair,) = PairTokenizer(NoBos(), 128)([rec("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: c")])
    assert tokenizer.bos_token_id not in pair.prompt


def test_shipped_data_drop_counts_match_an_independent_count(tokenizer):
    """Exact duplicates and empty replies counted straight from the raw files agree with the drop counts."""
    identical = empty = 0
    for name in ("harmless-base-test.jsonl.gz", "helpful-base-test.jsonl.gz"):
        with gzip.open(SHIPPED / name, "rt", encoding="utf-8") as handle:
            for line in handle:
                r = json.loads(line)
                if r["chosen"] == r["rejected"]:
                    identical += 1
                    continue
                cut = r["chosen"][: len(r["chosen"]) - len(r["chosen"].split(ASSISTANT)[-1])]
                empty += r["chosen"][len(cut) :].strip() == "" or (
                    r["rejected"].startswith(cut) and r["rejected"][len(cut) :].strip() == ""
                )
    records = read_records(str(SHIPPED)).records
    pt = PairTokenizer(tokenizer, max_length=100_000)
    pairs = pt(records)
    assert len(records) == 4666
    assert pt.counts["drop:identical"] == identical
    assert pt.counts["drop:empty_response"] == empty
    assert pt.counts["drop:no_shared_prompt"] == 0
    assert len(pairs) == 4666 - identical - empty
    assert all(p.chosen != p.rejected for p in pairs)


@pytest.mark.parametrize("max_length", [128, 512])
def test_every_kept_pair_fits(tokenizer, max_length: int):
    records = read_records(str(SHIPPED / "harmless-base-test.jsonl.gz")).records[:300]
    for pair in PairTokenizer(tokenizer, max_length, max_response_length=max_length // 2)(records):
        assert len(pair.prompt) + max(len(pair.chosen), len(pair.rejected)) <= max_length
