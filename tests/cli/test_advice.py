"""Errors that give the right advice: a folder without tokenizer files is said to lack them (not a missing
sentencepiece), a file that is not a checkpoint is never answered with advice to turn safe loading off, and a
missing checkpoint given to ``export`` is not answered with a resume flag."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hhalign.cli import main


def _one_line(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    message = str(exited.value.code)
    assert message.startswith("hhalign: error: ") and "\n" not in message, message
    return message


def test_a_model_folder_without_tokenizer_files_says_so(tmp_path: Path, tiny_dir: Path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dir / name, folder / name)
    message = _one_line(["generate", "--model", str(folder), "--prompt", "hi", "--max_new_tokens", "2"])
    assert "holds no tokenizer files" in message and "save_pretrained" in message
    assert "sentencepiece" not in message and "tiktoken" not in message


@pytest.mark.parametrize("content", [b"trainer:\n  max_steps: 3\n", b"", b"PK\x03\x04 truncated zip"])
def test_export_of_a_file_that_is_no_checkpoint_never_suggests_unsafe_loading(tmp_path: Path, content: bytes):
    path = tmp_path / "dpo.yaml"
    path.write_bytes(content)
    message = _one_line(["export", "--ckpt", str(path), "--out", str(tmp_path / "out")])
    assert "is truncated or not a checkpoint" in message and "weights_only" not in message
    assert not (tmp_path / "out").exists()


def test_export_of_a_missing_checkpoint_names_where_checkpoints_are_not_a_resume_flag(tmp_path: Path):
    message = _one_line(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "out")])
    assert "does not exist" in message and "checkpoints/" in message and "--ckpt_path" not in message
