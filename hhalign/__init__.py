"""hhalign: reward modelling, DPO and their kin on Anthropic's hh-rlhf, with PyTorch Lightning.

The stages are sub-packages: ``data`` (records → tokenized examples → typed batches), ``models`` (loading
Hugging Face models, running them over a batch), ``losses`` (pure functions over tensors), ``objectives``
(one Lightning module per training objective), ``training`` (checkpoints, resume, logs) and ``tools``
(export, plot, summary, score, generate). Names are imported on first use, so ``import hhalign.losses``
loads torch alone, not Lightning or transformers.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "AlignmentModule",
    "DPOModule",
    "GRPOModule",
    "KTOModule",
    "OnlineDPOModule",
    "PPOModule",
    "PreferenceDataModule",
    "RLOOModule",
    "RewardModule",
    "SFTModule",
]


def __getattr__(name: str) -> Any:
    if name == "PreferenceDataModule":
        from hhalign.data.datamodule import PreferenceDataModule

        return PreferenceDataModule
    if name in __all__:
        from hhalign import objectives

        return getattr(objectives, name)
    raise AttributeError(f"module 'hhalign' has no attribute {name!r}")
