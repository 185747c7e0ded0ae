"""Errors that give the right advice: a file that is not a checkpoint is never answered with advice to turn safe
loading off, and a missing checkpoint given to ``export`` is not answered with a resume flag. (A folder without
tokenizer files: ``test_errors.py``.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from hhalign.cli import main


def _one_line(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    message = str(exited.value.code)
    assert message.startswith("hhalign: error: ") and "\n" not in message, message
    return message


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
