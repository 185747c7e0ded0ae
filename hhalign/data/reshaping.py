"""Source rows turned into records before their format is read: by a named preset of a public preference set,
a ``Choice`` (``hhalign.data.choices``), ``Ratings`` (``hhalign.data.ratings``) or the user's record function.

A row becomes one record, several or none (a tie, a drop), each counted by why; a row that cannot be reshaped is
an error naming its origin, which ``data.on_bad_record: skip`` drops and counts as any other bad record.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hhalign.data.choices import Choice
from hhalign.data.ratings import Ratings
from hhalign.errors import ConfigError, DataError
from hhalign.named import named_function


@dataclass(frozen=True)
class Preset:
    dataset: str
    spec: Choice | Ratings
    signature: tuple[str, ...]
    """Columns that together mark a row of this dataset (the mis-mapping check looks for them)."""


PRESETS = {
    "shp": Preset("stanfordnlp/SHP", Choice(
        "human_ref_A", "human_ref_B", "labels", prompt="history", first_wins=[1], second_wins=[0],
        scores=["score_A", "score_B"], margin="log_score_ratio"), ("history", "human_ref_A", "human_ref_B", "labels")),
    "pku-saferlhf-better": Preset("PKU-Alignment/PKU-SafeRLHF", Choice(
        "response_0", "response_1", "better_response_id", prompt="prompt", first_wins=[0], second_wins=[1]),
        ("prompt", "response_0", "response_1", "better_response_id")),
    "pku-saferlhf-safer": Preset("PKU-Alignment/PKU-SafeRLHF", Choice(
        "response_0", "response_1", "safer_response_id", prompt="prompt", first_wins=[0], second_wins=[1]),
        ("prompt", "response_0", "response_1", "safer_response_id")),
    "chatbot-arena": Preset("lmsys/chatbot_arena_conversations", Choice(
        "conversation_a", "conversation_b", "winner", first_wins=["model_a"], second_wins=["model_b"],
        ties=["tie", "tie (bothbad)"]), ("conversation_a", "conversation_b", "winner")),
    "helpsteer2-preference": Preset("nvidia/HelpSteer2 (preference)", Choice(
        "response_1", "response_2", "preference_strength", prompt="prompt", by_sign=True, margin="strength"),
        ("prompt", "response_1", "response_2", "preference_strength")),
    "helpsteer2-ratings": Preset("nvidia/HelpSteer2", Ratings(
        "prompt", "response", ["helpfulness"], rule="best-vs-worst"), ("prompt", "response", "helpfulness")),
    "ultrafeedback": Preset("openbmb/UltraFeedback", Ratings(
        "instruction", "response", ["fine-grained_score"], replies="completions"), ("instruction", "completions")),
}  # fmt: skip
"""The public preference sets that are not already split into chosen and rejected, by the name ``--data.preset``
takes (docs/data.md lists each with its schema)."""

CHOICE_COLUMNS = (
    "labels", "winner", "preference", "preference_strength", "better_response_id", "safer_response_id", "choice",
    "preferred", "score_A", "score_B", "score_0", "score_1",
)  # fmt: skip
"""Columns that say which of two replies is preferred: left unused beside a chosen/rejected mapping, they mean
the pairs are oriented by column name alone, half of them backwards (SHP's ``labels``)."""


class RecordFunction:
    """The user's ``module:function``, called with each raw row; it returns a record (a dict in any format of
    ``hhalign.data.formats``), a list of them, or None to drop the row."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.function = named_function(name, "--data.record_function", "my_data:to_record")
        try:  # the cache key: a change to the function's module must not reuse what it made before
            source = inspect.getsource(inspect.getmodule(self.function))  # type: ignore[arg-type]
        except (OSError, TypeError):
            source = name
        self.code = hashlib.sha256(source.encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"record function {self.name}"

    def __call__(self, raw: Any, origin: str, counts: Counter[str]) -> list[Any]:
        try:
            made = self.function(raw)
        except Exception as err:
            raise DataError(
                f"{origin}: --data.record_function {self.name} raised {type(err).__name__}: {err}"
            ) from None
        if made is None:
            counts["dropped_by_record_function"] += 1
            return []
        made = made if isinstance(made, list) else [made]
        for record in made:
            if not isinstance(record, Mapping):
                raise DataError(
                    f"{origin}: --data.record_function {self.name} returned a {type(record).__name__}; it must "
                    "return a record (a dict), a list of them, or None"
                )
        return made


class Reshape:
    """One way of making records of rows: a preset, a choice, ratings or a record function."""

    def __init__(self, spec: Choice | Ratings | RecordFunction, label: str) -> None:
        self.spec, self.label = spec, label

    def describe(self) -> str:
        return f"{self.label}: {self.spec.describe()}"

    def __call__(self, rows: Iterator[tuple[str, Any]], counts: Counter[str]) -> Iterator[tuple[str, Any]]:
        grouped = self.spec.groups(rows) if isinstance(self.spec, Ratings) else rows
        for origin, raw in grouped:
            if isinstance(raw, Exception):
                yield origin, raw
                continue
            if not isinstance(raw, Mapping):
                yield origin, DataError(f"{origin}: expected a JSON object, got {type(raw).__name__}")
                continue
            try:
                made = self.spec(raw, origin, counts)
            except DataError as err:
                yield origin, err
                continue
            for number, record in enumerate(made, start=1):
                yield (f"{origin} #{number}" if len(made) > 1 else origin), record

    @property
    def identity(self) -> str:
        """What the cache key needs beyond the options: the record function's code."""
        return self.spec.code if isinstance(self.spec, RecordFunction) else ""


def reshaper(
    preset: str | None, choice: Choice | None, ratings: Ratings | None, record_function: str | None
) -> Reshape | None:
    """The one way of making records the options name, or None (rows are records as they are)."""
    given = [(n, v) for n, v in (("preset", preset), ("choice", choice), ("ratings", ratings),
                                  ("record_function", record_function)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise ConfigError(f"--data.{given[0][0]} and --data.{given[1][0]} both say how rows become pairs; give one")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"--data.preset {preset!r} is not one of {', '.join(PRESETS)}")
        return Reshape(PRESETS[preset].spec, f"preset {preset} ({PRESETS[preset].dataset})")
    if choice is not None:
        return Reshape(choice, "--data.choice")
    if ratings is not None:
        return Reshape(ratings, "--data.ratings")
    return Reshape(RecordFunction(record_function), "--data.record_function") if record_function else None


def check_mapping(raw: Any, columns: Mapping[str, str] | None, origin: str, pairs: bool) -> None:
    """Refuse, in one line, a source read as something it is not: a public set that needs a preset (when the
    objective trains on pairs), or a chosen/rejected mapping that leaves a column saying which is preferred."""
    if not isinstance(raw, Mapping):
        return
    if columns and ({"chosen", "rejected"} & set(columns)):
        unused = [c for c in CHOICE_COLUMNS if c in raw and c not in columns.values()]
        if unused:
            raise DataError(
                f"{origin}: --data.columns maps chosen/rejected by name and leaves {unused[0]!r} unused, which says "
                f"which reply is preferred: pairs where it prefers the other would train backwards. "
                f"{_advice(raw)}"
            )
        return
    if pairs and not {"chosen", "rejected"} & set(raw) and lookalike(raw):
        raise DataError(f"{origin}: these rows hold no chosen/rejected pair. {_advice(raw)}")


def lookalike(raw: Mapping[str, Any]) -> str | None:
    """The preset whose dataset's columns the row has, if any."""
    return next((name for name, p in PRESETS.items() if set(p.signature) <= set(raw)), None)


def _advice(raw: Mapping[str, Any]) -> str:
    name = lookalike(raw)
    if name:
        return f"They look like {PRESETS[name].dataset}: load them with --data.preset {name}"
    return "Say what it means with --data.choice (or write a --data.record_function)"
