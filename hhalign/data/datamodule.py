"""The LightningDataModule: records read, split and tokenized into the examples the objective reads,
then batched by the collator of that kind of example."""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from hhalign.data import cache
from hhalign.data.audit import audit, nothing_left
from hhalign.data.batches import PaddingSide
from hhalign.data.choices import Choice
from hhalign.data.examples import EXAMPLE_KINDS, ExampleKind, ExampleSettings, sequences_fingerprint
from hhalign.data.ratings import Ratings
from hhalign.data.reading import read_records
from hhalign.data.records import OnBadRecord, Record, first_conversational
from hhalign.data.reshaping import reshaper
from hhalign.data.samplers import EvalShard, ResumableShuffle, length_grouped_batches
from hhalign.data.sources import source_kind, val_split_of
from hhalign.data.templates import template_for
from hhalign.data.tokenizers import load_tokenizer, tokenizer_threads
from hhalign.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SUMMARY_FILE = "data_summary.json"
CACHE_SETTINGS = (
    "path", "data_dir", "val_path", "train_split", "val_split", "valid_fraction", "split_seed", "max_length",
    "max_response_length", "examples", "chat_template", "on_bad_record", "columns", "preset", "choice", "ratings",
    "record_function",
)  # fmt: skip
"""What the tokenized examples depend on besides the files and the tokenizer: the cache key."""


def split_records(records: list[Record], valid_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """A seeded split that depends on the records alone, not on the tokenizer or the machine."""
    if not 0 < valid_fraction < 1:
        raise ConfigError(f"data.valid_fraction must be between 0 and 1 (got {valid_fraction})")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(records) * valid_fraction))
    return [records[i] for i in sorted(order[n_val:])], [records[i] for i in sorted(order[:n_val])]


