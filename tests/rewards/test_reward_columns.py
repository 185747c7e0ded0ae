"""Reward functions read the other columns of each prompt's record, as TRL's do: those they name as parameters, or
all with ``**kwargs``; a required one the data lacks is one line naming it. The columns ride from the file through
the tokenized prompts (and their cache) into every rollout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hhalign.errors import ConfigError
from hhalign.rewards.functions import load_reward_function
from tests.conftest import fit_tiny, write_jsonl


def test_a_reward_function_gets_the_columns_it_names_or_all_of_them():
    rows = [{"answer": "yes", "score": 1}, {"answer": "no", "score": 2}]
    needs = load_reward_function("tests.online_rewards:needs_answer")
    assert (needs.columns, needs.required) == (("answer", "bonus"), ("answer",))
    assert needs(["p", "p"], ["yes sir", "yes"], rows).tolist() == [1.0, 0.0]
    everything = load_reward_function("tests.online_rewards:with_everything")
    assert everything(["p", "p"], ["a", "b"], rows).tolist() == [2.0, 2.0]
    assert everything(["p"], ["a"], None).tolist() == [0.0]
    plain = load_reward_function("tests.online_rewards:share_of_e")
    assert plain(["p"], ["e"], rows[:1]).tolist() == [1.0]  # names none: gets none
    with pytest.raises(ConfigError, match="needs the column 'answer'.*columns found: \\['score'\\]"):
        needs(["p"], ["x"], [{"score": 3}])


def test_columns_ride_from_the_file_through_the_cache_into_each_rollout(tmp_path: Path, tiny_dir: Path, monkeypatch):
    """Prompt-only records with a ``score`` column; the reward is that column, so every rollout's rewards must be
    its prompts' scores, on a first run (tokenized) and a second (read from the cache)."""
    monkeypatch.setenv("HHALIGN_CACHE", str(tmp_path / "cache"))
    words = "abcdefgh"
    data = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": f"\n\nHuman: say {w}\n\nAssistant:", "score": i} for i, w in enumerate(words)],
    )
    for trial in ("first", "cached"):
        probe = tmp_path / f"probe-{trial}"
        fit_tiny(
            tmp_path, tiny_dir, data, "configs/tiny/rloo.yaml", "--model.reward_model", "null",
            "--model.reward_functions", "[tests.online_rewards:given_score]", "--model.max_completion_length", "2",
            "--data.batch_size", "2", "--data.valid_fraction", "0.25", "--model.beta", "0",
            "--trainer.callbacks+=tests.probes.RecordRollouts", f"--trainer.callbacks.out={probe}",
            steps=2, val_every=2, trial=trial,
        )  # fmt: skip
        rows = [json.loads(line) for line in (probe / "rollouts-rank0.jsonl").read_text().splitlines()]
        assert any(not row["training"] for row in rows) and any(row["training"] for row in rows)
        from hhalign.models.loading import load_tokenizer

        tokenizer = load_tokenizer(str(tiny_dir))
        for row in rows:
            for prompt, rewards in zip(row["prompts"], row["rewards"], strict=True):
                word = tokenizer.decode(prompt).split("say ")[1][0]
                assert set(rewards) == {float(words.index(word))}, (trial, word, rewards)
    assert list((tmp_path / "cache").glob("*.npz"))
