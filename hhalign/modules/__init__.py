"""Lightning modules: one per training objective."""

from hhalign.modules.base import AlignmentModule
from hhalign.modules.dpo import DPOModule
from hhalign.modules.reward import RewardModule
from hhalign.modules.sft import SFTModule

__all__ = ["AlignmentModule", "DPOModule", "RewardModule", "SFTModule"]
