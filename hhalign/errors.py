"""Errors caused by a user's input; the CLI prints their message without a traceback."""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Sequence


class UserError(Exception):
    """Bad input: the message names the file, line or option and what to do."""


class ConfigError(UserError, ValueError):
    """An option has a value that cannot work."""


class DataError(UserError, ValueError):
    """A data source cannot be used."""


class ModelLoadError(UserError, OSError):
    """A model or tokenizer path cannot be used."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """A library's error as one line: the first line of its message, or its type when it has none."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]


_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_LITERAL = re.compile(r"typing\.Literal\[(.*?)\]")
_GIVEN = re.compile(r"(?:Got|Given) value: (.*)$")
_RESTRICTION = re.compile(r"Not of type \w+: ?(.*?) ?does not conform to restriction v(.+)$")
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Problem with given class_path")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (\S+)")


def _did_you_mean(option: str, known: Sequence[str]) -> str:
    near = difflib.get_close_matches(option, list(known), n=1, cutoff=0.6)
    return f"; did you mean {near[0]}?" if near else ""


_REQUIRED = re.compile(r"the following arguments are required: (\w+)")
_CLASS_PATH = re.compile(r"class_path='([\w.]+)'")
_CLASS_GIVEN = re.compile(r"NestedArg\(key='class_path', val='([^']+)'\)|Expected a path but (\S+) either not")


def explain_parse_error(message: str, known: Sequence[str] = (), classes: Sequence[str] = ()) -> str:
    """``explain_error`` with, for an unknown option, the closest of the ``known`` ones suggested, and for a class
    that does not exist, the closest of ``classes``."""
    if given := _CLASS_GIVEN.search(message):
        name = given.group(1) or given.group(2)
        option = (
            "--" + ".".join(m.group(1) for m in _PARSER_KEY.finditer(message)) if _PARSER_KEY.search(message) else ""
        )
        close = difflib.get_close_matches(name, list(classes), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; the objectives: {', '.join(classes)}" if classes else ""
        return f"{option or '--model'}: no class {name!r}{hint}"
    if (required := _REQUIRED.search(message)) and (cls := _CLASS_PATH.search(message)):
        option = "--" + ".".join(m.group(1) for m in _PARSER_KEY.finditer(message))
        option = option if option != "--" else "--trainer.logger"
        name, argument = cls.group(1).rpartition(".")[2], required.group(1)
        return f"{option} {name} needs its {argument}: add {option}.{argument} VALUE"
    line = explain_error(message)
    if unknown := _UNRECOGNIZED.search(line):
        return f"{line}{_did_you_mean(unknown.group(1).split('=', 1)[0], known)}"
    if (rejected := _NOT_ACCEPTED.search(line)) and line.startswith("--"):
        option = f"{line.split(':', 1)[0]}.{rejected.group(1)}"
        return f"{option} is not an option{_did_you_mean(option, known)}"
    return line


def explain_error(message: str) -> str:
    """One line for a jsonargparse error: the option, the value given, and what it accepts (the choices,
    with the closest one, for a fixed set). jsonargparse nests its reasons a level per group, class and
    union; the innermost ``Parser key`` is the option the user wrote, and the lines indented under it
    say what is wrong with it."""
    lines = message.splitlines()
    keyed = [(i, m.group(1)) for i, line in enumerate(lines) if (m := _PARSER_KEY.search(line))]
    if not keyed:
        return " ".join(line.strip() for line in lines if line.strip())
    last = keyed[-1][0]
    option = "--" + ".".join(key for _, key in keyed)
    inner = []
    for line in lines[last + 1 :]:
        if line.strip() and _indent(line) <= _indent(lines[last]):
            break
        inner.append(line.strip().lstrip("- "))
    given = next((m.group(1).strip() for line in inner if (m := _GIVEN.search(line))), None)
    literal = next((m.group(1) for line in inner if (m := _LITERAL.search(line))), None)
    if literal is not None and given is not None:
        choices = [str(c) for c in ast.literal_eval(f"[{literal}]")]
        close = difflib.get_close_matches(given, choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{option} {given!r} is not one of: {', '.join(choices)}{hint}"
    reason = next((line for line in inner if line and not line.startswith(_NOISE)), None)
    if reason is None:
        return lines[last].split(":", 1)[-1].strip() or message.strip()
    if restriction := _RESTRICTION.search(reason):
        value, bound = restriction.groups()
        value = value or given
        return f"{option} must be {bound.replace('>=', '≥ ').replace('>', '> ').replace('<', '< ')} (given {value})"
    reason = _GIVEN.sub("", reason).rstrip(". ")
    return f"{option}: {reason}" + (f" (given {given!r})" if given is not None else "")
