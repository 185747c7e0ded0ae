"""Loading a tokenizer by hub name, local folder or hhalign ``.ckpt`` (its run's starting model), with a pad token
and errors a user can act on. The data stage needs it before any model exists; ``models.loading`` re-exports it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from hhalign.checkpoint_files import is_checkpoint_file, read_trained_weights
from hhalign.data.sources import missing_local_path
from hhalign.errors import ModelLoadError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
"""A folder with none of these has no tokenizer (the library would blame a missing sentencepiece or tiktoken)."""


def how_to_make(name_or_path: str) -> str:
    """The command that writes a missing model folder of the kinds hhalign's own steps write."""
    path = name_or_path.rstrip("/")
    if "smollm2" in path and path.startswith("artifacts/"):
        return f"build it with `make model` (hhalign get-model smollm2-135m-instruct --out {path})"
    if path.startswith("artifacts/") and "tiny" in Path(path).name:
        return f"build it with `hhalign make-tiny --out {path}`, or `make demo-tiny`"
    parts = Path(path).parts
    if path.endswith("/export") and len(parts) >= 3:
        experiment, trial = parts[-3], parts[-2]
        return (
            f"it is written at the end of the fit that exports it: run that stage first "
            f"(e.g. hhalign fit --config configs/{experiment}/{trial}.yaml)"
        )
    return "give a Hugging Face model name or a folder written by save_pretrained (e.g. one from `hhalign make-tiny`)"


def check_exists(name_or_path: str, what: str) -> None:
    if not name_or_path:
        raise ModelLoadError(f"no {what} path given; set model.model_name_or_path")
    if missing_local_path(name_or_path):
        raise ModelLoadError(f"{what} path {name_or_path!r} does not exist; {how_to_make(name_or_path)}")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer and give it a pad token (EOS) when it has none: masks never rely on pad ids.
    For an hhalign ``.ckpt``, the tokenizer of the model that run started from."""
    check_exists(name_or_path, "tokenizer")
    if is_checkpoint_file(name_or_path):
        return load_tokenizer(read_trained_weights(name_or_path).base, trust_remote_code)
    folder = Path(name_or_path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{name_or_path!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, …); give a folder written "
            "by save_pretrained with its tokenizer, or save the tokenizer into it (tokenizer.save_pretrained)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load a tokenizer from {name_or_path!r}: {err}") from err
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ModelLoadError(
                f"tokenizer {name_or_path!r} has neither a pad nor an EOS token; add an EOS token "
                "to it (tokenizer.add_special_tokens) and save it again"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def tokenizer_threads(enabled: bool) -> Iterator[None]:
    """Let the Rust tokenizers use every core for one batch call (the Makefile and tests turn them off so
    that forked data-loader workers do not deadlock; with no workers there is nothing to fork)."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    if enabled:
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
