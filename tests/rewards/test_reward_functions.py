"""Rule-based rewards named ``module:function`` (hhalign/rewards/functions.py): loaded, called, and every way
a user's function can be wrong answered with one line naming it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hhalign.errors import ConfigError
from hhalign.rewards.functions import load_reward_function

USER_MODULE = """
import torch

def brevity(prompts, completions):
    return [-len(c) for c in completions]

def as_tensor(prompts, completions):
    return torch.tensor([float(p == "a") for p in prompts])

def too_few(prompts, completions):
    return [1.0]

def nested(prompts, completions):
    return [[1.0] for _ in completions]

def words(prompts, completions):
    return ["high" for _ in completions]

def broken(prompts, completions):
    raise KeyError("score")

def not_finite(prompts, completions):
    return [float("nan") for _ in completions]

NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_rewards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_user_function_scores_completions(user_module: str):
    brevity = load_reward_function(f"{user_module}:brevity")
    rewards = brevity(["p", "q"], ["hello", "hi"])
    assert rewards.dtype == torch.float32 and rewards.tolist() == [-5.0, -2.0]
    assert load_reward_function(f"{user_module}:as_tensor")(["a", "b"], ["x", "y"]).tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "must be written module:function"),
        (":brevity", "must be written module:function"),
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("{m}:missing", "has no 'missing'"),
        ("{m}:NOT_CALLABLE", "is a int, not a function"),
    ],
)
def test_bad_names_fail_when_loaded(user_module: str, spec: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_reward_function(spec.format(m=user_module))


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("too_few", r"returned \(1,\) values for 2 completions"),
        ("nested", r"returned \(2, 1\) values for 2 completions"),
        ("words", "must return one number per completion; it returned list"),
        ("broken", "raised KeyError"),
        ("not_finite", "non-finite"),
    ],
)
def test_bad_returns_fail_naming_the_function(user_module: str, function: str, message: str):
    reward = load_reward_function(f"{user_module}:{function}")
    with pytest.raises(ConfigError, match=message) as caught:
        reward(["p", "q"], ["a", "b"])
    assert f"{user_module}:{function}" in str(caught.value)
