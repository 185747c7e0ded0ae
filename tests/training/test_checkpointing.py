"""Checkpoints: atomic writes, safe and clear loading, and fingerprints that refuse a mismatched resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hhalign.checkpoint_files import CheckpointError
from hhalign.data.examples import sequences_fingerprint
from hhalign.training.checkpointing import AtomicCheckpointIO, weights_fingerprint
from tests.conftest import fit_tiny, shipped_records, write_jsonl

DPO = "configs/tiny/dpo.yaml"


class ExplodesWhenPickled:
    """Stands for a crash in the middle of writing a checkpoint."""

    def __reduce__(self):
        raise RuntimeError("disk died mid-write")


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path: Path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 4}, path)
    big = {"state_dict": {"w": torch.zeros(1000)}, "global_step": 6, "boom": ExplodesWhenPickled()}
    with pytest.raises(RuntimeError, match="disk died"):
        io.save_checkpoint(big, path)
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 4 and torch.equal(loaded["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "could not be read"),
        (b"PK\x03\x04 truncated zip", "could not be read"),
    ],
)
def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        AtomicCheckpointIO().load_checkpoint(path)


def test_truncated_real_checkpoint_and_foreign_file(tmp_path: Path):
    io = AtomicCheckpointIO()
    good = tmp_path / "good.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.randn(1000)}, "global_step": 1}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="truncated"):
        io.load_checkpoint(cut)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        io.load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        io.load_checkpoint(tmp_path / "absent.ckpt")


def test_pickled_code_is_not_run_by_default(tmp_path: Path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 0, "payload": Path("x")}, path)  # any non-tensor object
    with pytest.raises(CheckpointError, match="objects that safe loading refuses") as refused:
        AtomicCheckpointIO().load_checkpoint(path)
    assert "weights_only" not in str(refused.value).split("(")[0]  # no advice to turn safe loading off
    assert AtomicCheckpointIO().load_checkpoint(path, weights_only=False)["payload"] == Path("x")


def test_fingerprints_tell_data_and_weights_apart():
    assert sequences_fingerprint([([1, 2], [3])]) != sequences_fingerprint([([1], [2, 3])])
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert weights_fingerprint(a) == weights_fingerprint(a) != weights_fingerprint(b)


@pytest.mark.slow
def test_resume_refuses_other_data_or_reference_or_module(
    tmp_path: Path, tiny_dir: Path, small_jsonl: Path, capsys: pytest.CaptureFixture
):
    run = fit_tiny(tmp_path, tiny_dir, small_jsonl, DPO, steps=2)
    last = run / "checkpoints" / "last.ckpt"
    described = (run / "export" / "hhalign_export.json").read_bytes()
    final = json.loads((run / "summary.json").read_text())["final_validation"]
    other_data = write_jsonl(tmp_path / "other.jsonl", shipped_records(60)[12:])
    with pytest.raises(SystemExit) as exited:
        fit_tiny(tmp_path, tiny_dir, other_data, DPO, "--ckpt_path", str(last))
    assert "the training data" in str(exited.value.code) and "differ from the checkpoint" in str(exited.value.code)

    other_ref = tmp_path / "other-ref"
    shutil.copytree(tiny_dir, other_ref)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(other_ref)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)
    model.save_pretrained(other_ref)
    with pytest.raises(SystemExit) as exited:
        fit_tiny(
            tmp_path,
            tiny_dir,
            small_jsonl,
            DPO,
            "--ckpt_path",
            str(last),
            "--model.ref_model_name_or_path",
            str(other_ref),
        )
    assert "reference model's weights differ" in str(exited.value.code)

    with pytest.raises(SystemExit) as exited:
        fit_tiny(tmp_path, tiny_dir, small_jsonl, "configs/tiny/rm.yaml", "--ckpt_path", str(last))
    assert "the training module differ" in str(exited.value.code)

    # resumed with nothing left to train: the export and what it records, and the summary's numbers, are kept
    capsys.readouterr()
    fit_tiny(tmp_path, tiny_dir, small_jsonl, DPO, "--ckpt_path", str(last), steps=2)
    assert "nothing left to train (the run is at step 2 of max_steps 2" in capsys.readouterr().out
    assert (run / "export" / "hhalign_export.json").read_bytes() == described
    assert json.loads((run / "summary.json").read_text())["final_validation"] == final != {}


@pytest.mark.slow
def test_a_checkpoint_validates_on_other_data(tmp_path: Path, tiny_dir: Path, small_jsonl: Path):
    """The data fingerprint guards a resumed fit only: `validate --ckpt_path` scores any data."""
    import json

    from hhalign.cli import main
    from tests.conftest import tiny_args

    fit_tiny(tmp_path, tiny_dir, small_jsonl, DPO, steps=2)
    last = tmp_path / "tiny" / "t" / "checkpoints" / "last.ckpt"
    other_data = write_jsonl(tmp_path / "other.jsonl", shipped_records(90)[50:])
    main(tiny_args("validate", DPO, tiny_dir, other_data, tmp_path, "--trial_name", "v", "--ckpt_path", str(last)))
    summary = json.loads((tmp_path / "tiny" / "v" / "summary.json").read_text())
    assert summary["validated_checkpoint"] == str(last) and summary["final_validation"]["val/examples"] == 10
    assert "export" not in summary  # validate exports nothing: the summary names only what exists
    assert Path(summary["metrics"]).is_file()
    data = json.loads((tmp_path / "tiny" / "v" / "data_summary.json").read_text())
    assert str(other_data) in data["validation"]
    main(tiny_args("validate", DPO, tiny_dir, other_data, tmp_path, "--trial_name", "base"))  # no checkpoint
    summary = json.loads((tmp_path / "tiny" / "base" / "summary.json").read_text())
    assert summary["validated_model"] == str(tiny_dir) and "validated_checkpoint" not in summary


def test_the_weights_fingerprint_makes_no_float64_copy_of_a_tensor(monkeypatch: pytest.MonkeyPatch):
    """On a GPU a float64 copy of a 7B model's embedding is 4.4 GB at the first checkpoint; the sum is taken in
    float64 without one, and the digest still tells two weights apart."""
    model = torch.nn.Linear(8, 4)
    before = weights_fingerprint(model)

    def no_copy(self: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a float64 copy of a tensor")

    monkeypatch.setattr(torch.Tensor, "double", no_copy)
    assert weights_fingerprint(model) == before
    with torch.no_grad():
        model.weight[0, 0] += 1e-3
    assert weights_fingerprint(model) != before


def test_resume_last_looks_where_the_configs_checkpoints_write(tmp_path: Path):
    """A ModelCheckpoint with its own dirpath keeps last.ckpt there: --ckpt_path last is accepted from it, and a
    refusal names the newest complete checkpoint over every folder, never a hidden partial file."""
    from hhalign.errors import UserError
    from hhalign.training.rundir import check_resume_last

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir(parents=True)
    (elsewhere / "step=3.ckpt").write_bytes(b"3")
    (elsewhere / ".step=4.partial-1.ckpt").write_bytes(b"4")
    with pytest.raises(UserError, match=r"newest complete checkpoint is .*elsewhere/step=3\.ckpt"):
        check_resume_last(run, [elsewhere])
    (elsewhere / "last.ckpt").symlink_to("step=3.ckpt")
    check_resume_last(run, [elsewhere])  # accepted
    with pytest.raises(UserError, match="does not exist to resume"):
        check_resume_last(run)  # the default folder, under a run that is not there
