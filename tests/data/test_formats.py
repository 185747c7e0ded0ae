"""Every record format and source a user brings: read, detected, rendered through the chat template, cached,
and each bad shape refused in one line that names the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hhalign.data.datamodule import PreferenceDataModule
from hhalign.data.pairs import PairTokenizer
from hhalign.data.reading import read_records
from hhalign.data.templates import ChatTemplate
from hhalign.errors import DataError
from hhalign.models.loading import load_tokenizer
from tests.conftest import write_jsonl

SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [
    {"role": "user", "content": "hi there"},
    {"role": "assistant", "content": "hello!"},
    {"role": "user", "content": "how are you?"},
]
RAW = {
    "chosen": "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant: fine, thanks.",
    "rejected": "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant: go away.",
}
STRINGS = {
    "prompt": "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant:",
    "chosen": " fine, thanks.",
    "rejected": " go away.",
}
CONVERSATIONAL = {
    "prompt": TURNS,
    "chosen": [{"role": "assistant", "content": "fine, thanks."}],
    "rejected": [{"role": "assistant", "content": "go away."}],
}


def _variants(n: int, make) -> list[dict]:
    """``n`` records that differ (so none is dropped as a repeat), each ``make(i)``."""
    return [make(i) for i in range(n)]


def conversational(i: int) -> dict:
    prompt = [SYSTEM, *TURNS[:2], {"role": "user", "content": f"question {i}?"}]
    reply = [{"role": "assistant", "content": f"answer {i}."}]
    return {"prompt": prompt, "chosen": reply, "rejected": [{"role": "assistant", "content": f"no {i}."}]}


def implicit(i: int) -> dict:
    shared = [SYSTEM, {"role": "user", "content": f"question {i}?"}]
    return {
        "chosen": [*shared, {"role": "assistant", "content": f"answer {i}."}],
        "rejected": [*shared, {"role": "assistant", "content": f"no {i}."}],
    }


def _module(path: Path | str, tokenizer_dir: Path, **kwargs) -> PreferenceDataModule:
    settings = {"max_length": 256, "valid_fraction": 0.25, "cache_tokenized": False} | kwargs
    data = PreferenceDataModule(str(path), str(tokenizer_dir), **settings)
    data.setup("fit")
    return data


def test_one_hh_pair_as_transcript_strings_and_messages_gives_the_same_tokens(tmp_path, tiny_chat_dir):
    tokenizer = load_tokenizer(str(tiny_chat_dir))
    tokenize = PairTokenizer(tokenizer, 256, template=ChatTemplate(tokenizer))
    pairs = []
    for name, raw in (("raw", RAW), ("strings", STRINGS), ("conversational", CONVERSATIONAL)):
        source = read_records(str(write_jsonl(tmp_path / f"{name}.jsonl", [raw])))
        assert source.format == {"raw": "hh-rlhf"}.get(name, name)
        pairs += tokenize(source.records)
    assert pairs[0] == pairs[1] == pairs[2]
    eos = tokenizer.eos_token
    assert tokenizer.decode(pairs[0].prompt).endswith(f"[user] how are you?{eos}[assistant] ")
    assert tokenizer.decode(pairs[0].chosen) == f"fine, thanks.{eos}" and pairs[0].chosen[-1] == tokenizer.eos_token_id


def test_conversational_records_with_a_system_turn_render_through_the_template(tmp_path, tiny_chat_dir):
    path = write_jsonl(tmp_path / "chat.jsonl", _variants(8, conversational))
    data = _module(path, tiny_chat_dir)  # chat_template off: conversational records use it all the same
    tokenizer = load_tokenizer(str(tiny_chat_dir))
    assert data.summary["format"] == {str(path): "conversational"} and data.summary["chat_template"]
    pair = (data.train_examples + data.val_examples)[0]
    text = tokenizer.decode(pair.prompt)
    assert text.startswith("<|startoftext|>[system] Be brief.") and "[user] hi there" in text
    assert text.endswith("[assistant] ") and tokenizer.decode(pair.chosen).startswith("answer ")
    assert len(data.train_examples) + len(data.val_examples) == 8


def test_long_conversations_lose_whole_exchanges_and_keep_the_system_turn(tmp_path, tiny_chat_dir):
    long = [SYSTEM, *TURNS[:2]] * 1 + [{"role": "user", "content": "word " * 40}, TURNS[1], TURNS[2]]
    record = {"prompt": [SYSTEM, *long[1:]], "chosen": [TURNS[1]], "rejected": [{"role": "assistant", "content": "x"}]}
    tokenizer = load_tokenizer(str(tiny_chat_dir))
    tokenize = PairTokenizer(tokenizer, 40, template=ChatTemplate(tokenizer))
    [pair] = tokenize(read_records(str(write_jsonl(tmp_path / "long.jsonl", [record]))).records)
    text = tokenizer.decode(pair.prompt)
    assert text.startswith("<|startoftext|>[system] Be brief.") and "word" not in text and "how are you?" in text
    assert tokenize.counts["cut:prompt"] == 1


def test_implicit_prompt_conversations_split_at_their_common_messages(tmp_path, tiny_chat_dir):
    path = write_jsonl(tmp_path / "implicit.jsonl", _variants(8, implicit))
    (record, *_) = read_records(str(path)).records
    assert record.prompt == [SYSTEM, {"role": "user", "content": "question 0?"}]
    assert record.chosen == [{"role": "assistant", "content": "answer 0."}]
    data = _module(path, tiny_chat_dir)
    assert data.summary["format"] == {str(path): "conversational-implicit"}
    assert len(data.train_examples) + len(data.val_examples) == 8


def test_unpaired_records_feed_kto_beside_pairs(tmp_path, tiny_chat_dir):
    rows = [{"prompt": f"question {i}?", "completion": f"answer {i}.", "label": i % 2 == 0} for i in range(8)]
    path = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    data = _module(path, tiny_chat_dir, examples="completions", chat_template=True)
    examples = data.train_examples + data.val_examples
    assert data.summary["format"] == {str(path): "unpaired"}
    assert sorted(e.desirable for e in examples) == [False] * 4 + [True] * 4
    tokenizer = load_tokenizer(str(tiny_chat_dir))
    assert {tokenizer.decode(e.prompt).split("[user] ")[1] for e in examples} == {
        f"question {i}?<|endoftext|>[assistant] " for i in range(8)
    }
    with pytest.raises(DataError, match="no training pairs left"):  # DPO needs pairs: every record is dropped
        _module(path, tiny_chat_dir, examples="pairs", chat_template=True)


def test_prompt_only_records_as_strings_or_messages(tmp_path, tiny_chat_dir):
    rows = [{"prompt": f"question {i}?"} for i in range(4)] + [{"prompt": [SYSTEM, TURNS[0]]}]
    data = _module(write_jsonl(tmp_path / "prompts.jsonl", rows), tiny_chat_dir, examples="prompts", valid_fraction=0.4)
    tokenizer = load_tokenizer(str(tiny_chat_dir))
    texts = {tokenizer.decode(p.prompt) for p in data.train_examples + data.val_examples}
    assert "<|startoftext|>[system] Be brief.<|endoftext|>[user] hi there<|endoftext|>[assistant] " in texts
    assert "<|startoftext|>[user] question 0?<|endoftext|>[assistant] " in texts and len(texts) == 5


def test_renamed_columns_are_mapped(tmp_path, tiny_chat_dir):
    rows = [{"question": r["prompt"], "response_a": r["chosen"], "response_b": r["rejected"], "id": 1}
            for r in _variants(8, conversational)]  # fmt: skip
    path = write_jsonl(tmp_path / "renamed.jsonl", rows)
    columns = {"prompt": "question", "chosen": "response_a", "rejected": "response_b"}
    data = _module(path, tiny_chat_dir, columns=columns)
    baseline = _module(write_jsonl(tmp_path / "plain.jsonl", _variants(8, conversational)), tiny_chat_dir)
    assert data.train_examples == baseline.train_examples and data.val_examples == baseline.val_examples


def test_parquet_files_and_folders_and_saved_datasets_read_like_jsonl(tmp_path, tiny_chat_dir):
    import datasets

    rows = _variants(12, conversational)
    expected = _module(write_jsonl(tmp_path / "rows.jsonl", rows), tiny_chat_dir)
    table = datasets.Dataset.from_list(rows)
    (tmp_path / "pq").mkdir()
    table.to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
    parquet = _module(tmp_path / "pq" / "part-0.parquet", tiny_chat_dir)
    folder = _module(tmp_path / "pq", tiny_chat_dir)
    table.save_to_disk(str(tmp_path / "saved"))
    saved = _module(tmp_path / "saved", tiny_chat_dir)
    for data in (parquet, folder, saved):
        assert data.train_examples == expected.train_examples and data.val_examples == expected.val_examples
    assert read_records(str(tmp_path / "pq")).records[3].origin.endswith("part-0.parquet row 4")


def test_a_saved_dataset_dict_validates_on_its_test_split_by_name(tmp_path, tiny_chat_dir):
    """UltraFeedback's splits are train_prefs / test_prefs: the test split is found from the training split's name."""
    import datasets

    def ultrafeedback(i: int) -> dict:  # its documented columns: a prompt string beside the whole conversations
        scores = {"score_chosen": 8.0, "score_rejected": 3.0}
        return implicit(i) | {"prompt": f"question {i}?", "prompt_id": str(i)} | scores

    splits = datasets.DatasetDict(
        {"train_prefs": datasets.Dataset.from_list(_variants(10, ultrafeedback)),
         "test_prefs": datasets.Dataset.from_list(_variants(4, ultrafeedback))}
    )  # fmt: skip
    splits.save_to_disk(str(tmp_path / "uf"))
    data = _module(tmp_path / "uf", tiny_chat_dir, train_split="train_prefs")
    assert len(data.train_examples) == 10 and len(data.val_examples) == 4
    assert data.summary["validation"].endswith("(test_prefs split)")
    assert data.summary["format"] == {f"{tmp_path / 'uf'}[train_prefs]": "conversational-implicit",
                                      f"{tmp_path / 'uf'}[test_prefs]": "conversational-implicit"}  # fmt: skip


def test_a_local_hub_layout_of_parquet_loads_through_datasets(tmp_path, tiny_chat_dir):
    import datasets

    (tmp_path / "repo" / "data").mkdir(parents=True)
    datasets.Dataset.from_list(_variants(10, implicit)).to_parquet(str(tmp_path / "repo" / "data" / "train.parquet"))
    datasets.Dataset.from_list(_variants(3, implicit)).to_parquet(str(tmp_path / "repo" / "data" / "test.parquet"))
    data = _module(tmp_path / "repo", tiny_chat_dir)
    assert (len(data.train_examples), len(data.val_examples)) == (10, 3)


def test_a_jinja_file_supplies_a_template_to_a_tokenizer_without_one(tmp_path, tiny_dir):
    from tests.conftest import CHAT_TEMPLATE

    (tmp_path / "chat.jinja").write_text(CHAT_TEMPLATE)
    path = write_jsonl(tmp_path / "chat.jsonl", _variants(8, conversational))
    data = _module(path, tiny_dir, chat_template=str(tmp_path / "chat.jinja"))
    tokenizer = load_tokenizer(str(tiny_dir))
    assert tokenizer.decode(data.train_examples[0].prompt).startswith("<|startoftext|>[system] Be brief.")


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("pairs", conversational),
        ("pairs", implicit),
        ("completions", lambda i: {"prompt": [TURNS[0]], "completion": f"a{i}", "label": bool(i % 2)}),
        ("prompts", lambda i: {"prompt": [SYSTEM, {"role": "user", "content": f"q{i}"}]}),
    ],
)
def test_every_format_round_trips_through_the_cache(tmp_path, tiny_chat_dir, monkeypatch, kind, make):
    monkeypatch.setenv("HHALIGN_CACHE", str(tmp_path / "cache"))
    path = write_jsonl(tmp_path / "data.jsonl", _variants(8, make))
    fresh = _module(path, tiny_chat_dir, examples=kind, cache_tokenized=True)
    cached = _module(path, tiny_chat_dir, examples=kind, cache_tokenized=True)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert cached.train_examples == fresh.train_examples and cached.val_examples == fresh.val_examples
    assert cached.summary == fresh.summary


def test_the_cache_keys_on_the_column_mapping(tmp_path, tiny_chat_dir, monkeypatch):
    monkeypatch.setenv("HHALIGN_CACHE", str(tmp_path / "cache"))
    rows = [dict(r, alt=[{"role": "assistant", "content": "other"}]) for r in _variants(8, conversational)]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    plain = _module(path, tiny_chat_dir, cache_tokenized=True)
    mapped = _module(path, tiny_chat_dir, cache_tokenized=True, columns={"chosen": "alt"})
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert plain.train_examples[0].chosen != mapped.train_examples[0].chosen


BAD_SHAPES = [
    ("mixed", [CONVERSATIONAL, CONVERSATIONAL, STRINGS], ":3: a strings record in a conversational source"),
    ("no-role", [CONVERSATIONAL, {**CONVERSATIONAL, "prompt": [{"content": "hi"}]}],
     ":2: field 'prompt' message 1 needs 'role' and 'content'"),
    ("assistant-last", [implicit(0), {"chosen": [*TURNS[:2], TURNS[2]], "rejected": [*TURNS[:2], SYSTEM]}],
     ":2: 'chosen' and 'rejected' share 2 leading message(s), ending with a assistant turn"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "rows", "message"), BAD_SHAPES, ids=[b[0] for b in BAD_SHAPES])
def test_each_bad_shape_is_one_line_naming_file_and_line(tmp_path, tiny_chat_dir, capsys, name, rows, message):
    from hhalign.cli import main

    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    args = ["--model", "hhalign.DPOModule", "--model.model_name_or_path", str(tiny_chat_dir)]
    with pytest.raises(SystemExit) as stop:
        main(["data", "inspect", *args, "--data.path", str(path)])
    text = str(stop.value.code)
    assert text.startswith(f"hhalign: error: {path}{message}") and "\n" not in text


def test_a_conversational_file_with_a_tokenizer_lacking_a_template_names_the_option(tmp_path, tiny_dir):
    from hhalign.cli import main

    path = write_jsonl(tmp_path / "chat.jsonl", _variants(8, conversational))
    args = ["--model", "hhalign.DPOModule", "--model.model_name_or_path", str(tiny_dir), "--data.path", str(path)]
    with pytest.raises(SystemExit) as stop:
        main(["data", "inspect", *args])
    text = str(stop.value.code)
    assert text.startswith(f"hhalign: error: {path}:1: conversational records are rendered by the tokenizer's chat")
    assert "--data.chat_template" in text and "\n" not in text


def test_a_missing_mapped_column_fails_before_any_model_loads(tmp_path, tiny_dir, monkeypatch):
    """Through ``hhalign fit``: the data module's error comes first, no weights are read, nothing is written."""
    from hhalign.cli import main
    from tests.conftest import tiny_fit_args

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr("hhalign.objectives.reference.load_model", no_loading)
    path = write_jsonl(tmp_path / "pairs.jsonl", [RAW] * 4)
    args = tiny_fit_args(tmp_path, tiny_dir, path, "configs/tiny/dpo.yaml", "--data.columns", '{"chosen": "good"}')
    with pytest.raises(SystemExit) as stop:
        main(args)
    text = str(stop.value.code)
    assert text == (
        f"hhalign: error: {path}:1: column 'good' named by --data.columns is not in the record; keys found: "
        "'chosen', 'rejected'. Fix the record, or set data.on_bad_record: skip to drop and count bad ones"
    )
    assert not (tmp_path / "tiny" / "t" / "checkpoints").exists()


