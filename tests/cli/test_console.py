"""What a run prints: no load report for the reward head every RM starts with, no "Epoch 0/-2", no FLOPs of 0."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from hhalign.models.loading import _FreshHeadReport
from hhalign.training.callbacks import ProgressBar, Summary

REPORT = "{name} LOAD REPORT from: x\\nKey | Status | \\n----+---------+-\\n{rows}\\nNotes:\\n- MISSING: ..."


def _record(rows: str) -> logging.LogRecord:
    text = REPORT.replace("\\n", "\n").format(name="LlamaForSequenceClassification", rows=rows)
    return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, text, None, None)


def test_only_a_report_of_the_fresh_reward_head_is_dropped():
    quiet = _FreshHeadReport()
    assert not quiet.filter(_record("score.weight | MISSING | "))
    assert quiet.filter(_record("score.weight | MISSING | \nmodel.norm.weight | MISSING | "))
    assert quiet.filter(_record("lm_head.weight | UNEXPECTED | "))
    assert quiet.filter(logging.LogRecord("t", logging.WARNING, "", 0, "another warning", None, None))


def test_a_reward_model_from_a_causal_lm_loads_without_the_report(tiny_dir, caplog):
    from hhalign.models.loading import load_model

    with caplog.at_level(logging.WARNING):
        model = load_model(str(tiny_dir), head="reward")
    assert model.score.weight.shape[0] == 1 and "LOAD REPORT" not in caplog.text
    assert not logging.getLogger("transformers.modeling_utils").filters  # the filter is gone after the load


def test_step_bounded_runs_show_the_epoch_without_a_negative_total():
    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)
    assert bar._get_train_description(0).strip() == "Epoch 0"
    bar._trainer = SimpleNamespace(max_epochs=3)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"


@pytest.mark.parametrize(
    ("global_step", "done", "accumulate", "updates", "total"),
    [
        (0, 0, 1, None, 200),  # a fresh run of 200 steps in an epoch of 500 batches
        (128, 128, 1, None, 200),  # resumed at step 128: the count starts at 128 and ends at 200, not "200/72"
        (64, 128, 2, None, 400),  # accumulating 2 batches a step: 136 steps left are 272 batches more
        (10, 5, 1, 2, 100),  # an online rollout of 2 optimizer steps: 190 steps left are 95 rollouts
    ],
)
def test_the_bar_total_is_where_the_count_ends(global_step, done, accumulate, updates, total):
    bar = ProgressBar()
    bar._trainer = SimpleNamespace(
        max_epochs=-1, max_steps=200, global_step=global_step, num_training_batches=500,
        accumulate_grad_batches=accumulate, lightning_module=SimpleNamespace(updates_per_rollout=updates),
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(
            current=SimpleNamespace(completed=done)))),
    )  # fmt: skip
    assert bar.total_train_batches == total
    bar._trainer.max_epochs = 3  # epoch-bounded: every batch of the epoch
    assert bar.total_train_batches == 500


def test_the_summary_leaves_out_a_flops_column_of_zeros(capsys):
    data = [(" ", ["0"]), ("Name", ["model"]), ("Type", ["Llama"]), ("Params", ["2.1 M"]), ("Mode", ["train"]),
            ("FLOPs", ["0"])]  # fmt: skip
    Summary.summarize(data, 2_100_000, 2_100_000, 8.4, {"train": 3, "eval": 0}, 0)
    out = capsys.readouterr().out
    assert "FLOPs" not in out and "Llama" in out and "Trainable params: 2.1 M" in out
    Summary.summarize(data, 2_100_000, 2_100_000, 8.4, {"train": 3, "eval": 0}, 10)
    assert "FLOPs" in capsys.readouterr().out
