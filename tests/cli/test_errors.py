"""Bad input through the real CLI: one clear message naming the place and the fix, no traceback, and
nothing already written destroyed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hhalign.cli import main
from tests.conftest import REPO, shipped_records, write_jsonl

EARLIER = "step,train/loss\n0,0.69\n"


def _fail(tmp_path: Path, *args: str) -> str:
    """Run `hhalign fit` expecting a user error; return its message after checking an earlier run survived."""
    earlier = tmp_path / "tiny" / "earlier" / "metrics.csv"
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_text(EARLIER)
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "fit",
                "--config",
                str(REPO / "configs/tiny/dpo.yaml"),
                "--output_dir",
                str(tmp_path),
                "--trial_name",
                "new",
                *args,
            ]
        )
    assert earlier.read_text() == EARLIER
    message = str(exited.value.code)
    assert message.startswith("hhalign: error: ")
    return message


def test_dirty_data_file_names_the_line(tmp_path: Path, tiny_dir: Path):
    data = tmp_path / "dirty.jsonl"
    data.write_text('{"chosen": "a", "rejected": "b"}\n{"chosen": "a"\n')
    message = _fail(tmp_path, "--model.model_name_or_path", str(tiny_dir), "--data.path", str(data))
    assert f"{data}:2: malformed JSON" in message and "on_bad_record: skip" in message


def test_missing_data_path(tmp_path: Path, tiny_dir: Path):
    message = _fail(tmp_path, "--model.model_name_or_path", str(tiny_dir), "--data.path", str(tmp_path / "x.jsonl"))
    assert "x.jsonl' does not exist; set data.path" in message


def test_model_folder_without_tokenizer(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    bare = tmp_path / "bare-model"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dir / name, bare / name)
    message = _fail(tmp_path, "--model.model_name_or_path", str(bare), "--data.path", str(small_jsonl))
    assert f"'{bare}' holds no tokenizer files" in message and "save_pretrained" in message
    assert "sentencepiece" not in message and "tiktoken" not in message  # the library's guess, wrong here


def test_tokenizer_without_pad_or_eos(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    import json

    broken = tmp_path / "no-eos"
    shutil.copytree(tiny_dir, broken)
    config_file = broken / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("eos_token", None)
    config.pop("pad_token", None)
    config_file.write_text(json.dumps(config))
    message = _fail(tmp_path, "--model.model_name_or_path", str(broken), "--data.path", str(small_jsonl))
    assert "has neither a pad nor an EOS token" in message and "add an EOS token" in message


def test_max_length_too_small_for_any_pair(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    message = _fail(
        tmp_path,
        "--model.model_name_or_path",
        str(tiny_dir),
        "--data.path",
        str(small_jsonl),
        "--data.max_length",
        "8",
        "--data.max_response_length",
        "4",
    )
    assert "no training pairs left" in message and "raise data.max_length (now 8)" in message
    assert "prompt_too_long" in message


def test_bad_records_skipped_are_counted_in_the_summary(tmp_path: Path, tiny_dir: Path):
    from hhalign.data.datamodule import PreferenceDataModule

    data = write_jsonl(tmp_path / "dirty.jsonl", shipped_records(40))
    with open(data, "a") as handle:
        handle.write('not json\n{"chosen": 1, "rejected": "x"}\n')
    module = PreferenceDataModule(
        path=str(data), tokenizer_name_or_path=str(tiny_dir), on_bad_record="skip", max_length=256
    )
    module.setup("fit")
    assert module.summary["read"] == 42 and module.summary["dropped"]["bad_record"] == 2
