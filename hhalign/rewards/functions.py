"""Rule-based rewards: a user's Python function named ``module:function`` that scores completions as text.

The function is called as ``function(prompts, completions)`` with two lists of strings of one length and must
return one number per completion (a list, a tuple or a 1-D tensor). It is imported once, when the run is
configured, so a typo fails before any model loads; what it returns is checked at every call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hhalign.errors import ConfigError


@dataclass(frozen=True)
class RewardFunction:
    """A rule-based reward term, ``name`` as the user wrote it (``module:function``)."""

    name: str
    function: Callable[[list[str], list[str]], Any]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """The function's rewards as a float32 tensor ``(len(completions),)``."""
        try:
            values = self.function(list(prompts), list(completions))
        except Exception as err:  # the user's code: say whose it is, keep the cause attached
            raise ConfigError(f"reward function {self.name} raised {type(err).__name__}: {err}") from err
        try:
            rewards = torch.as_tensor(values, dtype=torch.float32).flatten()
        except (TypeError, ValueError, RuntimeError) as err:
            raise ConfigError(
                f"reward function {self.name} must return one number per completion; it returned"
                f" {type(values).__name__}"
            ) from err
        if rewards.numel() != len(completions) or torch.as_tensor(values).dim() > 1:
            raise ConfigError(
                f"reward function {self.name} returned {tuple(torch.as_tensor(values).shape)} values for"
                f" {len(completions)} completions; return one number per completion"
            )
        if not torch.isfinite(rewards).all():
            raise ConfigError(f"reward function {self.name} returned a non-finite reward (nan or inf)")
        return rewards


def load_reward_function(name: str) -> RewardFunction:
    """The function named ``module:function`` (``module`` importable from the working directory or the
    environment), checked to be callable."""
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"reward function {name!r} must be written module:function, e.g. my_rewards:brevity")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise ConfigError(
            f"reward function {name}: cannot import {module_name!r} ({type(err).__name__}: {err})"
        ) from err
    function = getattr(module, attribute, None)
    if function is None:
        raise ConfigError(f"reward function {name}: module {module_name!r} has no {attribute!r}")
    if not callable(function):
        raise ConfigError(f"reward function {name}: {attribute!r} is a {type(function).__name__}, not a function")
    return RewardFunction(name, function)
