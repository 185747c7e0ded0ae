"""What every objective shares: the step skeleton, metrics per stage, divergence handling, checkpoint
fingerprints and optimizer wiring; and the class attributes through which an objective describes itself."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric
from transformers import get_scheduler

from hhalign.checkpoint_files import FINGERPRINT_KEY, TRAINED_KEY
from hhalign.errors import ConfigError, UserError
from hhalign.models.forward import enable_gradient_checkpointing
from hhalign.models.loading import with_lora
from hhalign.objectives.outputs import LENGTH_METRICS, PAIR_METRICS, PairOutputs, StepOutputs, length_metrics
from hhalign.training.callbacks import training_flops
from hhalign.training.checkpointing import check_fingerprints, checkpoint_dir, refuse_resume_from_shards
from hhalign.training.sharding import TRAINED_IN_HALF, clip_sharded, gradient_norm, is_fsdp, refuse_unsupported

STAGES = ("train", "val", "test")
SKIPPED_KEY = "hhalign_skipped_batches"
__all__ = ["AlignmentModule"]
ModelDtype = Literal["float32", "bfloat16", "float16", "auto"]


class DivergenceError(UserError):
    """Training produced a non-finite loss or gradient."""


class AlignmentModule(L.LightningModule):
    """Base of the preference modules: subclasses build models and turn a batch into ``PairOutputs``.

    Args:
        model_name_or_path: Hugging Face model name or local folder; also the tokenizer (linked by the CLI).
        optimizer: Built over the trainable parameters only.
        lr_schedule: Shape after the linear warmup, stepped every optimizer step.
        warmup_steps: Linear warmup from 0 to the optimizer's learning rate.
        model_dtype: Weight dtype at load; keep float32 under ``bf16-mixed`` so master weights stay exact.
        attn_implementation: Passed to ``from_pretrained`` (``sdpa``, ``eager``, ``flash_attention_2``).
        trust_remote_code: Run code shipped with a hub model; off unless you trust its authors.
        disable_dropout: Zero every dropout probability in the model config.
        val_batches_during_fit: Bound validation while training to this many batches (the last covers all).
        on_nonfinite: On a NaN or infinite loss or gradient, ``stop`` naming the step and the last good
            checkpoint, or ``skip`` the batch and count it in ``train/skipped_batches``.
        shared_prompt: Run packed batches as one row per pair, the prompt computed once, where the attention
            takes a 4D mask (``sdpa``, ``eager``); else they are unpacked. Same numbers either way.
        gradient_checkpointing: Recompute activations in backward: a third more compute, far less memory.
        lora_rank: Train LoRA adapters of this rank (``peft``) instead of every weight; 0 trains the full
            model. With DPO the reference is then the same model with its adapters switched off.
        lora_alpha: LoRA scale numerator (the update is scaled by ``lora_alpha / lora_rank``).
        lora_target_modules: Modules to adapt: a list of module names, ``all-linear``, or None for peft's
            default for the architecture (the attention's query and value projections for Llama and Qwen).
    """

    examples: str = "pairs"
    """The kind of example it reads (``hhalign.data.examples.EXAMPLE_KINDS``); the CLI gives it to the data."""
    trained_attribute: str = "model"
    """The attribute holding the model it trains: checkpoints keep it under this prefix, export writes it."""
    head: str = "causal_lm"
    """That model's head: ``causal_lm``, or ``reward`` for a scalar head."""
    monitor: tuple[str, str] = ("val/reward_accuracy", "max")
    """The validation metric, and its direction, that picks the best checkpoint (``BestCheckpoint``)."""
    plot_panels: tuple[str, ...] = ("loss", "reward_accuracy", "reward_margin")
    """The metrics ``hhalign plot`` draws, a panel each."""
    extra_metrics: tuple[str, ...] = ()
    progress_metrics: tuple[str, ...] = ("loss", "reward_accuracy")

    def __init__(
        self,
        model_name_or_path: str,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: Literal["cosine", "linear", "constant"] = "cosine",
        warmup_steps: NonNegativeInt = 0,  # type: ignore[assignment]
        model_dtype: ModelDtype = "float32",
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        disable_dropout: bool = True,
        val_batches_during_fit: PositiveInt | None = None,
        on_nonfinite: Literal["stop", "skip"] = "stop",
        shared_prompt: bool = True,
        gradient_checkpointing: bool = False,
        lora_rank: NonNegativeInt = 0,  # type: ignore[assignment]
        lora_alpha: float = 16.0,
        lora_target_modules: str | list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        self.skipped_batches = 0
        for stage in STAGES:  # one metric object per stage, as torchmetrics expects for correct syncing
            names = self.metric_names() + (LENGTH_METRICS if stage != "train" and self.examples == "pairs" else ())
            sync = {"dist_sync_on_step": stage == "train"}  # a step's metrics are the global batch's
            setattr(self, f"{stage}_metrics", nn.ModuleDict({n: MeanMetric(**sync) for n in names}))
        # how many pairs (or dialogues) an evaluation saw: the n behind its accuracy, for its error bars
        self.eval_examples = nn.ModuleDict({stage: SumMetric() for stage in STAGES if stage != "train"})

    def metric_names(self) -> tuple[str, ...]:
        return PAIR_METRICS + self.extra_metrics

    @classmethod
    def sharding_refusal(cls, init_args: dict[str, Any], stage: str = "fit") -> str | None:
        """Why this objective with these arguments cannot run ``stage`` under FSDP, or None (the CLI asks first)."""
        return None

    def stage_metrics(self, stage: str) -> nn.ModuleDict:
        return getattr(self, f"{stage}_metrics")

    def load_kwargs(self) -> dict[str, Any]:
        hp = self.hparams
        dtype = hp.model_dtype if hp.model_dtype == "auto" else getattr(torch, hp.model_dtype)
        return {
            "disable_dropout": hp.disable_dropout,
            "dtype": dtype,
            "attn_implementation": hp.attn_implementation,
            "trust_remote_code": hp.trust_remote_code,
        }

    def prepare_trainable(self, model: nn.Module) -> nn.Module:
        """A freshly loaded trained model in train mode, with gradient checkpointing and LoRA as configured."""
        if self.hparams.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if self.hparams.lora_rank > 0:
            model = with_lora(model, self.hparams.lora_rank, self.hparams.lora_alpha, self.hparams.lora_target_modules)
        return model.train()

    def trainable_module(self) -> nn.Module:
        """The model the optimizer updates, held in ``trained_attribute``."""
        model = getattr(self, self.trained_attribute, None)
        if model is None:
            raise RuntimeError("configure_model() has not run")
        return model

    def pair_outputs(self, batch: Any) -> PairOutputs:  # the pair objectives' own
        raise NotImplementedError

    def step_outputs(self, batch: Any) -> StepOutputs:
        """What a step computes; pair modules derive it from ``pair_outputs``."""
        return self.pair_outputs(batch).step_outputs()

    flops_per_batch: float | None = None  # the last step's, read by ``ThroughputMonitor`` (FLOPs/s, MFU)

    def count_flops(self, batch: Any) -> float | None:
        return training_flops(self.trainable_module(), getattr(self, "ref", None), batch.real_tokens, self.trainer)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        self.flops_per_batch = self.count_flops(batch)
        out = self.step_outputs(batch)
        finite = self._finite_or_skip(out.loss, "loss")
        self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, on_epoch=False)
        if not finite:
            return None  # Lightning then skips backward and the optimizer step on every rank
        self.log_training_metrics(out)
        return out.loss

    def log_training_metrics(self, out: StepOutputs) -> None:
        """A training step's metrics, each the global batch's mean (synced on the step)."""
        for name, (values, weights) in out.metrics.items():
            metric = self.stage_metrics("train")[name]
            metric(values.detach().float(), 1.0 if weights is None else weights)
            self.log(f"train/{name}", metric, on_step=True, on_epoch=False, batch_size=out.batch_size,
                     prog_bar=name in self.progress_metrics)  # fmt: skip

    def _finite_or_skip(self, value: Tensor, what: str) -> bool:
        """Agree across processes whether ``value`` is finite; if not, stop or count a skipped batch."""
        if self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(value).all()), all=True):
            return True
        step = self.trainer.global_step
        if self.hparams.on_nonfinite == "stop":
            last = checkpoint_dir(self.trainer) / "last.ckpt"
            raise DivergenceError(
                f"non-finite {what} at step {step}; last good checkpoint: "
                f"{last if last.exists() else 'none written yet'}. Lower the learning rate or clip gradients "
                "(--trainer.gradient_clip_val) and resume from it, or set --model.on_nonfinite skip"
            )
        self.skipped_batches += 1
        return False

    def _evaluation_step(self, stage: str, batch: Any, batch_idx: int) -> None:
        if stage == "val" and self._bounded_validation() and batch_idx >= self.hparams.val_batches_during_fit:
            return
        out = self.step_outputs(batch)
        if self.examples == "pairs":
            out.metrics.update(length_metrics(out, batch))
        for name, (values, weights) in out.metrics.items():
            metric = self.stage_metrics(stage)[name]
            metric.update(values.detach().float(), 1.0 if weights is None else weights)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, batch_size=out.batch_size,
                     prog_bar=name == self.progress_metrics[-1])  # fmt: skip
        examples = self.eval_examples[stage]
        examples.update(float(out.batch_size))
        self.log(f"{stage}/examples", examples, on_step=False, on_epoch=True, batch_size=out.batch_size)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step("val", batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluation_step("test", batch, batch_idx)

    def _bounded_validation(self) -> bool:
        """True for the sanity check and the periodic validations inside ``fit``, not the last one."""
        trainer = self.trainer
        if self.hparams.val_batches_during_fit is None or trainer.state.fn != "fit":
            return False
        return trainer.sanity_checking or not (trainer.should_stop or self._in_last_epoch_end())

    def _in_last_epoch_end(self) -> bool:
        last_epoch = self.trainer.max_epochs is not None and self.trainer.current_epoch + 1 >= self.trainer.max_epochs
        return last_epoch and self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # should_stop at max_steps makes Lightning validate once more: every run ends with a full validation
        if 0 < self.trainer.max_steps <= self.trainer.global_step:
            self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        for metric in self.stage_metrics("train").values():
            metric.reset()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.trainable_module().parameters() if p.grad is not None]
        norm = gradient_norm(grads, self._trainer)  # before clipping, as the norm that clipping reads
        if norm is None:
            return
        if self._finite_or_skip(norm, "gradient"):
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        else:
            optimizer.zero_grad(set_to_none=True)  # AdamW leaves parameters without a gradient untouched

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: Any = None
    ) -> None:
        """Norm clipping under FSDP by the root module's ``clip_grad_norm_`` (the global norm); else Lightning's."""
        norm_clipping = gradient_clip_val and gradient_clip_algorithm in (None, "norm")
        if norm_clipping and clip_sharded(self.trainer, gradient_clip_val):
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def setup(self, stage: str) -> None:
        refuse_unsupported(self.trainer)
        if is_fsdp(self.trainer) and (refusal := self.sharding_refusal(dict(self.hparams), stage)):
            raise ConfigError(refusal)
        half = self.hparams.model_dtype in ("bfloat16", "float16") or self.trainer.precision in TRAINED_IN_HALF
        if stage == "fit" and half:
            rank_zero_warn(
                f"training half-precision weights (model_dtype {self.hparams.model_dtype}, precision "
                f"{self.trainer.precision}): at alignment learning rates most AdamW updates round to nothing in "
                "bf16 (10 steps at lr 5e-7 changed 0.9% of the weights). Keep model_dtype float32 and use "
                "--trainer.precision bf16-mixed"
            )

    def fingerprints(self) -> dict[str, str]:
        """What a checkpoint must agree with to be resumed: the module type and the training data."""
        prints = {"module": type(self).__name__}
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if getattr(datamodule, "fingerprint", None):
            prints["data"] = datamodule.fingerprint
        return prints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FINGERPRINT_KEY] = self.fingerprints()
        checkpoint[TRAINED_KEY] = {"prefix": f"{self.trained_attribute}.", "head": self.head}
        checkpoint[SKIPPED_KEY] = self.skipped_batches

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        current, resuming = self.fingerprints(), self._trainer is not None and self.trainer.state.fn == "fit"
        # only a resumed fit must see the same data and reference (validate and test score any data), and the
        # optimizer state, which a sharded folder read on one process lacks
        check_fingerprints(checkpoint.get(FINGERPRINT_KEY, {}), current if resuming else {"module": current["module"]})
        if resuming:
            refuse_resume_from_shards(checkpoint)
        self.skipped_batches = checkpoint.get(SKIPPED_KEY, 0)

    def optimizer_parameters(self) -> Any:
        """What the optimizer updates: the trained model's parameters (or parameter groups)."""
        return [p for p in self.trainable_module().parameters() if p.requires_grad]

    def scheduled_steps(self) -> int:
        """The optimizer steps the learning-rate schedule spans."""
        return int(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.optimizer_parameters())
        scheduler = get_scheduler(
            self.hparams.lr_schedule,
            optimizer,
            num_warmup_steps=self.hparams.warmup_steps,
            num_training_steps=self.scheduled_steps(),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
