"""The collator's exact contract and the data module on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hhalign.data.batches import collate_pairs
from hhalign.data.datamodule import PreferenceDataModule
from hhalign.data.examples import ExampleSettings, PairExamples
from hhalign.data.pairs import TokenizedPair
from hhalign.data.samplers import length_grouped_batches

PAIRS = [
    TokenizedPair(prompt=[5, 6], chosen=[7, 1], rejected=[8, 9, 1]),
    TokenizedPair(prompt=[5], chosen=[4, 4, 4, 1], rejected=[3, 1]),
]


def test_collator_right_padding_exact_tensors():
    batch = collate_pairs(PAIRS, pad_token_id=1)  # pad == EOS == 1, as in many real tokenizers
    assert torch.equal(
        batch.input_ids,
        torch.tensor(
            [
                [5, 6, 7, 1, 1],
                [5, 4, 4, 4, 1],
                [5, 6, 8, 9, 1],
                [5, 3, 1, 1, 1],
            ]
        ),
    )
    assert torch.equal(
        batch.attention_mask,
        torch.tensor(
            [
                [1, 1, 1, 1, 0],
                [1, 1, 1, 1, 1],
                [1, 1, 1, 1, 1],
                [1, 1, 1, 0, 0],
            ]
        ),
    )
    assert torch.equal(
        batch.loss_mask,
        torch.tensor(
            [
                [0, 0, 1, 1, 0],
                [0, 1, 1, 1, 1],
                [0, 0, 1, 1, 1],
                [0, 1, 1, 0, 0],
            ]
        ),
    )


def test_collator_left_padding_exact_tensors():
    batch = collate_pairs(PAIRS, pad_token_id=0, padding_side="left")
    assert torch.equal(
        batch.input_ids,
        torch.tensor(
            [
                [0, 5, 6, 7, 1],
                [5, 4, 4, 4, 1],
                [5, 6, 8, 9, 1],
                [0, 0, 5, 3, 1],
            ]
        ),
    )
    assert torch.equal(batch.attention_mask, (batch.input_ids != 0).long())
    assert torch.equal(
        batch.loss_mask,
        torch.tensor(
            [
                [0, 0, 0, 1, 1],
                [0, 1, 1, 1, 1],
                [0, 0, 1, 1, 1],
                [0, 0, 0, 1, 1],
            ]
        ),
    )


def test_length_grouped_batches_partition_the_pairs():
    pairs = [TokenizedPair([1] * n, [2], [3]) for n in (9, 1, 5, 3, 7, 2, 8)]
    lengths = [PairExamples(ExampleSettings(256, shared_prompt=False)).length(p) for p in pairs]
    batches = length_grouped_batches(lengths, 3, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert batches == length_grouped_batches(lengths, 3, seed=0)
    assert [1, 5, 3] in batches  # the three shortest pairs share a batch


def _module(path: Path, tiny_dir: Path, **kwargs) -> PreferenceDataModule:
    return PreferenceDataModule(path=str(path), tokenizer_name_or_path=str(tiny_dir), **kwargs)


def test_shipped_data_split_is_seeded_and_large_enough(tiny_dir: Path):
    from tests.conftest import SHIPPED

    first = _module(SHIPPED, tiny_dir, max_length=512, max_response_length=256, valid_fraction=0.1)
    first.setup("fit")
    again = _module(SHIPPED, tiny_dir, max_length=512, max_response_length=256, valid_fraction=0.1)
    again.setup("fit")
    assert len(first.val_examples) >= 400
    assert first.val_examples == again.val_examples and first.train_examples == again.train_examples
    summary = first.summary
    assert summary["read"] == 4666
    dropped = sum(summary["dropped"].values())
    assert summary["kept"]["train"] + summary["kept"]["val"] == 4666 - dropped


def test_summary_is_saved_to_the_run_directory(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    data = _module(small_jsonl, tiny_dir, max_length=256, valid_fraction=0.25)
    trainer = L.Trainer(logger=CSVLogger(tmp_path, name="exp", version="trial"), accelerator="cpu")
    data.trainer = trainer
    data.setup("fit")
    saved = json.loads((tmp_path / "exp" / "trial" / "data_summary.json").read_text())
    assert saved == data.summary and saved["read"] == 48
    assert saved["format"] == {str(small_jsonl): "hh-rlhf"} and set(saved["tokens"]) == {"prompt", "chosen", "rejected"}
    assert len(saved["rendered"]) == 2 and 0 <= saved["longer_reply_wins"] <= 1  # the audit `data inspect` prints
    batch = next(iter(data.train_dataloader()))
    assert batch.n_examples == 8 and batch.input_ids.shape[0] == 8  # packed: one row per pair


def test_hub_layout_loads_through_datasets(tmp_path: Path, tiny_dir: Path):
    """A local copy of the hub's Anthropic/hh-rlhf layout (data_dir/train.jsonl.gz, test.jsonl.gz) goes
    through datasets.load_dataset with named splits, as `Anthropic/hh-rlhf` does online."""
    import gzip

    from tests.conftest import shipped_records

    subset = tmp_path / "hh-rlhf" / "helpful-base"
    subset.mkdir(parents=True)
    records = shipped_records(60)
    for name, part in (("train", records[:40]), ("test", records[40:])):
        with gzip.open(subset / f"{name}.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in part)
    data = _module(
        tmp_path / "hh-rlhf", tiny_dir, data_dir="helpful-base", train_split="train", val_split="test", max_length=256
    )
    data.setup("fit")
    assert data.summary["read"] == 60
    assert len(data.train_examples) + len(data.val_examples) + sum(data.summary["dropped"].values()) == 60
    assert 35 <= len(data.train_examples) <= 40 and 15 <= len(data.val_examples) <= 20


def _write_subsets(root: Path, parts: dict[str, list[dict]]) -> Path:
    """A local copy of the hh-rlhf repository: ``<subset>/<split>.jsonl.gz``."""
    import gzip

    for name, records in parts.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)
    return root


def test_a_local_repository_copy_validates_on_its_own_test_files(tmp_path: Path, tiny_dir: Path):
    from tests.conftest import shipped_records

    records = shipped_records(60)
    root = _write_subsets(
        tmp_path / "hh-rlhf",
        {"helpful-base/train.jsonl.gz": records[:40], "helpful-base/test.jsonl.gz": records[40:]},
    )
    data = _module(root, tiny_dir, data_dir="helpful-base", max_length=256)  # no val_split, no valid_fraction
    data.setup("fit")
    from hhalign.data.pairs import PairTokenizer
    from hhalign.data.records import Record
    from hhalign.models.loading import load_tokenizer

    test_records = [Record(r["chosen"], r["rejected"], None, "test") for r in records[40:]]
    assert data.val_examples == PairTokenizer(load_tokenizer(str(tiny_dir)), 256)(test_records)
    assert len(data.train_examples) >= 35 and data.summary["validation"].endswith("(test split)")


def test_a_separate_validation_file_is_validated_on_whole(tmp_path: Path, tiny_dir: Path):
    from tests.conftest import shipped_records, write_jsonl

    records = shipped_records(60)
    train, val = write_jsonl(tmp_path / "train.jsonl", records[:40]), write_jsonl(tmp_path / "val.jsonl", records[40:])
    data = _module(train, tiny_dir, val_path=str(val), max_length=256)
    data.setup("fit")
    assert data.summary["read"] == 60 and data.summary["validation"] == f"{val} (every record)"
    dropped = sum(data.summary["dropped"].values())
    assert len(data.train_examples) + len(data.val_examples) == 60 - dropped and len(data.train_examples) >= 38


def test_missing_local_dataset_folder_is_a_clear_error(tmp_path: Path, tiny_dir: Path):
    import pytest

    from hhalign.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        _module(tmp_path / "nowhere", tiny_dir).setup("fit")


@pytest.mark.parametrize(("n", "size", "processes"), [(12, 5, 2), (7, 2, 4), (5, 1, 4), (24, 5, 2), (9, 16, 2)])
def test_validation_batches_come_in_a_multiple_of_the_processes(n: int, size: int, processes: int):
    """Every process must run as many evaluation batches as the others (an FSDP forward is a collective): the
    pairs are cut into a multiple of ``processes`` batches, sizes differing by at most one, none repeated."""
    lengths = [(7 * i) % 11 for i in range(n)]
    batches = length_grouped_batches(lengths, size, seed=0, processes=processes)
    assert len(batches) % processes == 0 and all(batches)
    assert sorted(i for b in batches for i in b) == list(range(n))
    sizes = [len(b) for b in batches]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) <= max(size, -(-n // len(batches)))


def test_skipped_batches_train_on_pairs_the_earlier_run_never_saw(tiny_dir: Path, small_jsonl: Path):
    from hhalign.errors import ConfigError

    settings = {"max_length": 256, "valid_fraction": 0.25, "batch_size": 4, "group_by_length": True}
    first, second = (
        _module(small_jsonl, tiny_dir, **settings),
        _module(small_jsonl, tiny_dir, skip_train_batches=3, **settings),
    )
    for data in (first, second):
        data.setup("fit")
    order = list(first.train_dataloader().sampler)
    assert list(second.train_dataloader().sampler) == order[12:]  # 3 batches of 4 in
    too_many = _module(small_jsonl, tiny_dir, skip_train_batches=9, **settings)
    too_many.setup("fit")
    with pytest.raises(ConfigError, match="--data.skip_train_batches 9: an epoch here has only 9 batches"):
        too_many.train_dataloader()
