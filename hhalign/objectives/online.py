"""The base of the online objectives: each training step is one rollout. It samples completions of its prompts
from the policy, scores them with the reward, and takes ``num_iterations × num_minibatches`` optimizer steps on
them (Lightning's manual optimization), each clipped to ``max_grad_norm``, the learning rate scheduled per
optimizer step. ``global_step`` counts optimizer steps, as Lightning and TRL count them; the logs hold one row
per rollout, at its last optimizer step. A checkpoint falls between rollouts, so it holds no samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from torch import Tensor

from hhalign.data.batches import GroupBatch, PromptBatch
from hhalign.errors import ConfigError
from hhalign.losses.engine_mismatch import engine_gap, to_width, truncated_importance_weights
from hhalign.objectives.outputs import StepOutputs
from hhalign.objectives.rollouts import Prepared, Rollout, minibatch_rows, select_prepared
from hhalign.objectives.sampling import SamplingModule
from hhalign.training.sharding import clip_global_norm, is_fsdp, sum_over_processes

Forwards = dict[str, Tensor]
"""What the trained models give on a batch of samples: ``logps`` and ``mask`` ``(N, T)``, and for PPO ``values``."""
Metrics = dict[str, tuple[Tensor, Tensor | None]]
Pass = tuple[Rollout, Prepared, Forwards]
"""One forward pass of an optimizer step: its share of the rollout, what was prepared for it, the models on it."""


class OnlineModule(SamplingModule):
    """A policy trained on its own samples, scored by a reward, kept near its frozen reference.

    Args (beside ``SamplingModule``'s, ``PolicyModule``'s and ``AlignmentModule``'s):
        num_iterations: Passes over each rollout (TRL's name; PPO's epochs); from the second on, the ratio to the
            sampling policy is clipped.
        num_minibatches: Optimizer steps per pass, each on a share of the rollout's prompts (all K samples of each).
        max_grad_norm: Clip each optimizer step's gradient to this global norm (TRL clips at 1.0); None: never.
            (Lightning's ``--trainer.gradient_clip_val`` does not apply: an online step steps by hand.)
        micro_batch_size: Prompts (with their K samples) per forward and backward pass: an optimizer step sums
            the gradients of its minibatch's passes, the rows of like length together, so its memory is that
            of ``micro_batch_size`` prompts and its gradient the whole minibatch's (OpenRLHF's
            ``micro_train_batch_size``). None: the whole minibatch in one pass.
        importance_sampling_cap: With an engine that reports its log-probs (``rollout_engine vllm``), weight each
            token's policy loss by ``min(π_trainer/π_engine, cap)`` (truncated importance sampling; per completion
            for ``loss_type sequence``), correcting for the engine's slightly different numbers. None: no weights;
            the gap is logged either way (``engine_logp_gap``, ``engine_kl``).
    """

    logps_at_sampling_temperature = True
    """Whether ``forwards`` gives log-probs at the sampling temperature (online DPO's are the model's own)."""

    def __init__(
        self,
        model_name_or_path: str,
        ref_model_name_or_path: str | None = None,
        num_iterations: PositiveInt = 1,  # type: ignore[assignment]
        num_minibatches: PositiveInt = 1,  # type: ignore[assignment]
        max_grad_norm: PositiveFloat | None = 1.0,
        micro_batch_size: PositiveInt | None = None,
        importance_sampling_cap: PositiveFloat | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name_or_path, ref_model_name_or_path, **kwargs)
        self.automatic_optimization = False  # a step is a rollout and the optimizer steps taken on it
        self._step_tokens: Tensor | None = None  # a step's real tokens per process, while it takes its passes
        self._row_lengths = torch.zeros(0)  # each prompt's row length in the current rollout

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Under FSDP the backward must follow the wrapped forward's end (the root unit's weights are gathered for
        # it and its backward hooks set at its end), so a rollout's one pass goes back to Lightning to step on
        self.automatic_optimization = is_fsdp(self.trainer)
        max_steps, updates = self.trainer.max_steps, self.updates_per_rollout
        if stage == "fit" and max_steps > 0 and max_steps % updates:
            whole = max_steps + updates - max_steps % updates
            raise ConfigError(
                f"--trainer.max_steps {max_steps} counts optimizer steps, and each rollout takes {updates} "
                f"(num_iterations × num_minibatches); set a multiple of {updates}, e.g. {whole}"
            )

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # Lightning warns that a checkpoint of a manually optimized module holds the weights after the step's
        # optimizer steps: for one rollout per step that is exactly the state a resume continues from
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

    @classmethod
    def trainer_refusal(cls, trainer: Any) -> str | None:
        """Trainer options an online step cannot honour (it steps the optimizer by hand), asked before anything
        loads; Lightning would refuse them later in its own words."""
        if (accumulate := trainer.get("accumulate_grad_batches") or 1) != 1:
            return (
                f"--trainer.accumulate_grad_batches {accumulate}: an online step is one rollout and the optimizer "
                "steps taken on it; for a larger step sample more prompts (--data.batch_size), for several steps "
                "on one rollout set --model.num_minibatches"
            )
        if trainer.get("gradient_clip_val"):
            return (
                f"--trainer.gradient_clip_val {trainer.get('gradient_clip_val')}: the online objectives clip each "
                "optimizer step themselves; set --model.max_grad_norm instead"
            )
        return None

    @classmethod
    def sharding_refusal(cls, init_args: dict[str, Any], stage: str = "fit") -> str | None:
        """Under FSDP the weights outside the wrapped layers are gathered once per training step (for its one
        forward and backward) and released by the backward; a second pass in the step would read them sharded."""
        passes = {name: init_args.get(name) for name in ("num_iterations", "num_minibatches", "micro_batch_size")}
        several = {name: value for name, value in passes.items() if value not in (None, 1)}
        if stage != "fit" or not several:
            return super().sharding_refusal(init_args, stage)
        name, value = next(iter(several.items()))
        return (
            f"--model.{name} {value}: under FSDP an online step is one forward and backward pass over its rollout; "
            "leave num_iterations and num_minibatches at 1 and micro_batch_size unset, or use --trainer.strategy ddp"
        )

    @property
    def updates_per_rollout(self) -> int:
        return self.hparams.num_iterations * self.hparams.num_minibatches

    def scheduled_steps(self) -> int:
        rollouts = self.trainer.estimated_stepping_batches
        steps = rollouts * self.updates_per_rollout
        return int(min(steps, self.trainer.max_steps) if self.trainer.max_steps > 0 else steps)

    # the steps ---------------------------------------------------------------------------------------------
    def forwards(self, batch: GroupBatch) -> Forwards:
        """The trained models over a batch of samples (with grad where enabled): the policy's log-probs at the
        sampling temperature, and the mask of real completion tokens."""
        logps, mask = self.token_logps(self.trainable_module(), batch, self.hparams.temperature)
        return {"logps": logps, "mask": mask}

    def prepare(self, rollout: Rollout, sampled: Forwards) -> tuple[Prepared, Metrics]:
        """What stays fixed over a rollout's optimizer steps, from the models as they sampled (``sampled``,
        detached), and the rollout's own metrics."""
        raise NotImplementedError

    def update_outputs(self, rollout: Rollout, prepared: Prepared, current: Forwards) -> StepOutputs:
        """The loss of one optimizer step on (a minibatch of) the rollout, and what it reports."""
        raise NotImplementedError

    def micro_share(self, part: Rollout, step: Rollout) -> float:
        """The weight of a pass's loss in its optimizer step's, when the step takes several (``micro_batch_size``):
        the loss is a mean over completions unless the objective says otherwise."""
        return part.shape[0] / step.shape[0]

    def training_step(self, batch: PromptBatch, batch_idx: int) -> Tensor | None:
        hp, step = self.hparams, self.trainer.global_step
        if len(batch.prompts) < hp.num_minibatches:
            raise ConfigError(
                f"--model.num_minibatches {hp.num_minibatches}: this rollout has {len(batch.prompts)} prompts; "
                "sample at least one prompt per minibatch (--data.batch_size)"
            )
        seed = self.draw_seed(step)
        rollout = self.rollout(batch.prompts, hp.num_generations, seed, batch.columns)
        self.last_rollout_seconds = dict(rollout.seconds)
        self._log_samples(rollout, step)
        outputs = []
        one_pass = hp.micro_batch_size is None or hp.micro_batch_size >= rollout.shape[0]
        if self.updates_per_rollout == 1 and one_pass:  # the sampling policy is the trained one: one forward
            current = self.forwards(rollout.batch)
            with torch.no_grad():
                prepared, metrics = self._prepared(rollout, {k: v.detach() for k, v in current.items()})
            outputs.append(self._update([(rollout, prepared, current)], rollout))
        else:
            with torch.no_grad():
                prepared, metrics = self._prepared(rollout, self._sampled_forwards(rollout))
            for rows in minibatch_rows(rollout.shape[0], hp.num_iterations, hp.num_minibatches, seed):
                outputs.append(self._update(self._passes(rollout, prepared, rows), self._select(rollout, rows)))
        for name in ("sampling", "scoring"):
            metrics[f"{name}_seconds"] = (torch.tensor([rollout.seconds[name]]), None)
        metrics.update(self._joined(outputs))  # over the rollout's optimizer steps
        if self.automatic_optimization:  # one pass: Lightning takes the backward and the step
            finite = self._finite_or_skip(outputs[-1].loss, "loss")
            self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, on_epoch=False)
            if finite:
                self.log_training_metrics(StepOutputs(outputs[-1].loss, metrics, rollout.shape[0]))
            return outputs[-1].loss if finite else None
        self.log_training_metrics(StepOutputs(outputs[-1].loss, metrics, rollout.shape[0]))
        self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, on_epoch=False)
        # the logs' x axis is optimizer steps too: this rollout's row at its last one (Lightning counts batches)
        self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.trainer.global_step - 1
        return None

    def _prepared(self, rollout: Rollout, sampled: Forwards) -> tuple[Prepared, Metrics]:
        """The objective's ``prepare``, and where an engine sampled with log-probs of its own, their gap to the
        trainer's and (``importance_sampling_cap``) the weights that correct for it (``engine_weights``)."""
        prepared, metrics = self.prepare(rollout, sampled)
        if rollout.engine_logps is None:
            return prepared, metrics
        logps, mask = sampled["logps"], sampled["mask"]
        if not self.logps_at_sampling_temperature:  # the gap is to the distribution the engine sampled from
            with torch.no_grad():
                logps, mask = self.token_logps(self.trainable_module(), rollout.batch, self.hparams.temperature)
        engine = to_width(rollout.engine_logps, logps.shape[1]).to(logps)
        gap = engine_gap(logps, engine, mask)
        metrics["engine_logp_gap"], metrics["engine_kl"] = (gap["logp_gap"][None], None), (gap["kl"], None)
        if (cap := self.hparams.importance_sampling_cap) is not None:
            level = "sequence" if self.hparams.get("loss_type") == "sequence" else "token"
            prepared["engine_weights"] = truncated_importance_weights(logps, engine, mask, cap, level)
        return prepared, metrics

    def _micro_parts(self, rows: Tensor) -> list[Tensor]:
        """``rows`` in passes of ``micro_batch_size`` prompts, by length, so that a pass pads little."""
        size = self.hparams.micro_batch_size
        if size is None or size >= len(rows):
            return [rows]
        return list(rows[torch.argsort(self._row_lengths[rows], stable=True)].split(size))

    def _select(self, rollout: Rollout, rows: Tensor) -> Rollout:
        return rollout.select(rows, self.tokenizer.pad_token_id)

    def _sampled_forwards(self, rollout: Rollout) -> Forwards:
        """The trained models over the whole rollout, no gradient, a pass of ``micro_batch_size`` prompts at a
        time; per-token tensors padded to the rollout's widest completion, rows in the rollout's order."""
        lengths = rollout.batch.completion_lengths
        self._row_lengths = (rollout.batch.prompt_lengths + lengths.sum(1)).cpu()
        parts = self._micro_parts(torch.arange(rollout.shape[0]))
        if len(parts) == 1:
            return self.forwards(rollout.batch)
        k, width = self.hparams.num_generations, int(lengths.max())
        pieces = [(part, self.forwards(self._select(rollout, part).batch)) for part in parts]
        rows = (torch.cat([part for part, _ in pieces])[:, None] * k + torch.arange(k)).flatten()
        out = {}
        for name in pieces[0][1]:
            values = [f[name] for _, f in pieces]
            if values[0].dim() == 2:
                values = [torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in values]
            stacked = torch.cat(values)
            out[name] = torch.empty_like(stacked).index_copy_(0, rows.to(stacked.device), stacked)
        return out

    def _passes(self, rollout: Rollout, prepared: Prepared, rows: Tensor) -> Iterator[Pass]:
        """The forward passes of one optimizer step on ``rows`` of the rollout (with grad), lazily."""
        k = self.hparams.num_generations
        for part_rows in self._micro_parts(rows):
            part = self._select(rollout, part_rows)
            current = self.forwards(part.batch)
            yield part, select_prepared(prepared, part_rows, k, current["mask"].shape[1]), current

    def _update(self, passes: Iterable[Pass], step: Rollout) -> StepOutputs:
        """One optimizer step on the passes' summed losses, each weighted by its share of the step: backward
        pass by pass, the gradient's norm checked and clipped (in ``on_before_optimizer_step``), the step and
        the learning-rate schedule's. A non-finite loss stops the run or, with ``on_nonfinite skip``, steps on
        no gradient (every process agrees which)."""
        if self.automatic_optimization:  # under FSDP: the one pass, stepped by Lightning
            ((part, prepared, current),) = passes
            return self.update_outputs(part, prepared, current)
        optimizer, schedule = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad(set_to_none=True)
        self._step_tokens = self.tokens_per_process(step.batch.completion_lengths)
        outputs, finite = [], True
        for part, prepared, current in passes:
            out = self.update_outputs(part, prepared, current)
            weight = self.micro_share(part, step) if part is not step else 1.0
            outputs.append((out, weight))
            if finite and self._finite_or_skip(out.loss, "loss"):
                self.manual_backward(out.loss * weight)
            elif finite:
                finite = False
                optimizer.zero_grad(set_to_none=True)
        self._step_tokens = None
        optimizer.step()
        schedule.step()  # type: ignore[union-attr]
        if len(outputs) == 1:
            return outputs[0][0]
        loss = sum(out.loss.detach() * weight for out, weight in outputs)
        metrics = self._joined([out for out, _ in outputs])
        metrics["loss"] = (loss[None], None)
        return StepOutputs(loss, metrics, step.shape[0])

    @staticmethod
    def _joined(outputs: list[StepOutputs]) -> Metrics:
        """Each metric's values over several passes or steps (those that report it)."""
        metrics = {}
        for name in dict.fromkeys(name for out in outputs for name in out.metrics):
            values = [out.metrics[name][0].detach().float().flatten() for out in outputs if name in out.metrics]
            metrics[name] = (torch.cat(values), None)
        return metrics

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)  # the norm before clipping, logged; a non-finite one dropped
        if self.hparams.max_grad_norm is not None:
            clip_global_norm(self.trainable_module().parameters(), self.hparams.max_grad_norm, self._trainer)

    def tokens_per_process(self, mask: Tensor) -> Tensor:
        """The real tokens of every process's share of this optimizer step, over the process count (in a step
        of several passes, the step's, so that their losses add up to the one-pass loss)."""
        if self._step_tokens is not None:
            return self._step_tokens
        total, processes = sum_over_processes(mask.float().sum())
        return total / processes

    def summed(self, value: Tensor) -> Tensor:
        """``value`` summed over every process (the global batch's statistics)."""
        return sum_over_processes(value)[0]
