"""Where records come from: JSONL and Parquet files or folders, a saved ``datasets`` folder, or a hub dataset.

Every row comes out as ``(origin, raw)``, ``origin`` naming the file and line (JSONL), the file and row (Parquet,
JSON arrays) or the dataset, split and row, so that a bad record is reported where the user can find it. Local
files are read here rather than by ``datasets``, which cannot say which line is wrong.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from hhalign.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
FILE_SUFFIXES = (*JSONL_SUFFIXES, ".json", ".parquet")
SAVED_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
"""Files ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` write at the top of their folder."""
LOCAL_ROOTS = ("artifacts/", "outputs/")
"""Where hhalign's own commands write models: a path under them is local even when it looks like a hub id."""

SourceKind = Literal["files", "saved", "hub"]


def missing_local_path(name_or_path: str) -> bool:
    """True when the string plainly names a local path that does not exist (``./``, ``/``, ``~``, a path
    under ``LOCAL_ROOTS``, a known file suffix, or more than one ``/``, which no hub id has), so the user gets
    "does not exist" rather than a hub lookup error."""
    first = name_or_path.split("/", 1)[0]
    local = (
        name_or_path.startswith((".", "/", "~", *LOCAL_ROOTS))
        or name_or_path.count("/") > 1
        or name_or_path.endswith(FILE_SUFFIXES)
        or ("/" in name_or_path and Path(first).is_dir())  # under a folder that exists here: no hub id
    )
    return local and not Path(name_or_path).expanduser().exists()


def source_kind(path: str) -> SourceKind:
    """``files`` for a data file or a folder holding data files directly (read here), ``saved`` for a
    ``save_to_disk`` folder, ``hub`` for anything else (a hub name, or a folder in a hub repository's layout,
    for ``datasets.load_dataset``)."""
    local = Path(path).expanduser()
    if local.is_dir():
        if any((local / marker).is_file() for marker in SAVED_MARKERS):
            return "saved"
        return "files" if any(p.name.endswith(FILE_SUFFIXES) for p in local.iterdir()) else "hub"
    return "files" if local.exists() or path.endswith(FILE_SUFFIXES) else "hub"


def data_files(path: str) -> list[Path]:
    """The data files a local path stands for, sorted so that reading order is reproducible."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(
            f"data path {path!r} does not exist; set data.path to a .jsonl/.jsonl.gz/.json/.parquet file, a "
            "folder of them, a saved dataset folder, or a Hugging Face dataset name"
        )
    if root.is_file():
        if not root.name.endswith(FILE_SUFFIXES):
            raise DataError(f"data file {path!r}: hhalign reads {', '.join(FILE_SUFFIXES)} files; convert it")
        return [root]
    files = sorted(p for p in root.iterdir() if p.name.endswith(FILE_SUFFIXES))
    if not files:
        raise DataError(f"data folder {path!r} holds no {', '.join(FILE_SUFFIXES)} files")
    kinds = {_file_kind(f) for f in files}
    if len(kinds) > 1:
        raise DataError(f"data folder {path!r} mixes {' and '.join(sorted(kinds))} files; keep one kind per folder")
    return files


def _file_kind(file: Path) -> str:
    return "Parquet" if file.name.endswith(".parquet") else "JSON"


def local_identity(path: str | None) -> Any:
    """Every file under a local source by path, size and modification time (what a cache of its contents must
    key on); None for a hub name, whose contents cannot be stat'ed."""
    if path is None:
        return []
    root = Path(path).expanduser()
    if not root.exists():
        return None
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and "/." not in str(p))
    return [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def file_rows(file: Path) -> Iterator[tuple[str, Any]]:
    """``(origin, raw)`` for every record of one file; a line that is not JSON is raised as ``DataError``
    naming it (the caller decides whether to skip it)."""
    if file.name.endswith(".parquet"):
        yield from _parquet_rows(file)
    elif file.name.endswith(".json"):
        yield from _json_rows(file)
    else:
        yield from _jsonl_rows(file)


def _jsonl_rows(file: Path) -> Iterator[tuple[str, Any]]:
    lineno = 0
    try:
        for lineno, line in enumerate(_lines(file), start=1):
            origin = f"{file}:{lineno}"
            try:
                text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark opens some files
            except UnicodeDecodeError as err:
                yield origin, DataError(f"{origin}: not valid UTF-8 (byte {err.start} of the line); re-encode it")
                continue
            if not text.strip():
                continue
            try:
                yield origin, json.loads(text)
            except json.JSONDecodeError as err:
                yield origin, DataError(f"{origin}: malformed JSON ({err})")
    except gzip.BadGzipFile:
        raise DataError(f"{file}: named .gz but not gzip-compressed; rename it without .gz") from None
    except (EOFError, zlib.error) as err:
        raise DataError(
            f"{file}: the gzip stream breaks off after line {lineno} ({type(err).__name__}): the file is truncated "
            "or damaged; copy or compress it again"
        ) from None


def _lines(file: Path) -> Iterator[bytes]:
    with (gzip.open if file.name.endswith(".gz") else open)(file, "rb") as handle:
        yield from handle


def _json_rows(file: Path) -> Iterator[tuple[str, Any]]:
    try:
        rows = json.loads(file.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{file}: not a JSON array of records ({err}); JSON Lines files end in .jsonl") from None
    if not isinstance(rows, list):
        raise DataError(f"{file}: a .json file must hold a JSON array of records; JSON Lines files end in .jsonl")
    for row, raw in enumerate(rows, start=1):
        yield f"{file} record {row}", raw


def _parquet_rows(file: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except Exception as err:  # pyarrow raises its own error types for a file that is not Parquet
        raise DataError(f"{file}: not a readable Parquet file ({err})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for raw in batch.to_pylist():
            row += 1
            yield f"{file} row {row}", raw


def dataset_rows(path: str, split: str, data_dir: str | None) -> Iterator[tuple[str, Any]]:
    """The rows of one split of a saved dataset folder or of a hub dataset (or a folder in a hub layout)."""
    for row, raw in enumerate(load_split(path, split, data_dir), start=1):
        yield f"{path}[{split}] row {row}", raw


def load_split(path: str, split: str, data_dir: str | None) -> Any:
    import datasets

    if missing_local_path(path):
        raise DataError(
            f"data path {path!r} does not exist; set data.path to a .jsonl/.jsonl.gz/.json/.parquet file, a "
            "folder of them, a saved dataset folder, or a Hugging Face dataset name"
        )
    if source_kind(path) == "saved":
        saved = datasets.load_from_disk(str(Path(path).expanduser()))
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise DataError(f"saved dataset {path!r} has no split {split!r}; its splits: {', '.join(saved)}")
            return saved[split]
        return saved
    try:
        return datasets.load_dataset(path, data_dir=data_dir, split=split)
    except Exception as err:  # datasets raises many types for a wrong name, split or missing network
        reason = (str(err).splitlines() or [type(err).__name__])[0][:300]
        raise DataError(
            f"data path {path!r} is not a local file or folder (none under {os.getcwd()}) and could not be loaded "
            f"as a hub dataset (data_dir={data_dir!r}, split={split!r}): {reason}"
        ) from None


def split_names(path: str, data_dir: str | None) -> set[str]:
    """The splits of a saved dataset or a hub dataset; empty for local files (one pool) or when unknown."""
    kind = source_kind(path)
    if kind == "files":
        return set()
    local = Path(path).expanduser()
    try:
        if kind == "saved":
            marker = local / "dataset_dict.json"
            return set(json.loads(marker.read_text())["splits"]) if marker.is_file() else set()
        if local.is_dir():
            from datasets.data_files import get_data_patterns

            return {str(s) for s in get_data_patterns(str(local / (data_dir or "")))}
        import datasets

        return set(datasets.get_dataset_split_names(path, data_dir=data_dir))
    except Exception:  # no data files, no network: the read that follows says what is wrong
        return set()


def val_split_of(path: str, data_dir: str | None, train_split: str) -> str | None:
    """The split to validate on when none is named: ``test`` beside ``train``, or the training split's name
    with ``train`` replaced by ``test`` (``train_prefs`` → ``test_prefs``, UltraFeedback's); None when the
    source has no such split (a local file, a single-split dataset)."""
    splits = split_names(path, data_dir)
    for candidate in ("test", train_split.replace("train", "test")):
        if candidate != train_split and candidate in splits and train_split in splits:
            return candidate
    return None
