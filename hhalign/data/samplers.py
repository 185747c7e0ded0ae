"""Samplers that shard data across processes without repeating it, and remember where they stopped."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import DistributedSampler


def length_order(lengths: Sequence[int], indices: Sequence[int] | None = None) -> list[int]:
    """``indices`` (default: all) sorted by their length, shortest first; ties keep their order."""
    return sorted(range(len(lengths)) if indices is None else indices, key=lambda i: lengths[i])


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, indices: Sequence[int] | None = None
) -> list[list[int]]:
    """Batches of ``batch_size`` indices of similar length (the last may be smaller), shortest first: the one
    batcher of evaluation, sampling and the reference pass, which pad little this way."""
    order = length_order(lengths, indices)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, processes: int = 1) -> list[list[int]]:
    """Batches of similar length, in a seeded order: evaluation pads little, and its first
    batches are a spread of lengths rather than the shortest examples.

    With several processes the number of batches is a multiple of ``processes`` (sizes then differ by at most
    one): each process runs as many batches as the others, so a collective inside an evaluation step (every
    FSDP forward all-gathers its weights) never waits for a process that has finished; no example repeats.
    """
    if processes == 1:
        batches = length_sorted_batches(lengths, batch_size)
    else:
        order = length_order(lengths)
        n = len(order)
        rounds = math.ceil(math.ceil(n / batch_size) / processes)
        count = rounds * processes
        if count > n:  # more batches than examples: one fewer round, each batch a little larger
            count = n // processes * processes
        bounds = [n * k // count for k in range(count + 1)]
        batches = [order[bounds[k] : bounds[k + 1]] for k in range(count)]
    random.Random(seed).shuffle(batches)
    return batches


class ResumableShuffle(DistributedSampler):
    """This process's share of a seeded permutation of the training pairs, new each epoch.

    Its position is part of its state, which the stateful data loader stores in checkpoints, so a
    resume mid-epoch continues with the next unseen pair, under DDP too (where Lightning would
    otherwise inject a DistributedSampler that can only restart the epoch). Being a
    DistributedSampler, Lightning leaves it in place and calls ``set_epoch`` on it.

    With ``lengths`` and ``batch_size``, each epoch's permutation is cut into windows of
    ``group_batches`` global batches, sorted by length inside each window, and the global batches of
    the epoch are shuffled: a batch holds pairs of similar length (less padding) and the epoch is still
    a permutation, the same on every process, so the position stays resumable.

    ``skip_first`` starts the first epoch that many of this process's items in: a second model trained from
    there sees exactly the items a first run of ``skip_first`` items did not (a held-out judge, say).
    """

    def __init__(
        self,
        n_items: int,
        num_replicas: int,
        rank: int,
        seed: int = 0,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        group_batches: int = 64,
        skip_first: int = 0,
    ) -> None:
        super().__init__(range(n_items), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        if lengths is not None and len(lengths) != n_items:
            raise ValueError(f"{len(lengths)} lengths for {n_items} items")
        self.lengths = lengths
        self.batch_size = batch_size
        self.group_batches = group_batches
        self.yielded = 0
        if skip_first >= self.num_samples:
            raise ValueError(f"cannot skip {skip_first} of an epoch's {self.num_samples} items")
        self._resume_at = skip_first
        self._resume_epoch: int | None = None  # the epoch ``_resume_at`` counts in; None: the first one iterated

    def _epoch_indices(self) -> list[int]:
        if self.lengths is None:
            return list(super().__iter__())
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        rng.shuffle(order)
        order += order[: self.total_size - len(order)]  # pad to a multiple of the world, as the parent does
        lengths, world = self.lengths, self.num_replicas
        global_batch = self.batch_size * world
        window = global_batch * self.group_batches
        grouped: list[int] = []
        for start in range(0, len(order), window):
            grouped += length_order(lengths, order[start : start + window])
        batches = [grouped[i : i + global_batch] for i in range(0, len(grouped), global_batch)]
        full, partial = (batches[:-1], batches[-1:]) if len(batches[-1]) < global_batch else (batches, [])
        rng.shuffle(full)
        # each process takes its slice of every global batch, so its own batches stay length-grouped
        rank = self.rank
        return [i for b in full + partial for i in b[rank * len(b) // world : (rank + 1) * len(b) // world]]

    def __iter__(self) -> Iterator[int]:
        indices = self._epoch_indices()
        # A checkpoint written after an epoch's last batch holds that epoch, fully yielded, while Lightning
        # resumes in the next: the position belongs to the epoch it was saved in, and only to it.
        start = self._resume_at if self._resume_epoch in (None, self.epoch) else 0
        self.yielded, self._resume_at, self._resume_epoch = start, 0, None
        for index in indices[self.yielded :]:
            self.yielded += 1
            yield index

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self._resume_at = state["epoch"], state["yielded"]
        self._resume_epoch = self.epoch


class EvalShard(DistributedSampler):
    """Process ``rank`` evaluates batches ``rank, rank + world, …``: every batch once in all.

    Lightning's default DistributedSampler repeats items to even out the shards, which would count
    some validation pairs twice; being a DistributedSampler, this one is left in place.
    """

    def __init__(self, n_batches: int, num_replicas: int, rank: int) -> None:
        super().__init__(range(n_batches), num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]
        self.indices = list(range(rank, n_batches, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
