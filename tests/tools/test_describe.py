"""Exports that say what they are: the prompt format, the objective and its settings, the data, the steps and the
last metrics in ``hhalign_export.json`` and a model card; ``score`` and ``generate`` ask a model in the format it
learned unless told otherwise; files readable as the user's umask allows."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from hhalign.tools.describe import chat_template_for, on_or_off
from tests.conftest import CHAT_TEMPLATE, fit_tiny


@pytest.fixture
def user_umask():
    previous = os.umask(0o022)
    yield 0o022
    os.umask(previous)


@pytest.mark.slow
def test_a_fit_export_records_its_prompt_format_objective_data_steps_and_metrics(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path, user_umask: int
):
    run = fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/dpo.yaml", "--data.chat_template", CHAT_TEMPLATE,
                   steps=2, val_every=2)  # fmt: skip
    export = run / "export"
    info = json.loads((export / "hhalign_export.json").read_text())
    assert info["prompt_format"]["chat_template"] is True
    assert info["objective"]["module"] == "DPOModule" and info["objective"]["settings"]["beta"] == 0.1
    assert info["data"]["path"] == str(small_jsonl) and info["steps"] == 2
    assert info["final_metrics"]["val/loss"] > 0 and "val/reward_accuracy" in info["final_metrics"]
    from hhalign.models.loading import load_tokenizer

    assert load_tokenizer(str(export)).chat_template == CHAT_TEMPLATE  # the run's own template travels with it
    card = (export / "README.md").read_text()
    assert "DPOModule" in card and "apply_chat_template" in card and "val/loss" in card
    assert chat_template_for(None, str(export)) is True and chat_template_for(False, str(export)) is False
    assert chat_template_for(None, str(run / "checkpoints" / "last.ckpt")) is True  # from the run's config
    for path in export.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~user_umask, path


def test_score_reads_the_format_the_reward_model_learned(tmp_path: Path, tiny_judge: Path, tiny_chat_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]):  # fmt: skip
    from hhalign.tools.use import score

    judge = tmp_path / "judge"
    shutil.copytree(tiny_judge, judge)
    for name in ("tokenizer_config.json", "chat_template.jinja"):  # the tokenizer with CHAT_TEMPLATE
        if (tiny_chat_dir / name).is_file():
            shutil.copy(tiny_chat_dir / name, judge / name)
    info = json.loads((judge / "hhalign_export.json").read_text())

    def rewards(*flags: str) -> list[float]:
        score(["--model", str(judge), "--prompt", "hi there", "--response", "hello", "--response", "go away", *flags])
        return [json.loads(line)["reward"] for line in capsys.readouterr().out.splitlines()]

    unrecorded = rewards()  # nothing recorded: the raw hh-rlhf text, as before
    assert unrecorded == rewards("--chat_template", "false")
    info["prompt_format"] = {"chat_template": True}
    (judge / "hhalign_export.json").write_text(json.dumps(info))
    recorded = rewards()
    assert recorded == rewards("--chat_template") == rewards("--chat_template", "true")
    assert recorded != unrecorded
    assert rewards("--chat_template", "false") == unrecorded  # the flag overrides the export


def test_a_true_or_false_flag_refuses_anything_else():
    assert on_or_off("True") is True and on_or_off("off") is False
    with pytest.raises(ValueError):
        on_or_off("maybe")


def test_an_export_into_a_folder_leaves_the_files_already_there_as_they_were(tmp_path: Path, tiny_dir: Path,
                                                                             user_umask: int):  # fmt: skip
    from hhalign.models.loading import load_model, load_tokenizer
    from hhalign.tools.export import export_model

    out = tmp_path / "shared"
    out.mkdir()
    secret = out / "private.key"
    secret.write_text("not the model's")
    secret.chmod(0o600)
    os.utime(secret, (1_000_000, 1_000_000))
    export_model(load_model(str(tiny_dir)), load_tokenizer(str(tiny_dir)), out, {"head": "causal_lm"})
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~user_umask
