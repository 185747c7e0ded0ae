"""Every bad input of docs/operations.md's table through the real CLI: one line that names the file (and line) or the
option and says what to do, before any weights load, and nothing of an earlier run touched."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from hhalign.cli import main
from tests.conftest import REPO, shipped_records, write_jsonl


def _one_line_error(*args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    message = str(exited.value.code)
    assert message.startswith("hhalign: error: ") and "\n" not in message, message
    assert "Traceback" not in message
    return message


def _fit(tmp_path: Path, model: Path | str, data: Path | str, *extra: str, config: str = "configs/tiny/dpo.yaml"):
    return _one_line_error(
        "fit", "--config", str(REPO / config), "--model.model_name_or_path", str(model), "--data.path", str(data),
        "--output_dir", str(tmp_path / "out"), "--trial_name", "bad", *extra,
    )  # fmt: skip


def _gz(path: Path, records: list[dict]) -> Path:
    with gzip.open(path, "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    return path


def _conversational(reply_roles: tuple[str, str]) -> list[dict]:
    good = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "assistant", "content": "go"}]}  # fmt: skip
    bad = {**good, "chosen": [{"role": reply_roles[0], "content": "x"}, {"role": reply_roles[1], "content": "y"}]}
    return [good, bad]


def test_a_truncated_gzip_file_names_the_file_and_where_it_breaks(tmp_path: Path, tiny_dir: Path):
    whole = _gz(tmp_path / "whole.jsonl.gz", shipped_records(48)).read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    message = _fit(tmp_path, tiny_dir, cut)
    assert f"{cut}: the gzip stream breaks off after line" in message and "truncated" in message


def test_a_plain_file_named_gz_says_so(tmp_path: Path, tiny_dir: Path):
    plain = write_jsonl(tmp_path / "pairs.jsonl.gz", shipped_records(4))
    assert f"{plain}: named .gz but not gzip-compressed" in _fit(tmp_path, tiny_dir, plain)


@pytest.mark.parametrize(
    ("roles", "expected"),
    [(("bot", "assistant"), "role 'bot' is not one of"), (("user", "assistant"), "message 1 has role 'user'")],
)
def test_a_wrong_role_on_a_later_line_is_named(tmp_path: Path, tiny_dir: Path, roles: tuple, expected: str):
    data = write_jsonl(tmp_path / "chat.jsonl", _conversational(roles))
    message = _fit(tmp_path, tiny_dir, data)
    assert f"{data}:2" in message and expected in message and "conversational-implicit" not in message


@pytest.mark.parametrize(
    ("records", "advice"),
    [
        ([{"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: a"}] * 8,
         "chosen and rejected are the same text"),
        ([{"prompt": "hi", "completion": "a", "label": True}] * 8, "KTO reads those"),
        ([{"prompt": "hi"}] * 8, "no chosen/rejected pair: map the columns"),
    ],
    ids=["identical", "unpaired", "prompt-only"],
)  # fmt: skip
def test_no_pairs_left_names_the_file_and_the_real_cause(tmp_path: Path, tiny_dir: Path, records, advice: str):
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    message = _fit(tmp_path, tiny_dir, data)
    assert f"{data}: no training pairs left" in message and advice in message
    assert "max_length" not in message


def test_a_published_set_read_without_its_preset_is_named_with_the_flag_that_loads_it(tmp_path: Path, tiny_dir: Path):
    records = [{"prompt": "hi", "response_0": "a", "response_1": "b", "better_response_id": 1}] * 8  # PKU-SafeRLHF
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    message = _fit(tmp_path, tiny_dir, data)
    assert message.startswith(f"hhalign: error: {data}:1: these rows hold no chosen/rejected pair")
    assert message.endswith("load them with --data.preset pku-saferlhf-better") and "max_length" not in message


def test_a_utf8_bom_file_is_read(tmp_path: Path):
    from hhalign.data.reading import read_records

    for name in ("bom.jsonl", "bom.json"):
        records = shipped_records(3)
        text = json.dumps(records) if name.endswith(".json") else "".join(json.dumps(r) + "\n" for r in records)
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        read = read_records(str(tmp_path / name))
        assert len(read.records) == 3 and read.format == "hh-rlhf"


def test_a_missing_relative_path_is_said_missing_not_a_hub_failure(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "mydata").mkdir()
    monkeypatch.chdir(tmp_path)
    assert "data path 'mydata/pairs' does not exist" in _fit(tmp_path, tiny_dir, "mydata/pairs")
    message = _fit(tmp_path, tiny_dir, "nodata/pairs")  # could be a hub id: both readings are named
    assert f"is not a local file or folder (none under {os.getcwd()})" in message and "hub dataset" in message


def test_the_gpu_recipe_on_a_machine_without_a_gpu(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the recipe runs")
    message = _fit(tmp_path, tiny_dir, small_jsonl, "--wandb_mode", "disabled", config="configs/dpo.yaml")
    assert "--trainer.accelerator gpu: torch sees no GPU" in message and "configs/tiny/" in message
    assert not (tmp_path / "out").exists()


def test_lightnings_fsdp_on_the_cpu(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    message = _fit(tmp_path, tiny_dir, small_jsonl, "--trainer.strategy", "fsdp", "--trainer.devices", "2")
    assert "--trainer.strategy fsdp runs on GPUs only" in message and "ddp" in message


def test_several_passes_a_rollout_under_fsdp_are_refused_before_anything_loads(tmp_path: Path, small_jsonl: Path):
    """The model path does not exist: the refusal must come first, before the model (or the data) is read."""
    from tests.sharded import fsdp_overlay

    fsdp = ("--config", str(fsdp_overlay(tmp_path)), "--model.num_minibatches", "2")
    message = _fit(tmp_path, tmp_path / "no-model", small_jsonl, *fsdp, config="configs/tiny/rloo.yaml")
    assert message.startswith("hhalign: error: --model.num_minibatches 2: under FSDP an online step is one")
    assert "--trainer.strategy ddp" in message


@pytest.mark.parametrize("name", ["../..", "a/b", ".."])
def test_a_run_name_cannot_leave_the_output_folder(tmp_path: Path, tiny_dir: Path, small_jsonl: Path, name: str):
    keep = tmp_path / "out" / "tiny" / "metrics.csv"  # what `../..` from a run would reach with --overwrite
    keep.parent.mkdir(parents=True)
    keep.write_text("step\n0\n")
    message = _fit(tmp_path, tiny_dir, small_jsonl, "--trial_name", name, "--overwrite", "true")
    assert "--trial_name" in message and "single folder name" in message
    assert keep.read_text() == "step\n0\n"


def test_score_refuses_a_model_that_is_not_a_reward_model(tiny_dir: Path):
    message = _one_line_error("score", "--model", str(tiny_dir), "--prompt", "Hi", "--response", "Hello")
    assert "is not a reward model (its head is causal_lm)" in message
