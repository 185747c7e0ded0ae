"""One flag style for every command (``--max_new_tokens``, underscores, as the trainer's ``--data.max_length``),
and the config files behind the training commands.

The tools parse with ``ToolParser``: each option is declared with underscores and still answers to its old
kebab-case spelling (``--max-new-tokens``) for a release, with a one-line notice; an unknown option gets the
closest known one suggested.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from hhalign.errors import UserError

OLD_SPELLING_UNTIL = "0.2"
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")


def closest(option: str, known: list[str]) -> str | None:
    """The known option nearest to a mistyped one, if any is near."""
    found = difflib.get_close_matches(option, known, n=1, cutoff=0.6)
    return found[0] if found else None


class ToolParser(argparse.ArgumentParser):
    """``argparse`` with underscore options, their kebab-case spellings kept as aliases, and "did you mean"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.old_spellings: dict[str, str] = {}
        self.notes = True
        """Say when an old spelling is used (off for a first parse whose parser the tool builds again)."""
        kwargs.setdefault("allow_abbrev", False)  # a mistyped option is an error with a suggestion, not a prefix
        super().__init__(*args, **kwargs)

    def add_argument(self, *names: Any, **kwargs: Any) -> Any:
        names = tuple(names)
        for name in names:
            if isinstance(name, str) and name.startswith("--") and "-" in name[2:]:
                raise ValueError(f"declare {name} with underscores; its kebab-case spelling is added by ToolParser")
        kebab = [n.replace("_", "-") for n in names if isinstance(n, str) and n.startswith("--") and "_" in n]
        self.old_spellings.update({old: new for old, new in zip(kebab, (n for n in names if "_" in n), strict=False)})
        return super().add_argument(*names, *kebab, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        for arg in argv:
            old = arg.split("=", 1)[0]
            if old in self.old_spellings and self.notes:
                print(
                    f"{self.prog}: note: {old} is now {self.old_spellings[old]} (the old spelling works until "
                    f"hhalign {OLD_SPELLING_UNTIL})",
                    file=sys.stderr,
                )
        return super().parse_args(argv, namespace)

    def error(self, message: str) -> NoReturn:
        unknown = _UNRECOGNIZED.search(message)
        if unknown:
            known = [s for action in self._actions for s in action.option_strings if s not in self.old_spellings]
            near = closest(unknown.group(1).split("=", 1)[0], known)
            if near:
                message += f"; did you mean {near}?"
        super().error(message)


def expand_extends(argv: list[str]) -> list[str]:
    """``--config FILE`` whose YAML says ``extends: BASE`` becomes ``--config BASE --config <FILE's text
    without that key>``: the base first, so the file's keys and the later flags win. ``BASE`` is relative to
    the file and may extend another. The shipped configs share their trainer block this way."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == "--config":
            continue
        value = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        if value is None:
            out.append(arg)
            continue
        out += _config_chain(Path(value)) if Path(value).is_file() else ["--config", value]
    return out


def _config_chain(path: Path) -> list[str]:
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(config, dict) or "extends" not in config:
        return ["--config", str(path)]
    base = path.parent / str(config.pop("extends"))
    if not base.is_file():
        raise UserError(f"{path}: 'extends: {base.name}' names {base}, which does not exist")
    return [*_config_chain(base), "--config", yaml.safe_dump(config, sort_keys=False)]


def import_class(class_path: str | None) -> type | None:
    """The class a config's ``class_path`` names, or None when it does not import (the parser says so later)."""
    if not class_path or "." not in str(class_path):
        return None
    module_name, _, name = str(class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
