"""Sampling completions from a causal LM and scoring them: the two halves of judging a policy by what it
writes, and of the online objectives' steps. Prompts and completions are token ids in training's format (BOS
or chat template in the prompt, EOS ending a finished completion), so the log-probs here are those the DPO
loss reads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, GenerationConfig

from hhalign.data.batches import collate_sequences
from hhalign.data.samplers import length_sorted_batches
from hhalign.models.forward import model_inputs, response_logps
from hhalign.models.sampling import Sampling as Sampling  # its home is light: the tools' help reads it


@dataclass(frozen=True)
class Completion:
    """A completion's tokens up to and including its first stop token (EOS), whether it stopped there or ran
    out of new tokens, and, from an engine that reports them, each token's log-prob as the engine sampled it."""

    tokens: list[int]
    finished: bool
    logps: tuple[float, ...] | None = None

    def ended(self, stop_id: int) -> list[int]:
        """The tokens as a judge reads them: a reply cut by ``max_new_tokens`` gets its stop token, so that
        every reply is scored at the end-of-reply token, where a reward model reads in training (at a
        mid-sentence token the same model's scores are on another scale)."""
        return self.tokens if self.finished else [*self.tokens, stop_id]


def first_completion(generated: Sequence[int], stop_id: int) -> Completion:
    """The completion inside a generated row: everything after the first stop token is padding (which
    is the stop token itself when the tokenizer pads with EOS) and is not part of it."""
    row = list(generated)
    if stop_id in row:
        return Completion(row[: row.index(stop_id) + 1], True)
    return Completion(row, False)


@contextlib.contextmanager
def plain_generation(model: Any) -> Iterator[None]:
    """Generate with hhalign's settings alone: a checkpoint's ``generation_config.json`` (a temperature,
    a top-k, suppressed tokens) would otherwise fill whatever a call leaves unset."""
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


@torch.no_grad()
def sample_completions(
    model: Any,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling,
    stop_id: int,
    pad_id: int,
    seed: int = 0,
    batch_size: int = 16,
    description: str | None = None,
) -> list[Completion]:
    """One completion of each prompt, in the prompts' order. Prompts of similar length are batched
    together, left-padded (the mask, not the pad id, tells the model where they start); the draws are
    seeded, so the same call gives the same completions on the same machine."""
    device = next(model.parameters()).device
    config = sampling.config(stop_id, pad_id)
    out: list[Completion | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    # the caller's random state is put back afterwards: an evaluation at the end of fit draws its own
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), plain_generation(model):
        torch.manual_seed(seed)
        try:
            for rows in tqdm(
                length_sorted_batches([len(p) for p in prompts], batch_size),
                desc=description,
                disable=description is None,
            ):
                batch = collate_sequences([prompts[i] for i in rows], None, pad_id, padding_side="left").to(device)
                generated = model.generate(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, generation_config=config
                )
                for i, row in zip(rows, generated[:, batch.input_ids.shape[1] :].tolist(), strict=True):
                    out[i] = first_completion(row, stop_id)
        finally:
            model.train(was_training)
    return [c for c in out if c is not None]


@torch.no_grad()
def sample_groups(
    model: Any,
    prompts: Sequence[Sequence[int]],
    k: int,
    sampling: Sampling,
    stop_id: int,
    pad_id: int,
    seed: int = 0,
    batch_size: int = 16,
    synced: bool = False,
) -> list[list[Completion]]:
    """K completions of each prompt, ``[prompt][sample]``. Each prompt's prefill is computed once and its
    key/value cache repeated for its K samples (Hugging Face's ``generate`` would prefill every copy, also with
    ``num_return_sequences``); the draws are those of K plain copies, the same tokens from the same seed.
    ``synced``: every process decodes until all are done (under FSDP each token's forward is a collective)."""
    if k < 1:
        raise ValueError(f"need at least one completion per prompt (got {k})")
    device = next(model.parameters()).device
    config = sampling.config(stop_id, pad_id)
    out: list[list[Completion]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), plain_generation(model):
        torch.manual_seed(seed)
        try:
            for rows in length_sorted_batches([len(p) for p in prompts], max(1, batch_size // k)):
                batch = collate_sequences([prompts[i] for i in rows], None, pad_id, padding_side="left").to(device)
                ids, mask = batch.input_ids, batch.attention_mask
                cache = _shared_prefill(model, ids, mask, k)
                generated = model.generate(
                    input_ids=ids.repeat_interleave(k, 0),
                    attention_mask=mask.repeat_interleave(k, 0),
                    generation_config=config,
                    synced_gpus=synced,
                    **({} if cache is None else {"past_key_values": cache}),
                )
                new = generated[:, ids.shape[1] :].tolist()
                for n, i in enumerate(rows):
                    out[i] = [first_completion(row, stop_id) for row in new[n * k : (n + 1) * k]]
        finally:
            model.train(was_training)
    return out


def _shared_prefill(model: Any, ids: torch.Tensor, mask: torch.Tensor, k: int) -> Any:
    """The cache of every prompt token but the last (``generate`` computes that one), computed once per prompt
    and repeated K times; positions count real tokens only, as ``generate`` counts them under left padding."""
    if k == 1 or ids.shape[1] < 2:
        return None
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], past_key_values=cache)
    cache.batch_repeat_interleave(k)
    return cache


@torch.no_grad()
def completion_logps(
    model: Any,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    batch_size: int = 16,
    description: str | None = None,
) -> list[float]:
    """log p(completion | prompt) summed over the completion's tokens (stop token included), one float
    per pair of ``prompts`` and ``completions``; an empty completion has log-prob 0.

    Computed in the weights' own precision even inside autocast: the KL estimate is a difference of two such
    sums, and bf16 errors of ≥0.04 nats a sequence would swamp KLs of about one nat."""
    device = next(model.parameters()).device
    out = [0.0] * len(prompts)
    scored = [i for i in range(len(prompts)) if completions[i]]
    was_training = model.training
    model.eval()
    try:
        no_autocast = torch.autocast(device.type, enabled=False)
        batches = length_sorted_batches([len(prompts[i]) + len(completions[i]) for i in scored], batch_size)
        for rows in tqdm(batches, desc=description, disable=description is None):
            picked = [scored[j] for j in rows]
            ids = [list(prompts[i]) + list(completions[i]) for i in picked]
            targets = [[0] * len(prompts[i]) + [1] * len(completions[i]) for i in picked]
            batch = collate_sequences(ids, targets, 0, padding_side="right").to(device)  # pad id: filler only
            with no_autocast:
                sums, _ = response_logps(model, model_inputs(model, batch))
            for i, value in zip(picked, sums.tolist(), strict=True):
                out[i] = value
    finally:
        model.train(was_training)
    return out
