"""``make demo`` and its kin resume: a second run after an interruption keeps the finished stages (summary and
export written), continues the interrupted one from its last checkpoint and starts the missing ones afresh. The
Makefile's own recipe runs, with ``hhalign`` replaced by a script that records how it was called."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO


def _touch(path: Path, when: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    os.utime(path, (when, when))


def test_a_second_make_demo_tiny_keeps_finished_stages_and_resumes_the_interrupted_one(tmp_path: Path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    _touch(tmp_path / "pyproject.toml", 1_000)
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "hhalign"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    os.utime(fake, (2_000, 2_000))  # newer than pyproject.toml: nothing to install
    _touch(tmp_path / "artifacts" / "tiny" / "config.json", 3_000)  # newer than hhalign: nothing to build
    outputs = tmp_path / "outputs" / "tiny"
    for finished in ("sft-base/summary.json", "sft/summary.json", "sft/export/config.json"):
        _touch(outputs / finished, 4_000)
    _touch(outputs / "dpo" / "checkpoints" / "step=4.ckpt", 4_000)  # interrupted after a checkpoint
    (outputs / "dpo" / "checkpoints" / "last.ckpt").symlink_to("step=4.ckpt")
    _touch(outputs / "rm" / "metrics.csv", 4_000)  # interrupted before its first checkpoint
    made = subprocess.run(["make", "demo-tiny", f"BIN={fake.parent}"], cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert calls.read_text().splitlines() == [
        "fit --config configs/tiny/dpo.yaml --ckpt_path last",
        "fit --config configs/tiny/rm.yaml --overwrite true",
        "summary outputs/tiny/sft-base outputs/tiny/sft outputs/tiny/dpo outputs/tiny/rm",
    ]
    assert "outputs/tiny/sft: finished, kept" in made.stdout
