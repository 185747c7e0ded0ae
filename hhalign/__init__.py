"""hhalign: reward modelling and DPO on Anthropic's hh-rlhf, with PyTorch Lightning."""

from hhalign.data import PreferenceDataModule
from hhalign.modules import AlignmentModule, DPOModule, RewardModule

__all__ = ["AlignmentModule", "DPOModule", "PreferenceDataModule", "RewardModule"]
__version__ = "0.1.0"
