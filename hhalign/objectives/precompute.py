"""The reference's log-probs computed once before training, kept with the data, cached for resumes.

Online, every DPO step runs the frozen reference over the batch: a third of the step's arithmetic and a
second copy of the model in memory. The reference never changes, so its summed log-probs of each pair can
be computed once (one no-grad pass, in length order so batches pad little; each process computes a share and
the values are gathered) and carried in the batches. Under FSDP the pass would run the sharded reference outside
the wrapped forward, so it is refused there (``DPOModule.setup``).
The cache is keyed by the training and validation data (records, split, tokenizer, lengths) and the
reference's weights: a resume with the same run directory reuses it, anything else recomputes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hhalign.data.examples import sequences_fingerprint
from hhalign.data.samplers import length_sorted_batches
from hhalign.files import atomic_write
from hhalign.models.forward import model_inputs, response_states

CACHE_FILE = "ref_logps.pt"
PASS_BATCH = 16  # pairs per no-grad batch of the pass


@torch.no_grad()
def reference_logps(
    module: Any, examples: list, collate: Any, length: Any, show: bool, rank: int = 0, world: int = 1
) -> Tensor:
    """``(len(examples), 2)`` summed reference log-probs (chosen, rejected) of every ``world``-th pair from
    ``rank`` on, in that order, in float32; under the trainer's precision (autocast), as the policy's forward."""
    mine = list(range(rank, len(examples), world))
    lengths = [length(e) for e in examples]
    values = torch.zeros(len(examples), 2)
    forward_context = module.trainer.precision_plugin.forward_context if module._trainer else contextlib.nullcontext
    with module.reference() as ref, forward_context():
        for indices in tqdm(
            length_sorted_batches(lengths, PASS_BATCH, mine), desc="reference log-probs", disable=not show
        ):
            batch = collate([examples[i] for i in indices]).to(module.device)
            logps, _ = response_states(ref, model_inputs(ref, batch, module.hparams.shared_prompt)).sequence_logps()
            values[indices] = torch.stack(logps.float().cpu().chunk(2), dim=1)
    return values[mine]


def shared_reference_logps(module: Any, examples: list, collate: Any, length: Any, show: bool) -> list[tuple]:
    """Every pair's reference log-probs, each process computing its share, gathered onto every process."""
    trainer = module.trainer
    world, rank = trainer.world_size, trainer.global_rank
    mine = reference_logps(module, examples, collate, length, show, rank, world)
    if world == 1:
        return [tuple(v) for v in mine.tolist()]
    share = -(-len(examples) // world)  # padded to the largest share: all_gather wants equal shapes
    padded = torch.zeros(share, 2, device=module.device)
    padded[: len(mine)] = mine.to(module.device)
    gathered = trainer.strategy.all_gather(padded).cpu()  # (world, share, 2): process r holds pairs r, r+world, …
    values = torch.zeros(len(examples), 2)
    for r in range(world):
        count = len(range(r, len(examples), world))
        values[r::world] = gathered[r, :count]
    return [tuple(v) for v in values.tolist()]


def free_weights(model: nn.Module) -> None:
    """Release a model's parameter memory even where another object still holds the parameters (DDP keeps a
    list of every parameter of the module it wraps, frozen ones included)."""
    for parameter in model.parameters():
        parameter.data = torch.empty(0, dtype=parameter.dtype, device=parameter.device)


def precompute_reference(module: Any, datamodule: Any) -> None:
    """Attach reference log-probs to the data module's pairs, from the run's cache when it matches."""
    trainer = module.trainer
    key = {
        "train": datamodule.fingerprint,
        "val": sequences_fingerprint(datamodule.kind.identity(datamodule.val_examples)),
        "reference": module.fingerprints()["reference"],
    }
    cache = Path(trainer.default_root_dir) / CACHE_FILE
    saved = torch.load(cache, weights_only=True) if cache.is_file() else None
    if saved is not None and saved.get("key") == key:
        train, val = saved["train"], saved["val"]
        module.print(f"reference log-probs: reused {cache}")
    else:
        show = trainer.is_global_zero and trainer.progress_bar_callback is not None
        train, val = (
            shared_reference_logps(module, examples, datamodule.collator, datamodule.kind.length, show)
            for examples in (datamodule.train_examples, datamodule.val_examples)
        )
        if trainer.is_global_zero:
            with atomic_write(cache) as partial:
                torch.save({"key": key, "train": train, "val": val}, partial)
    datamodule.attach_reference_logps([tuple(v) for v in train], [tuple(v) for v in val])
