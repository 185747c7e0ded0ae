"""Reading preference records from local JSONL files or Hugging Face datasets.

A record is either raw hh-rlhf (``chosen`` and ``rejected`` full dialogues) or explicit-prompt
(``prompt`` plus the two responses), or prompt-only (``prompt`` alone: what the online objectives
sample from; a pair objective drops and counts it). Local files are read line by line so that every bad record
is reported with its file and line, which ``datasets`` cannot do.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hhalign.errors import DataError

LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz")
LOCAL_ROOTS = ("artifacts/", "outputs/")
"""Where hhalign's own commands write models: a path under them is local even when it looks like a hub id."""


def missing_local_path(name_or_path: str) -> bool:
    """True when the string plainly names a local path that does not exist (``./``, ``/``, ``~``, a path
    under ``LOCAL_ROOTS``, or more than one ``/``, which no hub id has), so the user gets "does not exist"
    rather than a hub lookup error."""
    local = name_or_path.startswith((".", "/", "~", *LOCAL_ROOTS)) or name_or_path.count("/") > 1
    return local and not Path(name_or_path).expanduser().exists()


OnBadRecord = Literal["error", "skip"]


@dataclass(frozen=True)
class Record:
    """One preference pair as found in the source; ``origin`` is ``file:line`` or ``name[split]#row``."""

    chosen: str
    rejected: str
    prompt: str | None
    origin: str
    margin: float | None = None  # how much better chosen is, when the data says (reward modelling)


def is_jsonl_source(path: str) -> bool:
    """True for a JSONL file or a folder holding JSONL files, which this module reads itself; anything
    else (a hub name, a dataset folder of parquet or arrow files) goes to ``datasets.load_dataset``."""
    local = Path(path).expanduser()
    if local.is_dir():
        return any(p.name.endswith(LOCAL_SUFFIXES) for p in local.iterdir())
    return local.exists() or path.endswith(LOCAL_SUFFIXES)


def local_files(path: str) -> list[Path]:
    """The JSONL files a local path stands for, sorted so that reading order is reproducible."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(
            f"data path {path!r} does not exist; set data.path to a .jsonl/.jsonl.gz file, a folder "
            "of them, or a Hugging Face dataset name"
        )
    files = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.name.endswith(LOCAL_SUFFIXES))
    if not files:
        raise DataError(f"data folder {path!r} holds no .jsonl or .jsonl.gz files")
    return files


def _lines(file: Path) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if file.name.endswith(".gz") else open
    with opener(file, "rb") as handle:
        yield from enumerate(handle, start=1)


def to_record(raw: Any, origin: str) -> Record:
    """Validate one decoded record; raise ``DataError`` naming ``origin`` when it is unusable."""
    if not isinstance(raw, dict):
        raise DataError(f"{origin}: expected a JSON object, got {type(raw).__name__}")
    if "prompt" in raw and "chosen" not in raw and "rejected" not in raw:  # prompt-only: the online objectives'
        if not isinstance(raw["prompt"], str):
            raise DataError(f"{origin}: field 'prompt' must be a string, got {type(raw['prompt']).__name__}")
        return Record("", "", raw["prompt"], origin)
    fields = ("prompt", "chosen", "rejected") if "prompt" in raw else ("chosen", "rejected")
    for key in fields:
        if key not in raw:
            raise DataError(
                f"{origin}: missing key {key!r}; each record needs string fields 'chosen' and "
                "'rejected' (and optionally 'prompt'), or only 'prompt' for the online objectives"
            )
        if not isinstance(raw[key], str):
            raise DataError(f"{origin}: field {key!r} must be a string, got {type(raw[key]).__name__}")
    margin = raw.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise DataError(f"{origin}: field 'margin' must be a number, got {type(margin).__name__}")
    return Record(raw["chosen"], raw["rejected"], raw.get("prompt"), origin, None if margin is None else float(margin))


def read_local(path: str, on_bad_record: OnBadRecord, bad: Counter[str]) -> list[Record]:
    """Read every record under a local path; bad lines raise or, with ``skip``, count in ``bad``."""
    records: list[Record] = []
    for file in local_files(path):
        for lineno, line in _lines(file):
            origin = f"{file}:{lineno}"
            try:
                text = line.decode("utf-8")
                if not text.strip():
                    continue
                records.append(to_record(json.loads(text), origin))
            except (UnicodeDecodeError, json.JSONDecodeError, DataError) as err:
                if on_bad_record == "skip":
                    bad["bad_record"] += 1
                    continue
                reason = err if isinstance(err, DataError) else f"{origin}: {_describe(err)}"
                raise DataError(
                    f"{reason}. Fix the record, or set data.on_bad_record: skip to drop and count bad records"
                ) from None
    if not records:
        raise DataError(f"no usable records in {path!r}: the files are empty")
    return records


def _describe(err: Exception) -> str:
    if isinstance(err, UnicodeDecodeError):
        return f"not valid UTF-8 (byte {err.start} of the line); re-encode the file as UTF-8"
    return f"malformed JSON ({err})"


def test_split_of(path: str, data_dir: str | None) -> str | None:
    """``"test"`` when a dataset (a local folder in the hub's layout, e.g. a copy of hh-rlhf with
    ``helpful-base/train.jsonl.gz`` and ``helpful-base/test.jsonl.gz``, or a hub name) has a test split
    beside its training split, so that it validates on its own test files; None otherwise."""
    if is_jsonl_source(path):
        return None  # a file or a folder of JSONL files is one pool of records
    import datasets
    from datasets.data_files import get_data_patterns

    local = Path(path).expanduser()
    try:
        if local.is_dir():
            splits = {str(s) for s in get_data_patterns(str(local / (data_dir or "")))}
        else:
            splits = set(datasets.get_dataset_split_names(path, data_dir=data_dir))
    except Exception:  # no data files, no network: the read that follows says what is wrong
        return None
    return "test" if {"train", "test"} <= splits else None


def read_hub(
    path: str, split: str, data_dir: str | None, on_bad_record: OnBadRecord, bad: Counter[str]
) -> list[Record]:
    """Read one split through ``datasets.load_dataset`` (a hub name or a dataset folder)."""
    import datasets

    if missing_local_path(path):
        raise DataError(
            f"data path {path!r} does not exist; set data.path to a .jsonl/.jsonl.gz file, a folder, "
            "or a Hugging Face dataset name"
        )
    try:
        dataset = datasets.load_dataset(path, data_dir=data_dir, split=split)
    except Exception as err:  # datasets raises many types for a wrong name, split or missing network
        raise DataError(f"could not load dataset {path!r} (data_dir={data_dir!r}, split={split!r}): {err}") from err
    records = []
    for row, raw in enumerate(dataset):
        try:
            records.append(to_record(raw, f"{path}[{split}]#{row}"))
        except DataError:
            if on_bad_record == "error":
                raise
            bad["bad_record"] += 1
    return records
