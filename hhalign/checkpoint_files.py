"""Reading an hhalign checkpoint as a model: its trained weights, the model its run started from, its head.

What a checkpoint holds is written by the objective that trained it (``TRAINED_KEY``: the prefix of its
trained model in the state dict and that model's head), so nothing here knows the objectives by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hhalign.errors import UserError

if TYPE_CHECKING:
    import torch

FINGERPRINT_KEY = "hhalign_fingerprints"
REWARD_STATS_KEY = "hhalign_reward_stats"
SHARDED_METADATA = "meta.pt"
"""The file beside the shards of an FSDP checkpoint folder that holds everything but the weights (Lightning's)."""
FROM_SHARDS_KEY = "hhalign_read_from_shards"
"""Set on a sharded folder read whole on one process: its weights, without the optimizer state."""
EXPORT_INFO = "hhalign_export.json"
"""Beside an export's weights: where it came from and, for a reward model, its scores' validation statistics."""
TRAINED_KEY = "hhalign_trained"
"""``{"prefix": …, "head": …}``: where the trained model sits in the state dict, and its head."""


class CheckpointError(UserError):
    """A checkpoint cannot be used for this run."""


@dataclass
class TrainedWeights:
    """The trained model of an hhalign checkpoint: its weights without the module prefix, the model it
    started from (``base``), and its head (``causal_lm`` or ``reward``)."""

    path: str
    module: str
    base: str
    head: str
    step: int
    state_dict: dict[str, torch.Tensor]
    hparams: dict[str, Any]
    reward_stats: dict[str, float]


def is_checkpoint_file(name_or_path: str) -> bool:
    return str(name_or_path).endswith(".ckpt")


def read_checkpoint(path: Any, map_location: Any = None, weights_only: bool | None = None, mmap: bool = False) -> dict:
    """Load a Lightning checkpoint with ``weights_only=True`` unless asked otherwise, turning every way a
    file can be wrong (missing, truncated, foreign) into a ``CheckpointError`` that says so. A folder written by
    FSDP's sharded checkpointing is read whole, on this one process, without its optimizer state."""
    if is_sharded_checkpoint(path):
        return read_sharded_checkpoint(Path(path))
    if not Path(path).is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; give a .ckpt file written by `hhalign fit` (in a run's "
            "checkpoints/ folder)"
        )
    import torch  # here, not above: the tools' help and errors import this module without torch

    safe = True if weights_only is None else weights_only
    try:
        checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=safe, mmap=mmap)
    except Exception as err:  # torch raises pickle, zip, EOF and runtime errors for a bad file
        first_line = (str(err).splitlines() or [""])[0][:200]
        if safe and "Weights only load failed" in str(err):  # a checkpoint, with objects safe loading refuses
            raise CheckpointError(
                f"checkpoint {path} holds Python objects that safe loading refuses ({first_line}); hhalign "
                "writes none, so it was written by another tool: hhalign does not unpickle it"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(err).__name__}: {first_line}); it is truncated or not "
            "a checkpoint: give a .ckpt file written by `hhalign fit`"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "global_step" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint written by hhalign (no state_dict/global_step)")
    return checkpoint


def is_sharded_checkpoint(path: Any) -> bool:
    return Path(path).is_dir() and (Path(path) / SHARDED_METADATA).is_file()


def read_sharded_checkpoint(folder: Path) -> dict:
    """A distributed (DCP) checkpoint folder as a Lightning checkpoint dict: the module's weights gathered from
    every shard file (the optimizer's left on disk) and the metadata file Lightning writes beside them."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    loaded: dict[str, Any] = {}
    try:
        _load_state_dict(
            loaded, storage_reader=FileSystemReader(folder), planner=_EmptyStateDictLoadPlanner(keys={"model"}),
            no_dist=True,
        )  # fmt: skip
        checkpoint = torch.load(folder / SHARDED_METADATA, map_location="cpu", weights_only=True)
    except Exception as err:
        first_line = (str(err).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"sharded checkpoint {folder} could not be read ({type(err).__name__}: {first_line}); it may be "
            "incomplete (a run killed while saving): use the one before it"
        ) from None
    if "model" not in loaded or "global_step" not in checkpoint:
        raise CheckpointError(f"{folder} is not a sharded Lightning checkpoint written by hhalign")
    return {**checkpoint, "state_dict": loaded["model"], FROM_SHARDS_KEY: str(folder)}


def read_trained_weights(path: str) -> TrainedWeights:
    """Read an hhalign ``.ckpt`` as a model to start from or to export. The weights are memory-mapped:
    a caller that only wants ``base`` (the tokenizer's source) reads no tensor, and one that loads them
    into a model holds no second full copy."""
    checkpoint = read_checkpoint(path, mmap=True)
    module = checkpoint.get(FINGERPRINT_KEY, {}).get("module")
    trained = checkpoint.get(TRAINED_KEY)
    base = checkpoint.get("hyper_parameters", {}).get("model_name_or_path")
    if not trained or not base:
        raise CheckpointError(
            f"{path} holds no hhalign model (module {module!r}); give a checkpoint written by "
            "`hhalign fit`, or an exported Hugging Face folder"
        )
    prefix = trained["prefix"]
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    stats = dict(checkpoint.get(REWARD_STATS_KEY, {}))
    return TrainedWeights(
        str(path), str(module), str(base), trained["head"], int(checkpoint["global_step"]), state, hparams, stats
    )


def read_reward_stats(path: str) -> dict[str, float]:
    """The validation mean and standard deviation of a reward model's scores (``mean``, ``std``), as its
    hhalign export or checkpoint records them; empty for any other model."""
    if is_checkpoint_file(path):
        return dict(read_trained_weights(path).reward_stats)
    info = Path(path) / EXPORT_INFO
    return dict(json.loads(info.read_text()).get("reward_stats") or {}) if info.is_file() else {}
