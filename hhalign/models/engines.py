"""Rollout engines: what draws the completions of the online objectives, ``hhalign evaluate`` and ``hhalign
generate``. Two sit behind one call: Hugging Face generation in the model being trained (``hf``, the default), and
vLLM colocated in the same process (``vllm``), into which the model's current weights are pushed before each draw.

An engine is handed the model at every draw, so it always samples from the weights as they are now: after an
optimizer step, after a resume, or a reference after a policy. Engines other than ``hf`` also return the log-prob
they gave each sampled token, which the trainer compares with its own (``losses.engine_mismatch``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from hhalign.errors import ConfigError
from hhalign.models.generation import Completion, sample_completions, sample_groups
from hhalign.models.sampling import ENGINES, EngineName, EngineOptions, Sampling

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["ENGINES", "EngineName", "EngineOptions", "HFEngine", "RolloutEngine", "open_engine"]


class RolloutEngine(Protocol):
    name: str

    def sample(
        self,
        model: Any,
        prompts: Sequence[Sequence[int]],
        k: int,
        sampling: Sampling,
        stop_id: int,
        pad_id: int,
        seed: int = 0,
        batch_size: int = 16,
        synced: bool = False,
        description: str | None = None,
    ) -> list[list[Completion]]:
        """K completions of each prompt from ``model`` as its weights are now, ``[prompt][sample]``, seeded."""
        ...

    def push(self, model: Any, weights: Iterable[tuple[str, Tensor]] | None = None) -> None:
        """Load ``model``'s weights, or ``weights`` gathered by the trainer (FSDP's), for the draws that follow."""
        ...

    def close(self) -> None:
        """Free what the engine holds (its cache, its copy of the weights); sampling again starts it afresh."""
        ...


class HFEngine:
    """Hugging Face ``generate`` on the model itself: nothing to start, nothing to sync, no log-probs returned
    (the trainer's model is the sampler, so there is no gap to measure)."""

    name = "hf"

    def sample(
        self,
        model: Any,
        prompts: Sequence[Sequence[int]],
        k: int,
        sampling: Sampling,
        stop_id: int,
        pad_id: int,
        seed: int = 0,
        batch_size: int = 16,
        synced: bool = False,
        description: str | None = None,
    ) -> list[list[Completion]]:
        if k == 1 and not synced:
            drawn = sample_completions(model, prompts, sampling, stop_id, pad_id, seed, batch_size, description)
            return [[c] for c in drawn]
        return sample_groups(model, prompts, k, sampling, stop_id, pad_id, seed, batch_size, synced)

    def push(self, model: Any, weights: Iterable[tuple[str, Tensor]] | None = None) -> None:
        """Nothing to load: the model being trained is the sampler."""

    def close(self) -> None:
        pass


def check_engine_installed(name: str) -> None:
    """Refuse an engine whose package is missing, in one line, before any model loads (a broken install is
    caught when the engine starts)."""
    if name == "vllm" and not _importable("vllm"):
        from hhalign.models.vllm_engine import INSTALL

        raise ConfigError(f"--model.rollout_engine vllm: vLLM is not installed; {INSTALL}")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules: import would fail
        return False


def open_engine(name: str, options: EngineOptions | None = None) -> RolloutEngine:
    """The named engine, not yet started (vLLM starts at its first draw, from the model it is handed)."""
    if name == "hf":
        return HFEngine()
    if name == "vllm":
        from hhalign.models.vllm_engine import VLLMEngine

        return VLLMEngine(options or EngineOptions())
    raise ValueError(f"unknown rollout engine {name!r}; choose one of {', '.join(ENGINES)}")
