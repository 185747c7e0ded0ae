"""The shared work of a benchmark run: the pairs, the counts and the FLOPs, tool-independent.

Imported by the bench driver and by both tools' workers, so it needs only the standard library.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class WorkerResult:
    """What one timed training run reports; the driver adds the peak memory it saw."""

    tool: str
    task: str
    model: str
    settings: str
    batch_size: int
    steps: int
    warmup: int
    seconds: float = 0.0  # wall clock of the timed steps, data loading included
    first_loss: float = float("nan")
    pairs: int = 0  # pairs in the timed steps
    work_tokens: int = 0  # Σ(2P+C+R): the real tokens of the pairs, whatever the layout
    computed_tokens: int = 0  # every position the policy's forward computed, padding included
    real_tokens: int = 0  # the non-pad positions among them
    logit_positions: int = 0  # positions where the LM head ran
    body_params: int = 0  # parameters outside the embeddings and the LM head
    head_params: int = 0  # the LM head (vocabulary × hidden)
    peak_rss_mb: float = 0.0
    extra: dict = field(default_factory=dict)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")


class StepClock:
    """Times the steps after warm-up from one step end to the next, so data loading counts too."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.ends: list[float] = []

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())

    def timed(self, step: int) -> bool:
        """Whether 0-based ``step`` is one of the timed steps."""
        return step >= self.warmup

    def seconds(self) -> float:
        return self.ends[-1] - self.ends[self.warmup - 1]


def training_flops(result: WorkerResult, reference: bool) -> float:
    """Matmul FLOPs of the timed steps from real tokens only: 6 per parameter per token for the
    trained model (forward + backward), 2 for a frozen reference's forward. The body counts every
    real token, the LM head only the positions where logits were computed. Attention-score FLOPs are
    not counted, so MFU understates the work, most for the tiny models (hidden size 128 against a few
    hundred positions); with LoRA the frozen weights get no weight gradient, so 6 per parameter overstates it."""
    per_pass = result.body_params * result.real_tokens + result.head_params * result.logit_positions
    return (6 + (2 if reference else 0)) * per_pass


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
