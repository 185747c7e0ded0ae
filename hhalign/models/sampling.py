"""How completions are drawn (``Sampling``) and by which engine, apart from the drawing: the tools' command lines
read its defaults without importing torch or transformers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from transformers import GenerationConfig


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
        from transformers import GenerationConfig

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


EngineName = Literal["hf", "vllm"]
ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class EngineOptions:
    """How a colocated inference engine may use the machine.

    Args:
        kv_cache_gib: On a CPU, the memory the engine's key/value cache takes (GiB): it holds the tokens of the
            sequences decoded at once (SmolLM2-135M: 46 KB a token in fp32, so 1 GiB holds about 23,000).
        gpu_memory_share: On a GPU, the share of its memory the engine may take, weights and cache; the trainer
            keeps the rest (TRL's colocated default is 0.3).
        max_model_len: Prompt and completion tokens at most (default: the model's context length).
        enforce_eager: Run the engine's model eagerly; off, vLLM compiles it first (slower to start).
    """

    kv_cache_gib: float = 1.0
    gpu_memory_share: float = 0.3
    max_model_len: int | None = None
    enforce_eager: bool = True
