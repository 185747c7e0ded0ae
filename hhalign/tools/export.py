"""Export a trained model to a standard Hugging Face folder: ``hhalign export --ckpt PATH --out DIR``,
or automatically at the end of ``fit`` with the ``ExportAtFitEnd`` callback. The DPO reference is
never exported; weights are written as safetensors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn

from hhalign.models.loading import load_tokenizer, merged, model_from_trained
from hhalign.models.trained import read_trained_weights
from hhalign.training.sharding import model_on_one_process

EXPORT_INFO = "hhalign_export.json"


def export_model(model: nn.Module, tokenizer: Any, out: str | Path, info: dict[str, Any]) -> Path:
    """Write ``model`` (safetensors), its tokenizer and ``hhalign_export.json`` (provenance and, for a
    reward model, the mean and standard deviation of its validation rewards) into ``out``.

    A reward model's config gets no ``pad_token_id`` when pad equals EOS: the library's pooling would
    otherwise take the EOS it was trained to read for padding and score the token before it. Unpadded
    sequences are then scored at their last token, the EOS, as in training.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if info.get("head") == "reward" and tokenizer.pad_token_id == tokenizer.eos_token_id:
        model.config.pad_token_id = None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out


def export_checkpoint(ckpt: str, out: str) -> Path:
    """Export the trained model of an hhalign checkpoint."""
    trained = read_trained_weights(ckpt)
    model = model_from_trained(trained, trained.head)
    info = {"source": str(ckpt), "module": trained.module, "base": trained.base, "head": trained.head}
    if trained.reward_stats:
        info["reward_stats"] = trained.reward_stats
    return export_model(model, load_tokenizer(trained.base), out, {**info, "step": trained.step})


class ExportAtFitEnd(Callback):
    """Export the trained model when ``fit`` ends (on the main process), by default to
    ``<run dir>/export``; the folder can serve as the next stage's ``model_name_or_path``."""

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        model = model_on_one_process(trainer, pl_module)  # under FSDP, gathered whole on rank 0: every rank joins
        if not trainer.is_global_zero or model is None:
            return
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "export")
        hp = pl_module.hparams
        info = {
            "source": "fit",
            "module": type(pl_module).__name__,
            "base": hp.model_name_or_path,
            "head": pl_module.head,
            "step": trainer.global_step,
        }
        if getattr(pl_module, "reward_stats", None):
            info["reward_stats"] = pl_module.reward_stats  # from the last validation: normalise scores with it
        tokenizer = load_tokenizer(hp.model_name_or_path, hp.trust_remote_code)
        export_model(merged(model), tokenizer, out, info)  # LoRA adapters merged
        pl_module.print(f"exported the trained model to {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hhalign export", description=__doc__)
    parser.add_argument(
        "--ckpt", required=True, help="a .ckpt written by `hhalign fit` (or an FSDP run's .ckpt folder)"
    )
    parser.add_argument("--out", required=True, help="folder to write the Hugging Face model into")
    args = parser.parse_args(argv)
    print(f"exported {args.ckpt} to {export_checkpoint(args.ckpt, args.out)}")
