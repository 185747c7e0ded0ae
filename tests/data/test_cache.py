"""The tokenized-example cache: exact round trips, a hit that reads no record, and misses when anything changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hhalign.data import cache
from hhalign.data.datamodule import PreferenceDataModule
from hhalign.data.dialogues import TokenizedDialogue
from hhalign.data.examples import TokenizedCompletion
from hhalign.data.pairs import TokenizedPair


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize(
    "examples",
    [
        [TokenizedPair([1, 2], [3], [4, 5], margin=0.5), TokenizedPair([], [6, 7], [8], margin=None)],
        [TokenizedDialogue([1, 2, 3], [0, 1, 1]), TokenizedDialogue([4], [1])],
        [TokenizedCompletion([1], [2, 3], True), TokenizedCompletion([4, 5], [6], False)],
    ],
    ids=["pairs", "dialogues", "completions"],
)
def test_examples_round_trip_exactly(examples: list):
    key = "k" + type(examples[0]).__name__
    cache.save(key, examples, examples[:1], {"read": 2})
    train, val, summary = cache.load(key, type(examples[0]))
    assert train == examples and val == examples[:1] and summary == {"read": 2}


def _data(path: Path, tiny_dir: Path, **options) -> PreferenceDataModule:
    data = PreferenceDataModule(str(path), str(tiny_dir), max_length=256, valid_fraction=0.25, **options)
    data.setup("fit")
    return data


def test_a_second_setup_reads_no_record_and_builds_the_same_data(
    small_jsonl: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, own_cache: Path
):
    first = _data(small_jsonl, tiny_dir)
    assert len(list(own_cache.glob("*.npz"))) == 1

    def no_reading(*args, **kwargs):
        raise AssertionError("records were read despite the cache")

    monkeypatch.setattr("hhalign.data.datamodule.read_records", no_reading)
    again = _data(small_jsonl, tiny_dir)
    assert again.train_examples == first.train_examples and again.val_examples == first.val_examples
    assert again.fingerprint == first.fingerprint and again.summary == first.summary


def test_a_changed_file_setting_or_kind_misses(small_jsonl: Path, tiny_dir: Path, own_cache: Path):
    _data(small_jsonl, tiny_dir)
    _data(small_jsonl, tiny_dir, max_response_length=32)
    _data(small_jsonl, tiny_dir, examples="dialogues")
    stat = small_jsonl.stat()
    os.utime(small_jsonl, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, touched
    _data(small_jsonl, tiny_dir)
    assert len(list(own_cache.glob("*.npz"))) == 4
    _data(small_jsonl, tiny_dir, cache_tokenized=False)
    assert len(list(own_cache.glob("*.npz"))) == 4


def test_a_hub_dataset_is_cached_by_its_fingerprint(tmp_path, tiny_dir, monkeypatch):
    """A hub name (here ``load_split`` stands in for the hub) is tokenized once, keyed by the split's fingerprint:
    the second setup tokenizes nothing, and another revision of the data (another fingerprint) misses."""
    import datasets

    from tests.conftest import shipped_records

    monkeypatch.setenv("HHALIGN_CACHE", str(tmp_path / "cache"))
    revisions = {
        "v1": datasets.Dataset.from_list(shipped_records(40)),
        "v2": datasets.Dataset.from_list(shipped_records(41)),
    }
    current = {"revision": "v1"}
    reads = []

    def hub(path, split, data_dir):
        reads.append(split)
        return revisions[current["revision"]]

    monkeypatch.setattr("hhalign.data.sources.load_split", hub)
    monkeypatch.setattr("hhalign.data.cache.load_split", hub)

    def setup():
        data = PreferenceDataModule("someone/prefs", str(tiny_dir), max_length=256, valid_fraction=0.25)
        data.setup("fit")
        return data

    first = setup()

    def no_tokenizing(self, tokenizer):
        raise RuntimeError("tokenized again")

    monkeypatch.setattr("hhalign.data.datamodule.PreferenceDataModule._tokenize", no_tokenizing)
    second = setup()
    assert second.train_examples == first.train_examples and len(list((tmp_path / "cache").iterdir())) == 1
    current["revision"] = "v2"
    with pytest.raises(RuntimeError, match="tokenized again"):
        setup()
