"""What every online objective shares but its training step: the policy, its reference and the reward; drawing
and scoring samples (a ``Rollout``); per-token log-probs of them; the metrics every online step reports; and
validation by sampling.

Sampling is seeded by the step (and the rank, and the validation batch), so a resumed run draws exactly the
samples the uninterrupted one drew: the only state it needs is the global step, which the checkpoint holds.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor

from hhalign.data.batches import GroupBatch, PromptBatch, collate_groups
from hhalign.errors import ConfigError
from hhalign.losses.logps import tokens_by_sequence
from hhalign.losses.policy_gradient import k1, k3
from hhalign.models.engines import EngineName, EngineOptions, RolloutEngine, check_engine_installed, open_engine
from hhalign.models.forward import model_inputs, response_states
from hhalign.models.generation import Sampling
from hhalign.models.loading import load_tokenizer
from hhalign.models.vllm_engine import lora_scalings, weights_from_state
from hhalign.objectives.outputs import StepOutputs
from hhalign.objectives.reference import PolicyModule
from hhalign.objectives.rollouts import Rollout, engine_token_logps
from hhalign.objectives.sample_log import sample_rows, write_samples
from hhalign.rewards.functions import load_reward_function
from hhalign.rewards.model import RewardModel, check_same_tokenizer
from hhalign.rewards.terms import Rewards
from hhalign.training.sharding import full_state_dict, is_fsdp

VALIDATION_SEED_OFFSET = 1 << 40
"""Validation draws from seeds of their own, the same at every validation, so its curve compares like with like."""


class SamplingModule(PolicyModule):
    """A policy that samples completions of its prompts and scores them: the models, the reward, the draws, the
    log-probs and metrics every online objective reads, and validation by sampling.

    Args (beside ``PolicyModule``'s and ``AlignmentModule``'s):
        reward_model: A frozen reward model scoring each completion at its EOS: an hhalign reward-model export
            or ``.ckpt``, or any ``AutoModelForSequenceClassification`` folder with one output; it must share
            the policy's tokenizer.
        reward_functions: Rule-based rewards, each ``module:function(prompts, completions) -> rewards`` over text.
        reward_weights: One weight per reward term, the reward model's first (default all 1).
        missing_eos_penalty: Subtracted from the reward of a completion that hit ``max_completion_length``
            without its EOS.
        num_generations: Completions sampled per prompt (K).
        max_completion_length: New tokens at most per completion.
        temperature: Sampling temperature; the log-probs are of the distribution sampled from.
        top_p: Nucleus sampling (1: the model's own distribution).
        beta: Weight of the KL to the reference; 0 loads no reference.
        generation_batch_size: Sequences generated at once.
        sampling_seed: Seeds every draw, with the step, the rank and (in validation) the batch.
        log_samples_every_n_steps: Append a few prompts' completions and rewards to ``samples.jsonl`` in the run
            directory this often, in optimizer steps (0: never).
        normalize_reward: Put the reward model's scores on its validation scale (``reward_stats`` of its export:
            mean 0, std 1), so that β and clipping mean the same for any reward model.
        reward_clip: Bound each completion's total reward to ``[−reward_clip, reward_clip]``.
        rollout_engine: What samples: ``hf`` (Hugging Face ``generate`` on the policy itself) or ``vllm`` (vLLM in
            this process, the policy's weights pushed into it before every draw; ``pip install 'hhalign[vllm]'``).
        engine_kv_cache_gib: vLLM's key/value cache on a CPU, in GiB.
        engine_gpu_memory_share: vLLM's share of a GPU's memory (weights and cache); training keeps the rest.
        engine_compile: Let vLLM compile its model (torch.compile, CUDA graphs on a GPU) instead of running eagerly.
    """

    examples = "prompts"
    monitor = ("val/reward", "max")
    plot_panels = ("loss", "reward", "kl_k1", "completion_length", "eos_share", "entropy")
    progress_metrics = ("loss", "reward")
    training_metrics: tuple[str, ...] = ()
    """What the objective's loss adds to the shared online metrics."""

    def __init__(
        self,
        model_name_or_path: str,
        ref_model_name_or_path: str | None = None,
        reward_model: str | None = None,
        reward_functions: list[str] | None = None,
        reward_weights: list[float] | None = None,
        missing_eos_penalty: float | None = None,
        num_generations: PositiveInt = 4,  # type: ignore[assignment]
        max_completion_length: PositiveInt = 64,  # type: ignore[assignment]
        temperature: PositiveFloat = 1.0,  # type: ignore[assignment]
        top_p: PositiveFloat = 1.0,  # type: ignore[assignment]
        beta: NonNegativeFloat = 0.05,  # type: ignore[assignment]
        generation_batch_size: PositiveInt = 32,  # type: ignore[assignment]
        sampling_seed: int = 0,
        log_samples_every_n_steps: NonNegativeInt = 10,  # type: ignore[assignment]
        normalize_reward: bool = True,
        reward_clip: PositiveFloat | None = None,
        rollout_engine: EngineName = "hf",
        engine_kv_cache_gib: PositiveFloat = 1.0,  # type: ignore[assignment]
        engine_gpu_memory_share: PositiveFloat = 0.3,  # type: ignore[assignment]
        engine_compile: bool = False,
        **kwargs: Any,
    ) -> None:
        self.reward_terms = [load_reward_function(name) for name in reward_functions or []]  # typos fail here
        if reward_model is None and not self.reward_terms:
            Rewards(None)  # the one message for a missing reward
        n_terms = (reward_model is not None) + len(self.reward_terms)
        if reward_weights is not None and len(reward_weights) != n_terms:
            raise ConfigError(
                f"--model.reward_weights has {len(reward_weights)} weights for {n_terms} reward terms; give one "
                "weight per term, the reward model's first"
            )
        self.check_options(num_generations)
        check_engine_installed(rollout_engine)
        super().__init__(model_name_or_path, ref_model_name_or_path, **kwargs)
        self.rewards: Rewards | None = None  # loaded with the models, kept out of the module tree and checkpoints
        self.tokenizer: Any = None
        self._engine: RolloutEngine | None = None  # started at the first draw, closed at teardown
        self._step_started = 0.0
        self.last_rollout_seconds: dict[str, float] = {}
        """Sampling and scoring seconds of the last training step's rollout (read by the benchmark too)."""

    def check_options(self, num_generations: int) -> None:
        """Refuse settings the objective cannot use, before any model loads."""

    def metric_names(self) -> tuple[str, ...]:
        n = ["model"] if self.hparams.get("reward_model") else []
        terms = tuple(f"reward_{name}" for name in n + [f.name.rpartition(":")[2] for f in self.reward_terms])
        shared = ("reward", "reward_std", *terms, "kl_k1", "kl_k3", "entropy", "completion_length", "eos_share")
        engine = ("engine_logp_gap", "engine_kl") if self.hparams.rollout_engine != "hf" else ()
        return ("loss", *shared, "sampling_seconds", "scoring_seconds", *engine, *self.training_metrics)

    def needs_reference(self) -> bool:
        return self.hparams.beta > 0

    def count_flops(self, batch: Any) -> None:
        """Not counted: a step's time is mostly sampling, which the 6·N rule does not describe."""

    @property
    def sampling(self) -> Sampling:
        hp = self.hparams
        return Sampling(hp.max_completion_length, hp.temperature, hp.top_p)

    @property
    def engine(self) -> RolloutEngine:
        if self._engine is None:
            hp = self.hparams
            options = EngineOptions(
                hp.engine_kv_cache_gib, hp.engine_gpu_memory_share, enforce_eager=not hp.engine_compile
            )
            self._engine = open_engine(hp.rollout_engine, options)
        return self._engine

    def push_gathered_weights(self) -> None:
        """Under FSDP the engine's weights are gathered on every rank here, before a step's or a validation's
        sharded forward, inside which a gather cannot run; elsewhere each draw pushes the weights itself."""
        if self.hparams.rollout_engine != "hf" and is_fsdp(self._trainer):
            policy = self.trainable_module()
            state = full_state_dict(self.trainer, f"{self.trained_attribute}.", every_rank=True)
            self.engine.push(policy, weights_from_state(state or {}, lora_scalings(policy)))

    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        super().configure_model()
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.model_name_or_path, hp.trust_remote_code)
        model = None
        if hp.reward_model is not None:
            check_same_tokenizer(hp.reward_model, self.tokenizer)
            model = RewardModel.load(hp.reward_model, **self.load_kwargs())
        self.rewards = Rewards(
            model, self.reward_terms, hp.reward_weights, hp.missing_eos_penalty, hp.normalize_reward, hp.reward_clip
        )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._rewards_to_device()

    def on_validation_start(self) -> None:
        self._rewards_to_device()

    def _rewards_to_device(self) -> None:
        if self.rewards is not None and self.rewards.model is not None:
            self.rewards.model.to(self.device)

    # the draws ---------------------------------------------------------------------------------------------
    def draw_seed(self, index: int, validation: bool = False) -> int:
        """The seed of one draw: the training step (or validation batch), the rank and ``sampling_seed``."""
        rank = self.global_rank if self._trainer is not None else 0
        base = self.hparams.sampling_seed * 1_000_003 + (VALIDATION_SEED_OFFSET if validation else 0)
        return (base + index) * 1009 + rank

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def rollout(
        self, prompts: list[list[int]], k: int, seed: int, columns: list[dict[str, Any]] | None = None
    ) -> Rollout:
        """Sample K completions of each prompt from the policy and score them (reward functions may read each
        prompt's record ``columns``)."""
        started = time.perf_counter()
        tokenizer, policy = self.tokenizer, self.trainable_module()
        stop_id = tokenizer.eos_token_id
        groups = self.engine.sample(
            policy, prompts, k, self.sampling, stop_id, tokenizer.pad_token_id, seed,
            self.hparams.generation_batch_size, synced=is_fsdp(self._trainer),
        )  # fmt: skip
        sampled = time.perf_counter()
        assert self.rewards is not None
        rewards, terms = self.rewards.score(prompts, groups, stop_id, self.decode, columns)
        scored = time.perf_counter()
        batch = collate_groups(prompts, [[c.tokens for c in g] for g in groups], tokenizer.pad_token_id)
        finished = torch.tensor([[c.finished for c in g] for g in groups])
        seconds = {"sampling": sampled - started, "scoring": scored - sampled}
        device = self.device
        engine_logps = engine_token_logps(groups)
        engine_logps = None if engine_logps is None else engine_logps.to(device)
        return Rollout(
            prompts, groups, batch.to(device), rewards.to(device), terms, finished.to(device), seconds, engine_logps
        )

    def token_logps(self, model: Any, batch: GroupBatch, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """Per-token log-probs ``(N, T)`` of every completion of a group batch, and the ``(N, T)`` mask of real
        tokens; all K completions of a prompt in one row behind one copy of it."""
        states = response_states(model, model_inputs(model, batch, self.hparams.shared_prompt))
        values = states.token_logps(temperature)
        return tokens_by_sequence(values, states.scored.sequences, states.scored.n_sequences)

    def reference_token_logps(self, batch: GroupBatch, temperature: float = 1.0) -> Tensor | None:
        with torch.no_grad(), self.reference() as ref:
            return None if ref is None else self.token_logps(ref, batch, temperature)[0]

    def shared_metrics(
        self, rollout: Rollout, logps: Tensor, ref_logps: Tensor | None, mask: Tensor
    ) -> dict[str, tuple[Tensor, Tensor | None]]:
        """What every online step and validation reports: reward (each term), KL (k1 and k3, summed over a
        completion), the sampled tokens' entropy (mean −log π), lengths, and the share that ended with EOS."""
        logps = logps.detach()
        metrics: dict[str, tuple[Tensor, Tensor | None]] = {
            "reward": (rollout.rewards.flatten(), None),
            "reward_std": (rollout.rewards.flatten().std(correction=0)[None], None),
            "entropy": (-logps[mask], None),
            "completion_length": (mask.sum(1).float(), None),
            "eos_share": (rollout.finished.flatten().float(), None),
        }
        for name, values in rollout.terms.items():
            metrics[f"reward_{name}"] = (values.flatten().to(logps.device), None)
        if ref_logps is not None:
            real = mask.float()
            metrics["kl_k1"] = ((k1(logps, ref_logps) * real).sum(1), None)
            metrics["kl_k3"] = ((k3(logps, ref_logps) * real).sum(1), None)
        return metrics

    def step_outputs(self, batch: PromptBatch) -> StepOutputs:
        """Validation and test (a training step is the subclass's own)."""
        return self.evaluation_outputs(batch)

    def evaluation_outputs(self, batch: PromptBatch) -> StepOutputs:
        """One sample of each held-out prompt, at the training temperature, from seeds that repeat at every
        validation: its reward, KL to the reference, entropy and length; no gradient, no loss."""
        index = getattr(self, "_validation_batch", 0)
        self._validation_batch = index + 1
        rollout = self.rollout(batch.prompts, 1, self.draw_seed(index, validation=True), batch.columns)
        with torch.no_grad():
            logps, mask = self.token_logps(self.trainable_module(), rollout.batch, self.hparams.temperature)
        ref_logps = self.reference_token_logps(rollout.batch, self.hparams.temperature)
        metrics = self.shared_metrics(rollout, logps, ref_logps, mask)
        return StepOutputs(-rollout.rewards.mean(), metrics, len(batch.prompts))

    def on_validation_epoch_start(self) -> None:
        self._validation_batch = 0
        self.push_gathered_weights()

    def on_test_epoch_start(self) -> None:
        self._validation_batch = 0
        self.push_gathered_weights()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()
        self.push_gathered_weights()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        seconds = time.perf_counter() - self._step_started
        if seconds > 0:
            sampling = self.last_rollout_seconds.get("sampling", 0.0)
            self.log("train/sampling_share", sampling / seconds, on_step=True, on_epoch=False)

    def _log_samples(self, rollout: Rollout, step: int) -> None:
        every, trainer = self.hparams.log_samples_every_n_steps, self._trainer
        if every and not step % every and trainer is not None:
            write_samples(trainer, sample_rows(rollout, self.decode, step))
