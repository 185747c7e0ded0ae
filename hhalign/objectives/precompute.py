"""The reference's log-probs computed once before training, kept with the data, cached for resumes.

Online, every DPO step runs the frozen reference over the batch: a third of the step's arithmetic and a
second copy of the model in memory. The reference never changes, so its summed log-probs of each pair can
be computed once (one no-grad pass, in length order so batches pad little) and carried in the batches.
The cache is keyed by the training and validation data (records, split, tokenizer, lengths) and the
reference's weights: a resume with the same run directory reuses it, anything else recomputes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hhalign.data.examples import sequences_fingerprint
from hhalign.models.forward import model_inputs, response_states

CACHE_FILE = "ref_logps.pt"
PASS_BATCH = 16  # pairs per no-grad batch of the pass


@torch.no_grad()
def reference_logps(module: Any, examples: list, collate: Any, length: Any, show: bool) -> list[tuple[float, float]]:
    """``(chosen, rejected)`` summed reference log-probs of each pair, in the order of ``examples``."""
    order = sorted(range(len(examples)), key=lambda i: length(examples[i]))
    values: list[tuple[float, float]] = [(0.0, 0.0)] * len(examples)
    with module.reference() as ref:
        for start in tqdm(range(0, len(order), PASS_BATCH), desc="reference log-probs", disable=not show):
            indices = order[start : start + PASS_BATCH]
            batch = collate([examples[i] for i in indices]).to(module.device)
            logps, _ = response_states(ref, model_inputs(ref, batch, module.hparams.shared_prompt)).sequence_logps()
            chosen, rejected = logps.float().cpu().chunk(2)
            for i, c, r in zip(indices, chosen.tolist(), rejected.tolist(), strict=True):
                values[i] = (c, r)
    return values


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
            reference_logps(module, examples, datamodule.collator, datamodule.kind.length, show)
            for examples in (datamodule.train_examples, datamodule.val_examples)
        )
        if trainer.is_global_zero:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_name(f".{cache.name}.partial-{os.getpid()}")
            torch.save({"key": key, "train": train, "val": val}, partial)
            os.replace(partial, cache)
    datamodule.attach_reference_logps([tuple(v) for v in train], [tuple(v) for v in val])
