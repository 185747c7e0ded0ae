"""What training needs to know about sharded strategies: under FSDP each process holds a shard of every weight
and gradient, so norms, clipping and a whole copy of the trained model take collectives that every process joins.

DeepSpeed is refused up front (``refuse_unsupported``): its ZeRO stages hold gradients and, at stage 3, weights
where this code does not look for them (README, Multi-GPU).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import Tensor, nn

from hhalign.checkpoint_files import TrainedWeights
from hhalign.errors import ConfigError, UserError
from hhalign.models.loading import model_from_trained

TRAINED_IN_HALF = ("bf16-true", "16-true", "bf16", "16", "half")
"""Trainer precisions whose master weights are half precision."""


def is_fsdp(trainer: L.Trainer | None) -> bool:
    return trainer is not None and isinstance(trainer.strategy, FSDPStrategy)


def refuse_unsupported(trainer: L.Trainer) -> None:
    """One clear line before anything loads, rather than a failure deep inside a run (the CLI refuses a
    DeepSpeed strategy by name earlier still; this catches one built in code)."""
    if isinstance(trainer.strategy, DeepSpeedStrategy):
        refuse_deepspeed()


def refuse_deepspeed() -> None:
    raise UserError(
        "DeepSpeed is not supported: ZeRO keeps gradients (stage 2) and weights (stage 3) outside the "
        "parameters that hhalign reads for the gradient norm, the LM head and checkpoints. Use "
        "--trainer.strategy fsdp (configs/dpo.yaml shows the settings) or ddp"
    )


def _fsdp_kind(strategy: Any) -> tuple[bool, bool]:
    """(is it FSDP, is it Lightning's own FSDP, which runs on GPUs only) for a strategy as the config gives it: a
    registered name, a ``class_path`` (a namespace or dict), or an instance."""
    if isinstance(strategy, str):
        return strategy.lower().startswith("fsdp"), strategy.lower().startswith("fsdp")
    class_path = getattr(strategy, "class_path", None) or (strategy.get("class_path") if isinstance(strategy, dict)
                                                           else None)  # fmt: skip
    if class_path is None:
        return isinstance(strategy, FSDPStrategy), type(strategy) is FSDPStrategy
    module_name, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return False, False  # the parser names a class that does not import
    return isinstance(cls, type) and issubclass(cls, FSDPStrategy), cls is FSDPStrategy


def check_placement(trainer: Any, objective: Any, objective_args: dict[str, Any], stage: str) -> None:
    """Refuse, before any data or weights load, what the chosen accelerator, strategy and objective cannot run
    together; Lightning would say it later as a traceback, or after minutes of loading."""
    strategy = trainer.get("strategy")
    if "deepspeed" in str(strategy).lower():
        refuse_deepspeed()
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    has_gpu = torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not has_gpu:
        raise ConfigError(
            f"--trainer.accelerator {accelerator}: torch sees no GPU on this machine; use --trainer.accelerator cpu "
            "with a CPU recipe (configs/tiny/, configs/smollm2/): configs/{dpo,rm,sft}.yaml are for a node of GPUs"
        )
    fsdp, lightnings_own = _fsdp_kind(strategy)
    if fsdp and lightnings_own and (accelerator == "cpu" or not has_gpu):
        raise ConfigError(
            "--trainer.strategy fsdp runs on GPUs only (Lightning's FSDP refuses the CPU); on this machine use "
            "--trainer.strategy ddp, or one process"
        )
    refusal = objective.sharding_refusal(objective_args, stage) if fsdp and objective is not None else None
    if refusal:
        raise ConfigError(refusal)
    trainer_refusal = getattr(objective, "trainer_refusal", None)
    if stage == "fit" and trainer_refusal is not None and (refusal := trainer_refusal(trainer)):
        raise ConfigError(refusal)


def sum_over_processes(value: Tensor) -> tuple[Tensor, int]:
    """``value`` summed over every process of the run (each must call this), and their count; ``value`` and 1
    on one process. A plain collective rather than the trainer's, so the loss it serves reads the same in a
    module driven by hand."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value, 1
    total = value.detach().clone()
    dist.all_reduce(total)
    return total, dist.get_world_size()


def gradient_norm(grads: list[Tensor], trainer: L.Trainer | None) -> Tensor | None:
    """The L2 norm of all gradients of the trained model; under FSDP each process holds a shard of each, so
    the squared norms are summed across processes (every process must call this). None when there are none."""
    if not is_fsdp(trainer):
        return torch.nn.utils.get_total_norm(grads) if grads else None
    assert trainer is not None
    device = trainer.strategy.root_device
    squared = torch.zeros((), dtype=torch.float32, device=device)
    if grads:
        squared = torch.nn.utils.get_total_norm(grads).float().to(device) ** 2
    return trainer.strategy.reduce(squared, reduce_op="sum").sqrt()


def clip_global_norm(parameters: Iterable[Tensor], max_norm: float, trainer: L.Trainer | None) -> Tensor | None:
    """Scale the gradients of ``parameters`` to a global norm of at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` does, but with the norm of every process's shards under FSDP (every
    process must call this); the norm before clipping, or None without gradients."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = gradient_norm(grads, trainer)
    if norm is not None and grads:
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, scale.to(grads[0].device))
    return norm


def clip_sharded(trainer: L.Trainer, max_norm: float) -> bool:
    """Clip the global gradient norm through FSDP's own ``clip_grad_norm_`` (a collective; Lightning's FSDP
    precision plugin refuses norm clipping because it has no handle on the root module). False when not FSDP."""
    if not is_fsdp(trainer):
        return False
    trainer.model.clip_grad_norm_(max_norm)  # type: ignore[union-attr, operator]
    return True


def full_state_dict(trainer: L.Trainer, prefix: str, every_rank: bool = False) -> dict[str, Tensor] | None:
    """The entries of the module's state dict under ``prefix`` (without it), gathered whole on rank 0 (None on
    the others), or on every rank; every process must call it. Without FSDP, the module's own tensors."""
    module = trainer.lightning_module
    if not is_fsdp(trainer):
        state = module.state_dict()
    else:
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root: Any = trainer.model
        offload = trainer.strategy.root_device.type != "cpu"  # to host memory on a GPU; already there on CPU
        config = FullStateDictConfig(offload_to_cpu=offload, rank0_only=not every_rank)
        with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
            state = root.state_dict()
        if not (every_rank or trainer.is_global_zero):
            return None
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def model_on_one_process(
    trainer: L.Trainer, pl_module: Any, attribute: str | None = None, base: str | None = None, head: str | None = None
) -> nn.Module | None:
    """The trained model, whole: the module's own without FSDP (on every process), else a copy rebuilt on rank 0
    from the gathered weights (None on the other ranks). Every process must call it. By default the trained
    model; another (PPO's critic) by its ``attribute``, the folder it started from and its head (no adapters)."""
    if not is_fsdp(trainer):
        return pl_module.trainable_module() if attribute is None else getattr(pl_module, attribute)
    state = full_state_dict(trainer, f"{attribute or pl_module.trained_attribute}.")
    if state is None:
        return None
    hp = dict(pl_module.hparams) if attribute is None else {}
    head = head or pl_module.head
    trained = TrainedWeights(
        "the fit's sharded weights", type(pl_module).__name__, base or hp["model_name_or_path"], head,
        trainer.global_step, state, hp, {},
    )  # fmt: skip
    return model_from_trained(trained, head, merge=False, **pl_module.load_kwargs())  # the export merges a copy
