"""Tokenized examples cached on disk, so a large dataset is tokenized once, not on every run and resume.

The key is everything the examples depend on: the source files (path, size, modification time: with the
column mapping, they fix the records' format), the split and length settings, the kind of example, and the
tokenizer itself (its serialized vocabulary and
merges, special tokens and chat template). A hit skips reading the records too. Examples are stored as flat
integer arrays (``numpy.savez``, read back without pickle), so a cache file can run no code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hhalign.data.sources import load_split, local_identity
from hhalign.files import atomic_write

CACHE_VERSION = 3  # raise when tokenization changes what it makes of the same records
CACHE_ENV = "HHALIGN_CACHE"


def cache_dir() -> Path:
    """``$HHALIGN_CACHE``, else ``~/.cache/hhalign/tokenized``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hhalign" / "tokenized")


def tokenizer_identity(tokenizer: Any) -> str:
    """A digest of what a tokenizer does: its serialized model when it has one, its special tokens and template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [
        type(tokenizer).__name__,
        backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True),
        str(tokenizer.all_special_tokens),
        str(getattr(tokenizer, "chat_template", None)),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def source_identity(path: str | None, data_dir: str | None, splits: list[str]) -> Any:
    """A local source by its files; a hub dataset by the fingerprints ``datasets`` gives the splits it read
    (they change with the dataset's revision), so the hub recipes are tokenized once too."""
    local = local_identity(path)
    if local is not None or path is None:
        return local
    return [load_split(path, split, data_dir)._fingerprint for split in splits]


def cache_key(settings: dict[str, Any], tokenizer: Any) -> str:
    s = settings
    splits = [s["train_split"]] + [s["val_split"]] * bool(s.get("val_split"))
    sources = [source_identity(s.get("path"), s.get("data_dir"), splits)]
    sources.append(source_identity(s.get("val_path"), s.get("data_dir"), [s.get("val_split") or s["train_split"]]))
    blob = json.dumps({"v": CACHE_VERSION, "sources": sources, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256((blob + tokenizer_identity(tokenizer)).encode()).hexdigest()[:24]


def _pack(prefix: str, examples: list[Any]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {f"{prefix}n": np.array([len(examples)])}
    for field in dataclasses.fields(examples[0]) if examples else []:
        values = [getattr(e, field.name) for e in examples]
        if isinstance(values[0], list):
            arrays[f"{prefix}{field.name}.ids"] = np.fromiter((i for v in values for i in v), dtype=np.int64)
            arrays[f"{prefix}{field.name}.len"] = np.array([len(v) for v in values], dtype=np.int64)
        elif isinstance(values[0], str):
            arrays[f"{prefix}{field.name}.text"] = np.array(values, dtype=str)
        else:  # bool or optional float: nan stands for None
            arrays[f"{prefix}{field.name}"] = np.array([np.nan if v is None else float(v) for v in values])
    return arrays


def _unpack(prefix: str, arrays: Any, example_type: type) -> list[Any]:
    n = int(arrays[f"{prefix}n"][0])
    columns: dict[str, list] = {}
    for field in dataclasses.fields(example_type):
        if f"{prefix}{field.name}.ids" in arrays:
            ids, lengths = arrays[f"{prefix}{field.name}.ids"].tolist(), arrays[f"{prefix}{field.name}.len"]
            ends = np.cumsum(lengths).tolist()
            columns[field.name] = [ids[end - length : end] for end, length in zip(ends, lengths.tolist(), strict=True)]
        elif f"{prefix}{field.name}.text" in arrays:
            columns[field.name] = [str(v) for v in arrays[f"{prefix}{field.name}.text"].tolist()]
        elif f"{prefix}{field.name}" in arrays:
            raw = arrays[f"{prefix}{field.name}"].tolist()
            as_bool = field.type in ("bool", bool)
            columns[field.name] = [bool(v) if as_bool else (None if v != v else v) for v in raw]
    return [example_type(**{k: v[i] for k, v in columns.items()}) for i in range(n)]


def load(key: str, example_type: type) -> tuple[list[Any], list[Any], dict[str, Any]] | None:
    """``(train, val, summary)`` from the cache, or None."""
    path = cache_dir() / f"{key}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        summary = json.loads(str(arrays["summary"]))
        return _unpack("train.", arrays, example_type), _unpack("val.", arrays, example_type), summary


def save(key: str, train: list[Any], val: list[Any], summary: dict[str, Any]) -> Path:
    """Write atomically (a temporary file renamed into place), so a crash leaves no half-written cache."""
    path = cache_dir() / f"{key}.npz"
    with atomic_write(path) as partial:
        np.savez(partial, summary=np.array(json.dumps(summary)), **_pack("train.", train), **_pack("val.", val))
    return path
