"""Objectives: one Lightning module per training objective over a shared base (``base``). Each module says
on its class what examples it reads, which attribute holds the model it trains, that model's head and its
plot panels; the rest of hhalign asks it. ``reference`` is the base of objectives with a frozen reference.

A module added here is found by name: a file whose ``__all__`` lists the class makes ``hhalign.<Name>``
(and ``class_path: hhalign.<Name>`` in a config) work without another edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def __getattr__(name: str) -> Any:
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
