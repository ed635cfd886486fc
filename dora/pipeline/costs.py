"""What a stage cost: device, wall time, device-hours, examples and tokens.

Prices are the user's business (a later issue): dora records quantities, never invented dollars.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from typing import Any


def device_description() -> tuple[str, int]:
    """(device kind, count) of what this process computes on."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0), torch.cuda.device_count()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)", 1


@dataclass(frozen=True, kw_only=True)
class StageCost:
    stage: str
    device: str
    device_count: int
    wall_seconds: float
    device_hours: float
    examples: int
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Stopwatch:
    """Times a stage and turns the time into a :class:`StageCost`."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def cost(self, stage: str, *, examples: int, tokens: int) -> StageCost:
        device, count = device_description()
        seconds = self.seconds
        return StageCost(stage=stage, device=device, device_count=count, wall_seconds=round(seconds, 3),
                         device_hours=round(seconds * count / 3600, 6), examples=examples, tokens=tokens)
