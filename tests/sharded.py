"""Lightning's real ``FSDPStrategy`` on CPU over gloo, for the sharded-training tests.

Lightning refuses ``FSDPStrategy`` on a CPU accelerator by the strategy's exact type, and hands torch's FSDP
``device_id=root_device.index``, which is None on CPU and which FSDP refuses. This subclass passes the CPU device
instead, and writes full (single-file) checkpoints without offloading them to the host memory they are already in;
every other line of Lightning's FSDP code (wrapping, mixed precision, sharded and full checkpoints) runs unchanged,
so what passes here is what a GPU user runs, over gloo instead of NCCL.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.fsdp as fsdp
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies import fsdp as lightning_fsdp
from torch import nn

from tests.conftest import REPO

LLAMA_LAYER = "transformers.models.llama.modeling_llama.LlamaDecoderLayer"
"""The tiny model's decoder layer: the unit the shipped recipes wrap (Qwen2's there)."""


def _full_state_dict_on_cpu(module: nn.Module, world_size: int, rank0_only: bool = True) -> Any:
    """Lightning's full-state-dict context without ``offload_to_cpu``: a copy to host memory, which on the CPU
    has nowhere to go (torch segfaults in it there); everything else as Lightning sets it."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType

    return fsdp.FullyShardedDataParallel.state_dict_type(
        module=module,
        state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
    )


lightning_fsdp._get_full_state_dict_context = _full_state_dict_on_cpu  # type: ignore[assignment]


class CPUFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` with torch's FSDP told the CPU is its device (and full state dicts not offloaded)."""

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


def fsdp_overlay(folder: Path, state_dict_type: str = "sharded", devices: int = 2) -> Path:
    """A config overlay: the shipped recipes' FSDP settings (FULL_SHARD, one unit per decoder layer) on CPU."""
    path = folder / f"cpu-fsdp-{state_dict_type}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "accelerator": "cpu",
                    "devices": devices,
                    "strategy": {
                        "class_path": "tests.sharded.CPUFSDPStrategy",
                        "init_args": {
                            "sharding_strategy": "FULL_SHARD",
                            "auto_wrap_policy": [LLAMA_LAYER],
                            "state_dict_type": state_dict_type,
                        },
                    },
                }
            }
        )
    )
    return path


def run_cli(args: list[str], timeout: int = 420) -> subprocess.CompletedProcess:
    """``hhalign`` in a subprocess (and its own process group, with every rank it launches); a run still going
    after ``timeout`` seconds is a hang: the group is killed and the test fails saying so."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "hhalign.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"hung: still running after {timeout} s (killed)\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def train_rows(run_dir: Path) -> dict[int, dict[str, str]]:
    """The training rows of a run's ``metrics.csv`` by step."""
    with open(run_dir / "metrics.csv") as handle:
        return {int(r["step"]): r for r in csv.DictReader(handle) if r.get("train/loss")}


def last_validation(run_dir: Path) -> dict[str, float]:
    """The last validation row of a run's ``metrics.csv``."""
    with open(run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/loss")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


class AssertReferenceFreed(Callback):
    """Fail the run unless, once training starts, the precomputed reference is gone: the module holds none, and
    every frozen parameter the strategy's wrapper still lists (DDP keeps them all) has released its memory."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        assert pl_module.ref is None, "the reference is still loaded"
        wrapper = trainer.strategy.model
        frozen = [p for p in getattr(wrapper, "_module_parameters", wrapper.parameters()) if not p.requires_grad]
        assert frozen, "the wrapper lists no frozen parameter: nothing to check"
        assert all(p.numel() == 0 for p in frozen), "the reference's weights are still held"
        print(f"reference freed: {len(frozen)} frozen parameters hold no memory")
