"""One flag style for every command: ``--max_new_tokens``, underscores, as the trainer's ``--data.max_length``.

The tools parse with ``ToolParser``: each option is declared with underscores and still answers to its old
kebab-case spelling (``--max-new-tokens``) for a release, with a one-line notice; an unknown option gets the
closest known one suggested.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Any, NoReturn

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
            if old in self.old_spellings:
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
