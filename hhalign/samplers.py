"""Samplers that shard data across processes without repeating it, and remember where they stopped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DistributedSampler


class ResumableShuffle(DistributedSampler):
    """This process's share of a seeded permutation of the training pairs, new each epoch.

    Its position is part of its state, which the stateful data loader stores in checkpoints, so a
    resume mid-epoch continues with the next unseen pair, under DDP too (where Lightning would
    otherwise inject a DistributedSampler that can only restart the epoch). Being a
    DistributedSampler, Lightning leaves it in place and calls ``set_epoch`` on it.
    """

    def __init__(self, n_items: int, num_replicas: int, rank: int, seed: int = 0) -> None:
        super().__init__(range(n_items), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        self.yielded = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        self.yielded, self._resume_at = self._resume_at, 0
        for index in indices[self.yielded :]:
            self.yielded += 1
            yield index

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self._resume_at = state["epoch"], state["yielded"]


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