def test_inspect_prints_the_shipped_datas_known_counts(capsys, tiny_dir):
    """harmless-base test (data/hh-rlhf/README.md): 2,312 pairs, none identical, 4 chosen replies empty."""
    from hhalign.cli import main
    from tests.conftest import REPO

    shipped = REPO / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    config = str(REPO / "configs" / "tiny" / "dpo.yaml")
    flags = ["--model.model_name_or_path", str(tiny_dir), "--data.path", str(shipped), "--data.max_length", "100000"]
    main(["data", "inspect", "--config", config, *flags])
    out = capsys.readouterr().out
    assert "format:     hh-rlhf" in out and "read:       2,312 records; kept 2,308" in out
    assert "dropped:    empty_response 4\n" in out
    assert "longer reply wins: " in out and out.count("--- example") == 2 and "⟦" in out
    lengths = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert set(lengths) >= {"prompt", "chosen", "rejected"}


def test_sft_reads_a_conversational_pairs_chosen_conversation(tmp_path, tiny_chat_dir):
    path = write_jsonl(tmp_path / "chat.jsonl", _variants(8, conversational))
    data = _module(path, tiny_chat_dir, examples="dialogues")
    tokenizer = load_tokenizer(str(tiny_chat_dir))
    dialogue = data.train_examples[0]
    targets = tokenizer.decode([t for t, on in zip(dialogue.ids, dialogue.targets, strict=True) if on])
    assert tokenizer.decode(dialogue.ids).startswith("<|startoftext|>[system] Be brief.")
    assert targets.startswith("hello!<|endoftext|>answer ") and "question" not in targets
