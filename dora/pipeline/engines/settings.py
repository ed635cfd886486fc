"""What every labeling engine shares: the settings it generates with, the interface it offers,
and what its precision check reports.

Engine modules (``transformers_engine``, ``vllm_engine``) import this and nothing of each other;
``registry`` knows them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from dora.checks import check_number

if TYPE_CHECKING:
    from dora.pipeline.engines.generation import Generated

EngineName = Literal["transformers", "vllm", "ctranslate2", "auto"]


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """How the teacher generates. Recorded in the cache manifest."""

    top_k: int
    max_source_length: int
    max_new_tokens: int
    batch_size: int
    dtype: str
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    engine_args: dict[str, Any] = field(default_factory=dict)
    kd_temperatures: tuple[float, ...] = (1.0, 2.0)
    """Temperatures at which each generated token's tail mass (outside the top-k) is stored."""
    batch_tokens: int | None = None
    """Also cap each batch at this many padded positions (transformers and CTranslate2 engines)."""
    compute_type: str | None = None
    """CTranslate2's compute type (None: its default for the device)."""

    def __post_init__(self) -> None:  # library callers too: NaN passes every ``x < 0`` test
        check_number(self.temperature, "temperature", low=0, high=100, hint="0 is greedy")
        check_number(self.top_p, "top_p", low=0, low_open=True, high=1)
        check_number(self.gpu_memory_utilization, "gpu_memory_utilization", low=0, low_open=True, high=1)
        for t in self.kd_temperatures:
            check_number(t, "kd_temperatures", low=0, low_open=True, high=100, high_open=True)

    @classmethod
    def from_config(cls, config: Any) -> EngineSettings:
        """The engine's view of a stage config: same field names, ``label_batch_size`` as batch size."""
        names = {f.name for f in fields(cls)} - {"batch_size", "kd_temperatures", "batch_tokens"}
        return cls(**{n: getattr(config, n) for n in names}, batch_size=config.label_batch_size,
                   batch_tokens=config.label_batch_tokens)


class Engine(Protocol):
    name: str
    version: str

    def label(self, prompts: Sequence[list[int]], on_batch: Callable[[int], None] | None = None) -> list[Generated]:
        """Generate for each prompt (token ids); results in input order."""
        ...

    def settings(self) -> dict[str, Any]:
        """Engine-specific settings for the manifest."""
        ...

    def score(self, prompts: Sequence[list[int]], continuations: Sequence[list[int]]) -> np.ndarray:
        """(len(prompts), len(continuations)) log-probabilities of each continuation after each prompt."""
        ...

    def device_count(self) -> int:
        """Devices this engine computes on (what its labeling time is multiplied by)."""
        ...

    def check_precision(self, sample: Callable[[], Sequence[list[int]]]) -> PrecisionCheck | None:
        """Before labeling: what this engine's reduced precision changes, measured on ``sample()``
        (the prompts of the pool's first ``PRECISION_ROWS`` rows, asked for only by an engine that
        checks); None when it has nothing to check."""
        ...


PRECISION_ROWS = 64
"""Pool rows an engine's precision check is given."""


@dataclass(frozen=True)
class PrecisionCheck:
    """What an engine's precision check found, before labeling: printed, and recorded in the
    manifest under ``generation.engine.agreement``."""

    record: dict[str, Any]
    """What was measured (the manifest's ``agreement``)."""
    message: str
    """One line saying it."""
    warning: bool
    """Whether the difference is large enough to act on (printed as a note)."""
