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
from transformers import GenerationConfig

from hhalign.data.batches import collate_sequences
from hhalign.models.forward import model_inputs, response_logps


@dataclass(frozen=True)
class Sampling:
    """How completions are drawn. At ``temperature`` 1 and ``top_p`` 1 (the defaults) they are samples of
    the model's own distribution, which an estimate of KL(π‖π_ref) from them needs; ``temperature`` 0
    decodes greedily. No top-k: Hugging Face's default of 50 would change the distribution."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1 (got {self.temperature}, {self.top_p})")

    @property
    def samples_the_model(self) -> bool:
        return self.temperature == 1.0 and self.top_p == 1.0

    def config(self, stop_id: int, pad_id: int) -> GenerationConfig:
        drawn = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=0,
            num_beams=1,
            repetition_penalty=1.0,
            eos_token_id=stop_id,
            pad_token_id=pad_id,
            **(drawn if self.temperature > 0 else {"do_sample": False}),
        )


@dataclass(frozen=True)
class Completion:
    """A completion's tokens up to and including its first stop token (EOS), and whether it stopped
    there or ran out of new tokens."""

    tokens: list[int]
    finished: bool

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


def _length_sorted(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


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
            for rows in tqdm(_length_sorted(prompts, batch_size), desc=description, disable=description is None):
                batch = collate_sequences([prompts[i] for i in rows], None, pad_id, padding_side="left").to(device)
                generated = model.generate(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, generation_config=config
                )
                for i, row in zip(rows, generated[:, batch.input_ids.shape[1] :].tolist(), strict=True):
                    out[i] = first_completion(row, stop_id)
        finally:
            model.train(was_training)
    return [c for c in out if c is not None]


def sample_groups(
    model: Any,
    prompts: Sequence[Sequence[int]],
    k: int,
    sampling: Sampling,
    stop_id: int,
    pad_id: int,
    seed: int = 0,
    batch_size: int = 16,
) -> list[list[Completion]]:
    """K completions of each prompt, ``[prompt][sample]``. The K copies of a prompt have one length, so the
    length-sorted batches keep a group together; the prefill is still computed once per copy (Hugging Face's
    ``generate`` expands the inputs before it, also with ``num_return_sequences``)."""
    if k < 1:
        raise ValueError(f"need at least one completion per prompt (got {k})")
    repeated = [prompt for prompt in prompts for _ in range(k)]
    flat = sample_completions(model, repeated, sampling, stop_id, pad_id, seed, batch_size)
    return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]


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
        batches = _length_sorted([list(prompts[i]) + list(completions[i]) for i in scored], batch_size)
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
