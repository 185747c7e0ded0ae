"""Loading Hugging Face tokenizers and models by name or local path, with errors a user can act on."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from hhalign.checkpoint_files import TrainedWeights, is_checkpoint_file, read_trained_weights
from hhalign.data.tokenizers import check_exists, load_tokenizer
from hhalign.errors import ModelLoadError, first_line

__all__ = ["load_model", "load_tokenizer"]


def _config_without_dropout(name_or_path: str, trust_remote_code: bool, **overrides: Any) -> Any:
    """DPO compares policy and reference log-probs, so dropout in either would add noise to h."""
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **overrides)
    for key, value in list(vars(config).items()):
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    return config


def load_model(
    name_or_path: str,
    *,
    head: str = "causal_lm",
    disable_dropout: bool = True,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load a causal LM (``head="causal_lm"``) or a one-output scalar head (``head="reward"``).

    ``name_or_path`` may also be an hhalign ``.ckpt``: the model its run started from, with the trained
    weights loaded over it, so a DPO or RM run can start from an SFT run without an export step.
    """
    check_exists(name_or_path, "model")
    options = {
        "disable_dropout": disable_dropout,
        "dtype": dtype,
        "attn_implementation": attn_implementation,
        "trust_remote_code": trust_remote_code,
    }
    if is_checkpoint_file(name_or_path):
        return model_from_trained(read_trained_weights(name_or_path), head, **options)
    overrides: dict[str, Any] = {"num_labels": 1} if head == "reward" else {}
    auto = AutoModelForSequenceClassification if head == "reward" else AutoModelForCausalLM
    try:
        if disable_dropout:
            overrides = {"config": _config_without_dropout(name_or_path, trust_remote_code, **overrides)}
        with expected_fresh_head(head == "reward"):
            return auto.from_pretrained(
                name_or_path,
                dtype=dtype,
                attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code,
                **overrides,
            )
    except SafetensorError as err:
        raise ModelLoadError(
            f"could not read the weights of model {name_or_path!r} ({err}); the file is damaged or incomplete: "
            "copy, export or build it again"
        ) from None
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load model {name_or_path!r}: {first_line(err)}") from err


class _FreshHeadReport(logging.Filter):
    """Drops transformers' load report when all it says is that the reward head (``score``) is new: a reward
    model started from a causal LM always gets one. A report naming any other key is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "LOAD REPORT" not in text:
            return True
        rows = [[cell.strip() for cell in line.split("|")] for line in text.splitlines() if line.count("|") >= 2]
        keyed = [(row[0], row[1]) for row in rows if row[1] and row[1] != "Status" and not set(row[0]) <= {"-"}]
        return not keyed or not all(key.startswith("score.") and status == "MISSING" for key, status in keyed)


@contextlib.contextmanager
def expected_fresh_head(reward: bool) -> Iterator[None]:
    if not reward:
        yield
        return
    logger, quiet = logging.getLogger("transformers.modeling_utils"), _FreshHeadReport()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def model_from_trained(trained: TrainedWeights, head: str = "causal_lm", merge: bool = True, **options: Any) -> Any:
    """The model a checkpoint's run started from (``load_model`` options), with the trained weights over it;
    LoRA adapters merged into it unless ``merge`` is off (then the peft model, adapters apart)."""
    model = load_model(trained.base, head=head, **options)
    if trained.hparams.get("lora_rank", 0) > 0:  # adapters: load them over the base, then merge
        hp = trained.hparams
        model = with_lora(model, hp["lora_rank"], hp.get("lora_alpha", 16.0), hp.get("lora_target_modules"))
        load_trained(model, trained, head)
        return model.merge_and_unload() if merge else model
    load_trained(model, trained, head)
    return model


def load_trained(model: nn.Module, trained: TrainedWeights, head: str) -> None:
    """Copy a checkpoint's trained weights into ``model``. A reward model may start from a causal LM
    (its backbone; the LM head is dropped and the score head starts fresh), not the other way round."""
    if trained.head == head:
        model.load_state_dict(trained.state_dict, strict=True)
        return
    if trained.head == "reward":
        raise ModelLoadError(
            f"{trained.path} is a reward model ({trained.module}); a policy must start from a causal LM "
            "checkpoint (SFT or DPO) or a Hugging Face folder"
        )
    missing, unexpected = model.load_state_dict(trained.state_dict, strict=False)
    head_name = next((n for n in ("score", "classifier") if hasattr(model, n)), "score")
    stray = [k for k in missing if not k.startswith(f"{head_name}.")] + [
        k for k in unexpected if not k.startswith("lm_head.")
    ]
    if stray:
        raise ModelLoadError(f"{trained.path} does not fit {type(model).__name__}: mismatched keys {stray[:5]}")


def with_lora(model: nn.Module, rank: int, alpha: float, target_modules: str | list[str] | None) -> nn.Module:
    """Wrap ``model`` with fresh LoRA adapters (peft): only they train, and at initialisation the
    model computes exactly what it did (the up-projection starts at zero)."""
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.SEQ_CLS if hasattr(model, "score") else TaskType.CAUSAL_LM
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules, lora_dropout=0.0, task_type=task)
    return get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """The plain model with any LoRA adapters merged into its weights (a copy; ``model`` keeps training)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()
