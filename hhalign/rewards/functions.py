"""Rule-based rewards: a user's Python function named ``module:function`` that scores completions as text.

The function is called as ``function(prompts, completions, **columns)`` with two lists of strings of one length and
must return one number per completion (a list, a tuple or a 1-D tensor). ``columns`` are the other fields of each
prompt's record (a reference answer, say), one value per completion, as TRL passes dataset columns: the function
gets those it names as parameters, or all of them if it takes ``**kwargs``. It is imported once, when the run is
configured, so a typo fails before any model loads; what it returns is checked at every call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hhalign.errors import ConfigError
from hhalign.named import named_function


@dataclass(frozen=True)
class RewardFunction:
    """A rule-based reward term, ``name`` as the user wrote it (``module:function``)."""

    name: str
    function: Callable[..., Any]
    columns: tuple[str, ...] = ()
    """The record columns it names as parameters, and (``required``) those without a default."""
    required: tuple[str, ...] = ()
    all_columns: bool = False
    """Whether it takes ``**kwargs``: then every column."""

    def column_arguments(self, columns: Sequence[dict[str, Any]] | None, n: int) -> dict[str, list[Any]]:
        """The columns it asks for, one value per completion; a required one missing from the data is an error."""
        rows = list(columns) if columns is not None else [{}] * n
        present = set().union(*rows) if rows else set()
        for name in self.required:
            if any(name not in row for row in rows):
                raise ConfigError(
                    f"reward function {self.name} needs the column {name!r}, which the prompts' records do not all "
                    f"have (columns found: {sorted(present) or 'none'}); add it to the data or give it a default"
                )
        names = sorted(present) if self.all_columns else [c for c in self.columns if c in present]
        return {name: [row.get(name) for row in rows] for name in names}

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Sequence[dict[str, Any]] | None = None
    ) -> Tensor:
        """The function's rewards as a float32 tensor ``(len(completions),)``; ``columns`` one dict per completion."""
        arguments = self.column_arguments(columns, len(completions))
        try:
            values = self.function(list(prompts), list(completions), **arguments)
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
    function = named_function(name, "reward function", "my_rewards:brevity")
    try:
        parameters = list(inspect.signature(function).parameters.values())[2:]  # after prompts and completions
    except (TypeError, ValueError):  # a builtin without a signature: the two lists only
        parameters = []
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return RewardFunction(
        name,
        function,
        tuple(p.name for p in named),
        tuple(p.name for p in named if p.default is p.empty),
        any(p.kind is p.VAR_KEYWORD for p in parameters),
    )
