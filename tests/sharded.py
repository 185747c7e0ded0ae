"""Lightning's real ``FSDPStrategy`` on CPU over gloo, for the sharded-training tests.

Lightning refuses ``FSDPStrategy`` on a CPU accelerator by the strategy's exact type, and hands torch's FSDP
``device_id=root_device.index``, which is None on CPU and which FSDP refuses. This subclass passes the CPU device
instead; every other line of Lightning's FSDP code (wrapping, mixed precision, sharded and full checkpoints) runs
unchanged, so what passes here is what a GPU user runs, over gloo instead of NCCL.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed.fsdp as fsdp
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


class CPUFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` with torch's FSDP told the CPU is its device."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        original = fsdp.FullyShardedDataParallel

        class OnCPU(original):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, device_id: Any = None, **kwargs: Any) -> None:
                super().__init__(*args, device_id=torch.device("cpu") if device_id is None else device_id, **kwargs)

        fsdp.FullyShardedDataParallel = OnCPU  # type: ignore[misc]
        try:
            return super()._setup_model(model)
        finally:
            fsdp.FullyShardedDataParallel = original  # type: ignore[misc]
