"""Preference sets as they are published: pairs picked by a choice column, pairs made from ratings, rows through a
record function. Each public set's schema is written here (a few rows each: the hub is not reachable), and the
pairs derived from them are the ones worked out by hand beside each test."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import Counter
from pathlib import Path

import pytest

from hhalign.data.choices import Choice
from hhalign.data.datamodule import PreferenceDataModule
from hhalign.data.ratings import Ratings
from hhalign.data.reading import read_records
from hhalign.data.reshaping import reshaper
from hhalign.errors import ConfigError, DataError
from tests.conftest import write_jsonl


def _pairs(path: Path, counts: Counter | None = None, **how) -> list[tuple]:
    counts = Counter() if counts is None else counts
    records = read_records(str(path), counts=counts, reshape=reshaper(**_how(how))).records
    return [(r.prompt, r.chosen, r.rejected, r.margin) for r in records]


def _how(how: dict) -> dict:
    return {"preset": None, "choice": None, "ratings": None, "record_function": None} | how


def shp_row(i: int, label: int, score_a: int, score_b: int) -> dict:  # stanfordnlp/SHP's documented columns
    return {"post_id": f"p{i}", "domain": "askscience_train", "upvote_ratio": 0.9, "history": f"Why {i}?",
            "c_root_id_A": "a", "c_root_id_B": "b", "created_at_utc_A": 1, "created_at_utc_B": 2,
            "score_A": score_a, "score_B": score_b, "human_ref_A": f"A{i}", "human_ref_B": f"B{i}",
            "labels": label, "seconds_difference": 1.0, "score_ratio": max(score_a, score_b) / min(score_a, score_b),
            }  # fmt: skip


def test_shp_pairs_follow_labels_with_the_log_score_ratio_as_margin(tmp_path):
    path = write_jsonl(tmp_path / "shp.jsonl", [shp_row(0, 1, 30, 10), shp_row(1, 0, 4, 12)])
    assert _pairs(path, preset="shp") == [
        ("Why 0?", "A0", "B0", pytest.approx(math.log(3))),  # labels 1: A preferred, 30 over 10
        ("Why 1?", "B1", "A1", pytest.approx(math.log(3))),  # labels 0: B preferred, 12 over 4
    ]
    records = read_records(str(path), reshape=reshaper(**_how({"preset": "shp"}))).records
    assert records[0].columns["domain"] == "askscience_train" and "labels" not in records[0].columns


def test_shp_mapped_by_column_names_is_refused_naming_labels(tmp_path):
    path = write_jsonl(tmp_path / "shp.jsonl", [shp_row(0, 1, 30, 10), shp_row(1, 0, 4, 12)])
    columns = {"prompt": "history", "chosen": "human_ref_A", "rejected": "human_ref_B"}
    with pytest.raises(DataError, match=r"shp.jsonl:1: .*leaves 'labels' unused.*--data.preset shp"):
        read_records(str(path), columns=columns, on_bad_record="skip")  # refused, not skipped


def pku_row(i: int, better: int, safer: int) -> dict:  # PKU-Alignment/PKU-SafeRLHF
    return {"prompt": f"How to {i}?", "response_0": f"r0-{i}", "response_1": f"r1-{i}", "prompt_source": "x",
            "response_0_source": "m0", "response_1_source": "m1", "is_response_0_safe": safer == 0,
            "is_response_1_safe": safer == 1, "better_response_id": better, "safer_response_id": safer}  # fmt: skip


def test_pku_saferlhf_by_helpfulness_or_by_safety_and_its_prompts_for_online_runs(tmp_path):
    path = write_jsonl(tmp_path / "pku.jsonl", [pku_row(0, 0, 1), pku_row(1, 1, 1)])
    assert _pairs(path, preset="pku-saferlhf-better") == [
        ("How to 0?", "r0-0", "r1-0", None), ("How to 1?", "r1-1", "r0-1", None)]  # fmt: skip
    assert _pairs(path, preset="pku-saferlhf-safer") == [
        ("How to 0?", "r1-0", "r0-0", None), ("How to 1?", "r1-1", "r0-1", None)]  # fmt: skip
    with pytest.raises(DataError, match=r"no chosen/rejected pair.*PKU-SafeRLHF.*--data.preset pku-saferlhf-better"):
        read_records(str(path))  # read for pairs as it was: prompt-only, then "no pairs left"
    assert read_records(str(path), pairs=False).format == "prompt-only"  # an online run's prompts


def _conversation(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_chatbot_arena_winners_and_both_kinds_of_tie(tmp_path):
    rows = [{"question_id": str(i), "model_a": "x", "model_b": "y", "winner": winner, "judge": "arena_user",
             "conversation_a": _conversation(f"q{i}", f"a{i}"), "conversation_b": _conversation(f"q{i}", f"b{i}"),
             "turn": 1, "anony": True, "language": "English", "tstamp": 1.0}
            for i, winner in enumerate(["model_a", "model_b", "tie", "tie (bothbad)"])]  # fmt: skip
    counts = Counter()
    user = [{"role": "user", "content": "q0"}]
    assert _pairs(write_jsonl(tmp_path / "arena.jsonl", rows), counts, preset="chatbot-arena") == [
        (user, [{"role": "assistant", "content": "a0"}], [{"role": "assistant", "content": "b0"}], None),
        ([{"role": "user", "content": "q1"}], [{"role": "assistant", "content": "b1"}],
         [{"role": "assistant", "content": "a1"}], None),
    ]  # fmt: skip
    assert counts["tie"] == 2


def test_helpsteer2_preferences_by_the_sign_of_their_strength(tmp_path):
    rows = [{"split": "train", "prompt": f"p{i}", "response_1": f"one{i}", "response_2": f"two{i}",
             "preference_strength": s, "preference_statement": "", "preference_elaboration": ""}
            for i, s in enumerate([-2, 3, 0])]  # fmt: skip
    counts = Counter()
    path = write_jsonl(tmp_path / "preference.jsonl", rows)
    assert _pairs(path, counts, preset="helpsteer2-preference") == [
        ("p0", "one0", "two0", 2.0), ("p1", "two1", "one1", 3.0)]  # fmt: skip
    assert counts["tie"] == 1


def ultrafeedback_row(i: int, scores: list) -> dict:  # openbmb/UltraFeedback, raw
    completions = [{"model": f"m{j}", "principle": "helpfulness", "custom_system_prompt": "", "response": f"r{i}.{j}",
                    "annotations": {"helpfulness": {"Rating": str(s), "Rationale": ""}}, "critique": "",
                    "fine-grained_score": s, "overall_score": 5.0} for j, s in enumerate(scores)]  # fmt: skip
    return {"source": "evol", "instruction": f"Do {i}", "models": [c["model"] for c in completions],
            "completions": completions, "correct_answers": [], "incorrect_answers": []}  # fmt: skip


def test_ultrafeedback_best_against_a_seeded_random_lower_one_and_the_other_rules(tmp_path):
    rows = [ultrafeedback_row(0, [3.0, 4.5, 2.0, "N/A"]), ultrafeedback_row(1, [4.0, 4.0, 4.0, 4.0])]
    path = write_jsonl(tmp_path / "uf.jsonl", rows)
    counts = Counter()
    ((prompt, chosen, rejected, margin),) = _pairs(path, counts, preset="ultrafeedback")
    assert (prompt, chosen) == ("Do 0", "r0.1") and (rejected, margin) in {("r0.0", 1.5), ("r0.2", 2.5)}
    assert counts == {"tie": 1, "unrated_reply": 1}  # the second record's replies all rated alike
    assert _pairs(path, preset="ultrafeedback") == [(prompt, chosen, rejected, margin)]  # the same draw again
    draws = {_pairs(path, ratings=Ratings("instruction", "response", ["fine-grained_score"], "completions",
                                          seed=s))[0][2] for s in range(12)}  # fmt: skip
    assert draws == {"r0.0", "r0.2"}  # both lower replies get drawn across seeds
    worst = Ratings("instruction", "response", ["annotations.helpfulness.Rating"], "completions", "best-vs-worst")
    assert _pairs(path, ratings=worst) == [("Do 0", "r0.1", "r0.2", 2.5)]
    every = Ratings("instruction", "response", ["fine-grained_score"], "completions", "all-pairs", min_gap=1.0)
    counts = Counter()
    assert _pairs(path, counts, ratings=every) == [("Do 0", "r0.1", "r0.0", 1.5), ("Do 0", "r0.1", "r0.2", 2.5)]
    assert counts["tie"] == 1 + 6  # 3.0 against 2.0 is within the gap; so are all six pairs of the second record


def test_helpsteer2_ratings_one_reply_a_row_grouped_by_prompt(tmp_path):
    def row(prompt, response, helpfulness):  # nvidia/HelpSteer2: one reply a row, five attributes on 0-4
        return {
            "prompt": prompt,
            "response": response,
            "helpfulness": helpfulness,
            "correctness": 3,
            "coherence": 4,
            "complexity": 1,
            "verbosity": 2,
        }

    rows = [row("p0", "x", 1), row("p0", "y", 3), row("p1", "u", 2), row("p1", "v", 2)]
    counts = Counter()
    assert _pairs(write_jsonl(tmp_path / "hs2.jsonl", rows), counts, preset="helpsteer2-ratings") == [
        ("p0", "y", "x", 2.0)]  # fmt: skip
    assert counts["tie"] == 1


def test_a_choice_of_your_own_refuses_values_it_does_not_know(tmp_path):
    rows = [{"q": "hi", "left": "a", "right": "b", "pick": "L"}, {"q": "yo", "left": "c", "right": "d", "pick": "?"}]
    choice = Choice("left", "right", "pick", prompt="q", first_wins=["L"], second_wins=["R"])
    path = write_jsonl(tmp_path / "own.jsonl", rows)
    with pytest.raises(DataError, match=r"own.jsonl:2: choice column 'pick' holds '\?', which is none of 'L'/'R'"):
        _pairs(path, choice=choice)
    counts = Counter()
    assert read_records(str(path), on_bad_record="skip", counts=counts, reshape=reshaper(**_how({"choice": choice})))
    assert counts["bad_record"] == 1
    with pytest.raises(DataError, match="first_wins and second_wins"):
        Choice("left", "right", "pick")


def test_a_record_function_drops_splits_and_names_the_row_it_failed_on(tmp_path):
    rows = [{"q": "a", "a": "x", "b": "y", "votes": [3, 1]}, {"q": "b", "a": "x", "b": "y", "votes": [2, 2]},
            {"q": "c", "a": "x", "b": "y", "votes": [0, 5], "twice": True}, {"q": "d", "a": "x", "b": "y"}]  # fmt: skip
    path = write_jsonl(tmp_path / "votes.jsonl", rows)
    votes = "tests.record_functions:votes"
    with pytest.raises(DataError, match=r"votes.jsonl:4: --data.record_function .*votes raised KeyError: 'votes'"):
        _pairs(path, record_function=votes)
    counts = Counter()
    records = read_records(str(path), on_bad_record="skip", counts=counts,
                           reshape=reshaper(**_how({"record_function": votes}))).records  # fmt: skip
    assert [(r.prompt, r.chosen, r.rejected) for r in records] == [("a", "x", "y"), ("c", "y", "x"),
                                                                   ("c (again)", "y", "x")]  # fmt: skip
    assert records[1].origin.endswith("votes.jsonl:3 #1") and records[2].origin.endswith("votes.jsonl:3 #2")
    assert counts == {"dropped_by_record_function": 1, "bad_record": 1}
    with pytest.raises(DataError, match=r"returned a str; it must return a record"):
        _pairs(path, record_function="tests.record_functions:not_a_record")
    with pytest.raises(ConfigError, match=r"--data.record_function tests.record_functions:nope: .*has no 'nope'"):
        reshaper(**_how({"record_function": "tests.record_functions:nope"}))
    with pytest.raises(ConfigError, match="--data.preset and --data.record_function both"):
        reshaper(**_how({"preset": "shp", "record_function": votes}))


def test_through_the_data_module_and_its_token_cache(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("HHALIGN_CACHE", str(tmp_path / "cache"))
    rows = [shp_row(i, 1, 10 + i, 5) if i % 2 else shp_row(i, 0, 5, 10 + i) for i in range(8)]  # labels by score
    path = write_jsonl(tmp_path / "shp.jsonl", rows)

    def module(**options):
        data = PreferenceDataModule(str(path), str(tiny_dir), max_length=128, valid_fraction=0.25, **options)
        data.setup("fit")
        return data

    fresh = module(preset="shp")
    assert fresh.summary["pairs_from"].startswith("preset shp (stanfordnlp/SHP): choice: labels 1 prefers human_ref_A")
    margins = sorted(p.margin for p in fresh.train_examples + fresh.val_examples)
    assert margins == pytest.approx(sorted(math.log((10 + i) / 5) for i in range(8)))
    monkeypatch.setattr("hhalign.data.datamodule.read_records", lambda *a, **k: pytest.fail("read again"))
    cached = module(preset="shp")
    assert cached.train_examples == fresh.train_examples and cached.summary == fresh.summary
    monkeypatch.undo()
    monkeypatch.setenv("HHALIGN_CACHE", str(tmp_path / "cache"))
    own = Choice("human_ref_A", "human_ref_B", "labels", prompt="history", first_wins=[0], second_wins=[1])
    flipped = module(choice=own)  # another choice is another key: its pairs are the other way round
    assert len(list((tmp_path / "cache").iterdir())) == 2
    orient = {(tuple(p.chosen), tuple(p.rejected)) for p in fresh.train_examples}
    assert {(tuple(p.rejected), tuple(p.chosen)) for p in flipped.train_examples} == orient


def test_inspect_shows_the_rule_and_the_ties_and_refuses_a_mis_mapping_in_one_line(tmp_path, tiny_dir, capsys):
    from hhalign.cli import main

    rows = [{"split": "train", "prompt": f"p{i}", "response_1": f"one {i}", "response_2": f"two {i}",
             "preference_strength": s} for i, s in enumerate([-2, 3, 0, 1, -1, 0, 2, -3])]  # fmt: skip
    path = write_jsonl(tmp_path / "preference.jsonl", rows)
    args = ["data", "inspect", "--model", "hhalign.RewardModule", "--model.model_name_or_path", str(tiny_dir),
            "--data.path", str(path), "--data.cache_tokenized", "false"]  # fmt: skip
    main([*args, "--data.preset", "helpsteer2-preference"])
    out = capsys.readouterr().out
    assert (
        "pairs from: preset helpsteer2-preference (nvidia/HelpSteer2 (preference)): choice: preference_strength" in out
    )
    assert "dropped:    tie 2" in out
    shp = write_jsonl(tmp_path / "shp.jsonl", [shp_row(0, 1, 30, 10), shp_row(1, 0, 4, 12)])
    mapped = ["--data.columns", '{"prompt": "history", "chosen": "human_ref_A", "rejected": "human_ref_B"}']
    with pytest.raises(SystemExit) as stop:
        main([*args[:-4], "--data.path", str(shp), *mapped])
    text = str(stop.value.code)
    assert text.startswith(f"hhalign: error: {shp}:1: --data.columns maps chosen/rejected") and "\n" not in text


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["choice", "ratings"])
def test_dpo_and_reward_model_fits_on_a_choice_file_and_on_a_ratings_file(tmp_path, tiny_dir, shape):
    from tests.conftest import fit_tiny

    if shape == "choice":
        rows = [pku_row(i, i % 2, 0) for i in range(16)]
        how = ("--data.preset", "pku-saferlhf-better")
    else:
        rows = [ultrafeedback_row(i, [1.0 + i % 3, 4.0, 2.5]) for i in range(16)]
        how = ("--data.ratings", '{"prompt": "instruction", "replies": "completions", "reply": "response", '
               '"rating": ["annotations.helpfulness.Rating"], "rule": "all-pairs"}')  # fmt: skip
    data = write_jsonl(tmp_path / f"{shape}.jsonl", rows)
    for config in ("configs/tiny/dpo.yaml", "configs/tiny/rm.yaml"):
        trial = config.rsplit("/", 1)[1].removesuffix(".yaml")
        run = fit_tiny(tmp_path, tiny_dir, data, config, *how, trial=trial, steps=2, val_every=2)
        with open(run / "metrics.csv") as handle:
            losses = [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
        summary = json.loads((run / "data_summary.json").read_text())
        assert summary["pairs_from"].startswith("preset pku" if shape == "choice" else "--data.ratings: ratings")
        if shape == "ratings":  # 1, 2 or 3 beside 4.0 and 2.5: three ratings apart, three pairs a record
            assert summary["kept"]["train"] + summary["kept"]["val"] == 16 * 3


PRESET_FILES = {
    "shp": [shp_row(i, 1, 10 + i, 5) if i % 2 else shp_row(i, 0, 5, 10 + i) for i in range(8)],
    "pku-saferlhf-safer": [pku_row(i, 0, i % 2) for i in range(8)],
    "chatbot-arena": [{"conversation_a": _conversation(f"q{i}", f"a{i}"),
                       "conversation_b": _conversation(f"q{i}", f"b{i}"),
                       "winner": ["model_a", "model_b", "tie"][i % 3]} for i in range(12)],
    "helpsteer2-preference": [{"prompt": f"p{i}", "response_1": f"one {i}", "response_2": f"two {i}",
                               "preference_strength": i % 5 - 2} for i in range(12)],
    "helpsteer2-ratings": [{"prompt": f"p{i // 2}", "response": f"r{i}", "helpfulness": i % 4} for i in range(16)],
    "ultrafeedback": [ultrafeedback_row(i, [1.0, 2.0 + i % 2, 3.5]) for i in range(8)],
}  # fmt: skip


@pytest.mark.parametrize("preset", sorted(PRESET_FILES))
def test_each_preset_through_the_data_module_and_its_token_cache(tmp_path, tiny_chat_dir, monkeypatch, preset):
    monkeypatch.setenv("HHALIGN_CACHE", str(tmp_path / "cache"))
    path = write_jsonl(tmp_path / f"{preset}.jsonl", PRESET_FILES[preset])

    def module() -> PreferenceDataModule:
        data = PreferenceDataModule(str(path), str(tiny_chat_dir), max_length=128, valid_fraction=0.25, preset=preset)
        data.setup("fit")
        return data

    fresh = module()
    expected = _pairs(path, preset=preset)
    assert len(fresh.train_examples) + len(fresh.val_examples) == len(expected) > 0
    assert sorted(p.margin or 0 for p in fresh.train_examples + fresh.val_examples) == sorted(
        m or 0 for *_, m in expected
    )
    with monkeypatch.context() as patch:
        patch.setattr("hhalign.data.datamodule.read_records", lambda *a, **k: pytest.fail("read again"))
        cached = module()
    assert cached.train_examples == fresh.train_examples and cached.summary["pairs_from"] == fresh.summary["pairs_from"]


def test_an_edited_record_function_is_not_served_from_the_cache(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setenv("HHALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path))
    code = "def pair(row):\n    return {'prompt': row['q'], 'chosen': row['a'], 'rejected': row['b']}\n"
    (tmp_path / "my_rows.py").write_text(code)
    path = write_jsonl(tmp_path / "rows.jsonl", [{"q": f"q{i}", "a": f"yes {i}", "b": f"no {i}"} for i in range(8)])

    def module() -> PreferenceDataModule:
        data = PreferenceDataModule(str(path), str(tiny_dir), max_length=128, valid_fraction=0.25,
                                    record_function="my_rows:pair")  # fmt: skip
        data.setup("fit")
        return data

    before = module()
    (tmp_path / "my_rows.py").write_text(
        code.replace("row['a'], 'rejected': row['b']", "row['b'], 'rejected': row['a']")
    )
    monkeypatch.delitem(sys.modules, "my_rows")
    after = module()
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert [(p.chosen, p.rejected) for p in after.train_examples] == [
        (p.rejected, p.chosen) for p in before.train_examples
    ]
