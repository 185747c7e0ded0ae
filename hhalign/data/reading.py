"""Reading a source into records: its rows (``sources``), their columns renamed, their format detected from the
first record and required of the rest (``formats``), each bad record raised with its origin or skipped and
counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hhalign.data.formats import apply_columns, detect, to_record
from hhalign.data.pairs import PairTokenizer, TokenizedPair
from hhalign.data.prompts import PromptTokenizer, TokenizedPrompt
from hhalign.data.records import OnBadRecord, Record, first_conversational
from hhalign.data.reshaping import Reshape, check_mapping
from hhalign.data.sources import data_files, dataset_rows, file_rows, source_kind
from hhalign.data.templates import template_for
from hhalign.errors import DataError


@dataclass(frozen=True)
class Source:
    """What was read from one source: its records and their format."""

    records: list[Record]
    format: str


def rows(path: str, split: str = "train", data_dir: str | None = None) -> Iterator[tuple[str, Any]]:
    """``(origin, raw)`` for every row of a source; a row that could not be decoded is a ``DataError`` value."""
    if source_kind(path) == "files":
        for file in data_files(path):
            yield from file_rows(file)
    else:
        yield from dataset_rows(path, split, data_dir)


def read_records(
    path: str,
    split: str = "train",
    data_dir: str | None = None,
    columns: Mapping[str, str] | None = None,
    on_bad_record: OnBadRecord = "error",
    counts: Counter[str] | None = None,
    reshape: Reshape | None = None,
    pairs: bool = True,
) -> Source:
    """Every record of one source, its rows first made records by ``reshape`` when given. The first good record
    fixes the format; a bad record raises ``DataError`` naming its origin or, with ``skip``, is counted in
    ``counts["bad_record"]``. A source that looks like a public set needing a preset, or a mapping that leaves
    the column saying which reply is preferred, is refused (when ``pairs`` are what the run trains on)."""
    counts = Counter() if counts is None else counts
    records: list[Record] = []
    fmt = first = None
    source = rows(path, split, data_dir)
    for origin, raw in reshape(source, counts) if reshape else source:
        if fmt is None and reshape is None and not isinstance(raw, DataError):  # not a bad record: never skipped
            check_mapping(raw, columns, origin, pairs)
        try:
            if isinstance(raw, DataError):
                raise raw
            raw = apply_columns(raw, columns, origin)
            if fmt is None:
                fmt, first = detect(raw, origin), origin
            records.append(to_record(raw, origin, fmt, first))
        except DataError as err:
            if on_bad_record == "skip":
                counts["bad_record"] += 1
                continue
            raise DataError(
                f"{err}. Fix the record, or set data.on_bad_record: skip to drop and count bad ones"
            ) from None
    if not records:
        dropped = ", ".join(f"{n} {k}" for k, n in counts.items() if n and not k.startswith("cut:"))
        where = f" [{split}]" if source_kind(path) != "files" else ""
        raise DataError(f"no usable records in {path!r}{where}" + (f" (dropped: {dropped})" if dropped else ""))
    return Source(records, fmt)  # type: ignore[arg-type]


def read_examples(
    path: str, tokenizer: Any, max_length: int, max_response_length: int | None = None, chat_template: bool = False
) -> list[TokenizedPair] | list[TokenizedPrompt]:
    """A file's pairs as training would tokenize them, or its prompts when it holds prompts alone (for the tools
    that score, judge or sample a file): conversational records through the chat template, text records through
    it when ``chat_template``."""
    source = read_records(path, pairs=False)
    template = template_for(tokenizer, chat_template, first_conversational(source.records))
    if source.format == "prompt-only":
        tokenize: Any = PromptTokenizer(tokenizer, max_length, max_response_length, template)
    else:
        tokenize = PairTokenizer(tokenizer, max_length, max_response_length, template)
    examples = tokenize(source.records)
    if not examples:
        raise DataError(f"{path}: no usable {source.format} records (drops: {dict(tokenize.counts)})")
    return examples


def read_pairs(
    path: str, tokenizer: Any, max_length: int, max_response_length: int | None = None, chat_template: bool = False
) -> list[TokenizedPair]:
    """``read_examples`` for a tool that needs pairs: a prompt-only file is refused."""
    examples = read_examples(path, tokenizer, max_length, max_response_length, chat_template)
    if not isinstance(examples[0], TokenizedPair):
        raise DataError(f"{path}: holds prompts alone; this command scores pairs (prompt, chosen, rejected)")
    return examples  # type: ignore[return-value]
