"""hhalign: reward modelling and DPO on Anthropic's hh-rlhf, with PyTorch Lightning."""

from hhalign.data import PreferenceDataModule
from hhalign.modules import AlignmentModule, DPOModule, RewardModule, SFTModule

__all__ = ["AlignmentModule", "DPOModule", "PreferenceDataModule", "RewardModule", "SFTModule"]
__version__ = "0.1.0"
