"""``hhalign evaluate`` and ``hhalign plot --frontier`` through the real CLI on tiny runs, the end-of-fit
evaluation, and the errors a user meets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hhalign.cli import main
from tests.conftest import fit_tiny, shipped_records, write_jsonl


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path, tiny_judge: Path) -> dict[str, Path]:
    """A two-step tiny DPO run on 64 shipped pairs, and the tiny judge."""
    root = tmp_path_factory.mktemp("evaluate")
    data = write_jsonl(root / "pairs.jsonl", shipped_records(64))
    dpo = fit_tiny(root, tiny_dir, data, "configs/tiny/dpo.yaml", trial="dpo", steps=2, val_every=2)
    return {"root": root, "data": data, "judge": tiny_judge, "dpo": dpo}


def test_evaluate_a_run_on_its_validation_pairs(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]):
    main(["evaluate", str(runs["dpo"]), "--judge", str(runs["judge"]), "--prompts", "8", "--max_new_tokens", "8"])
    printed = capsys.readouterr().out
    assert "win rate, policy over reference" in printed and "KL(policy‖reference)" in printed
    results = json.loads((runs["dpo"] / "eval" / "evaluation.json").read_text())
    rows = [json.loads(line) for line in (runs["dpo"] / "eval" / "samples.jsonl").read_text().splitlines()]
    held_out = json.loads((runs["dpo"] / "data_summary.json").read_text())["kept"]["val"]
    assert results["held_out_pairs"] == held_out and results["prompts"] == len(rows) == 8
    assert results["label"] == "tiny/dpo (β=0.1)" and results["policy"] == str(runs["dpo"] / "export")
    duel = results["policy_vs_reference"]
    assert duel["wins"] == sum(r["winner"] == "policy" for r in rows)
    assert duel["ties"] == sum(r["winner"] == "tie" for r in rows)
    assert all(1 <= r["policy_tokens"] <= 8 and r["prompt"] and r["chosen"] for r in rows)
    kl = sum(r["policy_log_ratio"] for r in rows) / len(rows)
    assert results["kl"]["sequence"]["mean"] == pytest.approx(kl)
    assert results["reward"]["chosen"]["mean"] == pytest.approx(sum(r["chosen_reward"] for r in rows) / 8)


def test_the_frontier_is_drawn_from_three_evaluations_under_each_judge(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
):
    import shutil

    second = runs["root"] / "judges" / "second" / "export"  # the same reward model under another name
    shutil.copytree(runs["judge"], second)
    folders = []
    for judge, name in ((runs["judge"], "first"), (second, "second")):
        for seed in (1, 2, 3):
            out = runs["root"] / f"eval-{name}-{seed}"
            main([
                "evaluate", "--policy", str(runs["dpo"] / "export"), "--reference", str(runs["dpo"] / "export"),
                "--judge", str(judge), "--data", str(runs["data"]), "--max_length", "128", "--prompts", "6",
                "--max_new_tokens", "6", "--seed", str(seed), "--out", str(out), "--label", f"seed {seed}",
            ])  # fmt: skip
            folders.append(str(out))
    picture = runs["root"] / "frontier.png"
    main(["plot", "--frontier", *folders, "--out", str(picture)])
    one_panel = runs["root"] / "frontier-one.png"
    main(["plot", "--frontier", *folders[:3], "--out", str(one_panel)])
    assert picture.stat().st_size > 1.5 * one_panel.stat().st_size  # two panels side by side
    table = picture.with_suffix(".md").read_text().splitlines()
    assert len(table) == 2 + 6 and all(f"seed {s}" in "".join(table) for s in (1, 2, 3))
    with open(picture.with_suffix(".csv")) as handle:
        points = list(csv.DictReader(handle))
    assert [p["judge"] for p in points] == [points[0]["judge"]] * 3 + ["judges/second"] * 3
    first, again = sorted(points[:3], key=lambda p: p["label"]), sorted(points[3:], key=lambda p: p["label"])
    assert [p["reward"] for p in first] == [p["reward"] for p in again]  # the same judge, the same seeds
    for point in points:
        evaluation = json.loads((Path(point["source"])).read_text())
        assert float(point["kl"]) == evaluation["kl"]["sequence"]["mean"] == 0.0  # the policy is its own reference
        assert float(point["reward"]) == pytest.approx(evaluation["reward"]["policy"]["mean"])
    assert str(picture) in capsys.readouterr().out


def test_evaluate_at_fit_end_logs_the_numbers_and_summarizes_them(runs: dict[str, Path], tiny_dir: Path):
    callback = [
        "--trainer.callbacks+=hhalign.tools.evaluate.EvaluateAtFitEnd",
        f"--trainer.callbacks.judge={runs['judge']}", "--trainer.callbacks.prompts=6",
        "--trainer.callbacks.max_new_tokens=6",
    ]  # fmt: skip
    run_dir = fit_tiny(runs["root"], tiny_dir, runs["data"], "configs/tiny/dpo.yaml", *callback, trial="e", steps=2)
    with open(run_dir / "metrics.csv") as handle:
        logged = [r for r in csv.DictReader(handle) if r.get("eval/win_rate_vs_reference")]
    assert len(logged) == 1 and logged[0]["step"] == "2"
    results = json.loads((run_dir / "eval" / "evaluation.json").read_text())
    assert float(logged[0]["eval/kl"]) == pytest.approx(results["kl"]["sequence"]["mean"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["evaluation"]["eval/policy_tokens"] == pytest.approx(results["length"]["policy"]["mean"])
    assert results["prompts"] == 6 and results["step"] == 2


def test_a_judge_that_is_not_a_reward_model_is_refused(runs: dict[str, Path], tiny_dir: Path):
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", str(runs["dpo"]), "--judge", str(tiny_dir)])
    assert "is not a reward model" in str(exited.value) and "rm.yaml" in str(exited.value)


def test_a_missing_judge_stops_the_fit_before_it_trains(runs: dict[str, Path], tiny_dir: Path):
    missing = runs["root"] / "no-such-rm" / "export"
    callback = ["--trainer.callbacks+=hhalign.tools.evaluate.EvaluateAtFitEnd", f"--trainer.callbacks.judge={missing}"]
    with pytest.raises(SystemExit) as exited:
        fit_tiny(runs["root"], tiny_dir, runs["data"], "configs/tiny/dpo.yaml", *callback, trial="nojudge")
    assert "does not exist" in str(exited.value) and str(missing) in str(exited.value)
    assert not (runs["root"] / "tiny" / "nojudge" / "checkpoints").exists()


def test_an_online_run_is_evaluated_on_the_prompts_of_its_held_out_pairs(runs: dict[str, Path], tiny_dir: Path):
    rloo = fit_tiny(
        runs["root"], tiny_dir, runs["data"], "configs/tiny/rloo.yaml", "--model.reward_model", "null",
        "--model.reward_functions", "[tests.online_rewards:share_of_e]", "--model.max_completion_length", "6",
        "--data.batch_size", "2", trial="rloo", steps=1, val_every=1,
    )  # fmt: skip
    main(["evaluate", str(rloo), "--judge", str(runs["judge"]), "--prompts", "4", "--max_new_tokens", "6"])
    results = json.loads((rloo / "eval" / "evaluation.json").read_text())
    assert results["label"] == "tiny/rloo (β=0.05)" and results["prompts"] == 4
    assert results["held_out_pairs"] == json.loads((runs["dpo"] / "data_summary.json").read_text())["kept"]["val"]


def test_evaluate_samples_a_prompt_only_file_and_leaves_out_the_chosen_comparison(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
):
    from tests.conftest import write_jsonl

    prompts = write_jsonl(
        runs["root"] / "prompts.jsonl", [{"prompt": f"\n\nHuman: say {w}\n\nAssistant:"} for w in "abcdef"]
    )
    out = runs["root"] / "eval-prompts"
    main([
        "evaluate", "--policy", str(runs["dpo"] / "export"), "--reference", str(runs["dpo"] / "export"),
        "--judge", str(runs["judge"]), "--data", str(prompts), "--max_length", "128", "--prompts", "6",
        "--max_new_tokens", "6", "--out", str(out),
    ])  # fmt: skip
    results = json.loads((out / "evaluation.json").read_text())
    assert results["prompts"] == 6 and "policy_vs_chosen" not in results and set(results["reward"]) == {
        "policy", "reference"
    }  # fmt: skip
    printed = capsys.readouterr().out
    assert "win rate, policy over reference" in printed and "over dataset chosen" not in printed