class PreferenceDataModule(L.LightningDataModule):
    """Preference data of any format in ``hhalign.data.formats``, tokenized into the examples the objective reads.

    Args:
        path: A local ``.jsonl``/``.jsonl.gz``/``.json``/``.parquet`` file or folder of them, a ``save_to_disk``
            folder, or a Hugging Face dataset name or folder for ``datasets.load_dataset``.
        tokenizer_name_or_path: Linked by the CLI to the model's path.
        data_dir: Passed to ``load_dataset`` (e.g. ``helpful-base`` for ``Anthropic/hh-rlhf``).
        val_path: Validate on this source (file, folder or dataset, as ``path``) instead of a part of ``path``.
        train_split: Split to train on (datasets, e.g. a hub name or a local copy of hh-rlhf).
        val_split: Split to validate on (datasets); when None, the dataset's ``test`` split (or the training
            split's name with ``train`` replaced by ``test``, as UltraFeedback's ``test_prefs``) if it has one,
            otherwise ``valid_fraction`` of the training records, held out
            with ``split_seed``. A JSONL file or folder of JSONL files is one pool: ``valid_fraction``.
        shuffle_seed: Seeds the training order, a new permutation each epoch.
        skip_train_batches: Start the first epoch this many batches into that order (as a resume would), so a
            run with the same data settings trains on the batches an earlier run of that many steps never saw:
            a second reward model on pairs disjoint from the first's, to judge with.
        max_length: Bound on prompt + the longer response, in tokens.
        max_response_length: Bound on each response (default: ``max_length``).
        on_bad_record: ``error`` stops at the first unusable record naming its line; ``skip`` drops and counts it.
        cache_tokenized: Keep the tokenized examples on disk (``hhalign.data.cache``, under ``$HHALIGN_CACHE`` or
            ``~/.cache/hhalign/tokenized``), keyed by the source (local files, or a hub dataset's fingerprints),
            the settings and the tokenizer, so later runs and resumes skip tokenizing.
        shared_prompt: Pack each pair as one row ``prompt + chosen + rejected`` (see ``hhalign.models.layout``),
            so the prompt is computed once; off, chosen rows are stacked above rejected rows.
        group_by_length: Train on batches of pairs of similar length (less padding); each epoch is
            still a seeded permutation of the training pairs.
        examples: The kind of example to build (``hhalign.data.examples.EXAMPLE_KINDS``): ``pairs`` for RM and
            DPO, ``dialogues`` for SFT (each record's chosen dialogue, its assistant turns the targets,
            ``max_length`` bounding the whole). The command line sets it to what the objective reads.
        chat_template: Render text records through the tokenizer's chat template (Human → user,
            Assistant → assistant; plain text is one user turn) instead of raw text, for instruct models.
            Conversational records always use the template. A Jinja template (a file or its text) replaces the
            tokenizer's, for one that has none.
        columns: The source's column for each of hhalign's fields, e.g. ``{"chosen": "response_a",
            "rejected": "response_b"}``; the other columns keep their names.
        preset, choice, ratings, record_function: How rows not split into chosen and rejected become pairs: a
            public set by name (``hhalign.data.reshaping.PRESETS``), a column naming the preferred reply
            (``hhalign.data.choices.Choice``), rated replies (``hhalign.data.ratings.Ratings``), or a
            ``module:function`` turning each raw row into a record, a list of them, or None.
    """

    def __init__(
        self,
        path: str = "data/hh-rlhf",
        tokenizer_name_or_path: str = "",
        data_dir: str | None = None,
        val_path: str | None = None,
        train_split: str = "train",
        val_split: str | None = None,
        valid_fraction: float = 0.1,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        skip_train_batches: NonNegativeInt = 0,  # type: ignore[assignment]
        max_length: PositiveInt = 512,  # type: ignore[assignment]
        max_response_length: PositiveInt | None = None,
        batch_size: PositiveInt = 8,  # type: ignore[assignment]
        val_batch_size: PositiveInt | None = None,
        padding_side: PaddingSide = "right",
        shared_prompt: bool = True,
        group_by_length: bool = False,
        examples: ExampleKind = "pairs",
        chat_template: bool | str = False,
        columns: dict[str, str] | None = None,
        preset: str | None = None,
        choice: Choice | None = None,
        ratings: Ratings | None = None,
        record_function: str | None = None,
        num_workers: NonNegativeInt = 0,  # type: ignore[assignment]
        on_bad_record: OnBadRecord = "error",
        trust_remote_code: bool = False,
        cache_tokenized: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.kind = EXAMPLE_KINDS[examples](
            ExampleSettings(max_length, max_response_length, shared_prompt, padding_side)
        )
        self.train_examples: list[Any] = []
        self.val_examples: list[Any] = []
        self.summary: dict[str, Any] = {}
        self.formats: dict[str, str] = {}
        self.collator: Any = None
        self.fingerprint = ""
        self.reshape = reshaper(preset, choice, ratings, record_function)  # a wrong preset or function fails here

    def attach_reference_logps(self, train: list[tuple[float, float]], val: list[tuple[float, float]]) -> None:
        """Give every training and validation pair its reference log-probs (computed once, before training),
        so that batches carry them and no reference runs during training."""
        self.train_examples = [replace(p, ref_logps=v) for p, v in zip(self.train_examples, train, strict=True)]
        self.val_examples = [replace(p, ref_logps=v) for p, v in zip(self.val_examples, val, strict=True)]

    def _records(self, source: str, split: str, counts: Counter[str]) -> list[Record]:
        hp = self.hparams
        pairs = hp.examples != "prompts"  # an online objective may read a pair set's prompts
        read = read_records(source, split, hp.data_dir, hp.columns, hp.on_bad_record, counts, self.reshape, pairs)
        self.formats[source if source_kind(source) == "files" else f"{source}[{split}]"] = read.format
        return read.records

    def _read(self, counts: Counter[str]) -> tuple[list[Record], list[Record], str]:
        """Training and validation records, and where the validation records came from."""
        hp = self.hparams
        train = self._records(hp.path, hp.train_split, counts)
        if hp.val_path:
            val_split = hp.val_split or val_split_of(hp.val_path, hp.data_dir, hp.train_split) or hp.train_split
            what = "every record" if source_kind(hp.val_path) == "files" else f"{val_split} split"
            return train, self._records(hp.val_path, val_split, counts), f"{hp.val_path} ({what})"
        val_split = hp.val_split or val_split_of(hp.path, hp.data_dir, hp.train_split)
        if val_split is None:
            held_out = f"{hp.valid_fraction:g} of {hp.path} held out (split_seed {hp.split_seed})"
            return *split_records(train, hp.valid_fraction, hp.split_seed), held_out
        return train, self._records(hp.path, val_split, counts), f"{hp.path} ({val_split} split)"

    def setup(self, stage: str | None = None) -> None:
        if self.collator is not None:
            return
        hp = self.hparams
        tokenizer = load_tokenizer(hp.tokenizer_name_or_path, hp.trust_remote_code)
        if isinstance(hp.chat_template, str):  # a template of the user's: part of the tokenizer, and of the key
            template_for(tokenizer, hp.chat_template, None)
        settings = {k: hp[k] for k in CACHE_SETTINGS} | {"reshape": self.reshape and self.reshape.identity}
        key = cache.cache_key(settings, tokenizer) if hp.cache_tokenized else None
        hit = cache.load(key, self.kind.example_type) if key else None
        if hit is not None:
            self.train_examples, self.val_examples, self.summary = hit
            log.info("data: tokenized examples from the cache (%s)", key)
        else:
            self._tokenize(tokenizer)
            if key:
                cache.save(key, self.train_examples, self.val_examples, self.summary)
        cuts = {f"cut:{k}": v for k, v in self.summary["cut"].items()}
        self.summary |= audit([*self.train_examples, *self.val_examples], cuts, tokenizer)
        self.collator = self.kind.collator(tokenizer.pad_token_id)
        self.fingerprint = sequences_fingerprint(self.kind.identity(self.train_examples))
        log.info("data: %s", json.dumps(self.summary))
        self._save_summary()

    def _tokenize(self, tokenizer: Any) -> None:
        hp = self.hparams
        counts: Counter[str] = Counter()
        train_records, val_records, val_source = self._read(counts)
        conversational = first_conversational([*train_records, *val_records])
        template = template_for(tokenizer, hp.chat_template, conversational)
        tokenize = self.kind.tokenizer(tokenizer, template)
        with tokenizer_threads(hp.num_workers == 0):
            self.train_examples = tokenize(train_records)
            self.val_examples = tokenize(val_records)
        counts.update(tokenize.counts)
        if not self.train_examples or not self.val_examples:
            stage = "training" if not self.train_examples else "validation"
            source = hp.path if not self.train_examples or not hp.val_path else hp.val_path
            raise DataError(nothing_left(f"{stage} {hp.examples}", source, counts, hp.max_length))
        self.summary = self._summarize(len(train_records) + len(val_records) + counts["bad_record"], counts)
        self.summary["validation"] = val_source
        self.summary["format"] = self.formats
        if self.reshape is not None:
            self.summary["pairs_from"] = self.reshape.describe()
        self.summary["chat_template"] = template is not None

    def _summarize(self, read: int, counts: Counter[str]) -> dict[str, Any]:
        return {
            "read": read,
            "kept": {"train": len(self.train_examples), "val": len(self.val_examples)},
            "cut": {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("cut:")},
            "dropped": {k.split(":", 1)[-1]: v for k, v in sorted(counts.items()) if not k.startswith("cut:")},
        }

    def _save_summary(self) -> None:
        if self.trainer is None:
            return
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank must ask, once
        if log_dir is None or not self.trainer.is_global_zero:
            return
        run_dir = Path(log_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / SUMMARY_FILE).write_text(json.dumps(self.summary, indent=2) + "\n")

    def train_dataloader(self) -> StatefulDataLoader:
        # Stateful: Lightning saves the sampler's position in checkpoints, so a resume mid-epoch
        # continues with the next unseen batch instead of restarting the epoch.
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return StatefulDataLoader(
            self.train_examples,  # type: ignore[arg-type]
            batch_size=self.hparams.batch_size,
            sampler=self._train_sampler(world, rank),
            collate_fn=self.collator,
            num_workers=self.hparams.num_workers,
        )

    def _train_sampler(self, world: int, rank: int) -> ResumableShuffle:
        hp = self.hparams
        lengths = [self.kind.length(p) for p in self.train_examples] if hp.group_by_length else None
        skip = hp.skip_train_batches * hp.batch_size
        epoch = math.ceil(len(self.train_examples) / world)
        if skip >= epoch:
            raise ConfigError(
                f"--data.skip_train_batches {hp.skip_train_batches}: an epoch here has only "
                f"{math.ceil(epoch / hp.batch_size)} batches of {hp.batch_size} per process; skip fewer"
            )
        return ResumableShuffle(
            len(self.train_examples), world, rank, hp.shuffle_seed, lengths, hp.batch_size, skip_first=skip
        )

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        if len(self.val_examples) < world:
            raise DataError(
                f"{len(self.val_examples)} validation {self.hparams.examples} for {world} processes: each process "
                "needs at least one; hold out more (data.valid_fraction) or validate on a larger data.val_path"
            )
        size = self.hparams.val_batch_size or self.hparams.batch_size
        lengths = [self.kind.length(p) for p in self.val_examples]
        order = length_grouped_batches(lengths, size, self.hparams.split_seed, world)
        batches = [[self.val_examples[i] for i in batch] for batch in order]
        # batch_size=None: each item is already a batch, and the collator turns it into tensors
        return DataLoader(
            batches,
            batch_size=None,
            sampler=EvalShard(len(batches), world, rank),
            collate_fn=self.collator,  # type: ignore[arg-type]
            num_workers=self.hparams.num_workers,
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
