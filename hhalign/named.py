"""Functions named ``module:function`` on the command line (reward functions, record functions): imported when
the run is configured, so a typo fails before any model loads."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from hhalign.errors import ConfigError


def named_function(name: str, option: str, example: str) -> Callable[..., Any]:
    """The callable ``name`` names (``module`` importable from the working directory or the environment)."""
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{option} {name!r} must be written module:function, e.g. {example}")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise ConfigError(f"{option} {name}: cannot import {module_name!r} ({type(err).__name__}: {err})") from err
    function = getattr(module, attribute, None)
    if function is None:
        raise ConfigError(f"{option} {name}: module {module_name!r} has no {attribute!r}")
    if not callable(function):
        raise ConfigError(f"{option} {name}: {attribute!r} is a {type(function).__name__}, not a function")
    return function
