"""What every labeling engine shares: the settings it generates with, the interface it offers,
and what its precision check reports.

Engine modules (``transformers_engine``, ``vllm_engine``, ``ctranslate2_engine``) import this and nothing of each other;
``registry`` knows them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, get_args

import numpy as np

from dora.checks import check_number, positive_ints
from dora.errors import ConfigError

if TYPE_CHECKING:
    from dora.pipeline.engines.generation import Generated

EngineName = Literal["transformers", "vllm", "ctranslate2", "auto"]
Dtype = Literal["float32", "bfloat16", "float16"]
COMPUTE_TYPES = ("float32", "bfloat16", "float16", "int8", "int8_float32", "int8_float16", "int8_bfloat16")
"""CTranslate2's compute types (``--compute-type``)."""


@dataclass(frozen=True, kw_only=True)
class LabelingSettings:
    """How the teacher labels the pool: the engine and what it generates with. The one record of
    these settings: the teacher-label config's labeling section, and the base of what every engine
    starts with (``EngineSettings``). Each field and its check is written here only."""

    NO_TAILS: ClassVar[bool] = False
    """Whether ``kd_temperatures`` may be empty (no tail stored): a request names at least one."""

    engine: EngineName = "transformers"
    """Labeling engine: transformers, vllm (decoder-only teachers), ctranslate2 (seq2seq teachers), or
    auto (vLLM for a decoder-only teacher it serves, CTranslate2 for a seq2seq one, when installed)."""
    top_k: int = 20
    """Token log-probabilities stored per generated token (the top k)."""
    label_batch_size: int = 32
    """Pool rows per generation batch (transformers and CTranslate2 engines)."""
    label_batch_tokens: int | None = None
    """Also cap each generation batch at N padded positions, rows x (longest prompt + max new tokens),
    so long prompts get smaller batches (transformers and CTranslate2; vLLM schedules by tokens
    itself: ``--engine-arg max_num_batched_tokens=N``)."""
    compute_type: str | None = None
    """CTranslate2 compute type: float32, bfloat16, float16, int8, int8_float32, int8_float16 or
    int8_bfloat16 (default: ``dtype`` if not float32, else float32 on CPU and bfloat16 on a GPU that
    has it). Anything but float32 is first compared with float32 on the pool's first 64 rows,
    printed and recorded."""
    dtype: Dtype = "float32"
    """Weights dtype while labeling: float32, bfloat16 or float16 (the last two halve memory on a GPU)."""
    temperature: float = 0.0
    """Sampling temperature for pseudo-labels (0: greedy, as in the paper)."""
    top_p: float = 1.0
    """Nucleus sampling mass when ``temperature`` > 0."""
    tensor_parallel_size: int = 1
    """vLLM: GPUs per teacher replica (tensor parallel)."""
    pipeline_parallel_size: int = 1
    """vLLM: pipeline stages per replica."""
    max_model_len: int | None = None
    """vLLM: longest prompt plus output to plan for (default: the model's)."""
    gpu_memory_utilization: float = 0.9
    """vLLM: fraction of each GPU's memory it may take."""
    engine_args: dict[str, Any] = field(default_factory=dict)
    """Further engine keyword arguments, passed through unchanged (they win over dora's)."""
    kd_temperatures: tuple[float, ...] | None = None
    """Temperatures at which to store each generated token's tail mass outside the top-k, for exact
    KD at those T (default 1,2; vLLM: 1)."""

    def __post_init__(self) -> None:  # library callers too: NaN passes every ``x < 0`` test
        positive_ints(self, "top_k", "label_batch_size", "tensor_parallel_size", "pipeline_parallel_size")
        if self.dtype not in get_args(Dtype):
            raise ConfigError(f"--dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.engine not in get_args(EngineName):
            raise ConfigError(f"--engine must be transformers, vllm, ctranslate2 or auto, got {self.engine!r}")
        if self.max_model_len is not None:
            positive_ints(self, "max_model_len")
        if self.label_batch_tokens is not None:
            positive_ints(self, "label_batch_tokens")
            if self.engine == "vllm":
                raise ConfigError("--label-batch-tokens: vLLM schedules its batches by tokens itself; use "
                                  "--engine-arg max_num_batched_tokens=N")
        if self.compute_type is not None:
            if self.engine not in ("ctranslate2", "auto"):
                raise ConfigError(f"--compute-type is CTranslate2's; with --engine {self.engine} use --dtype")
            if self.compute_type not in COMPUTE_TYPES:
                raise ConfigError(f"--compute-type must be one of {', '.join(COMPUTE_TYPES)}; got {self.compute_type!r}")
        check_number(self.temperature, "--temperature", low=0, high=100, hint="0 is greedy (the paper's setting)")
        check_number(self.top_p, "--top-p", low=0, low_open=True, high=1)
        check_number(self.gpu_memory_utilization, "--gpu-memory-utilization", low=0, low_open=True, high=1)
        if self.kd_temperatures is not None:
            object.__setattr__(self, "kd_temperatures", tuple(float(t) for t in self.kd_temperatures))
            if (not self.kd_temperatures and not self.NO_TAILS) or not all(math.isfinite(t) and 0 < t < 100
                                                                           for t in self.kd_temperatures):
                raise ConfigError(f"--kd-temperatures must be positive numbers such as 1,2; got {self.kd_temperatures}")
        if self.engine == "transformers" and (self.tensor_parallel_size > 1 or self.pipeline_parallel_size > 1):
            raise ConfigError("--tensor-parallel-size and --pipeline-parallel-size need --engine vllm "
                              "(the transformers engine runs on one device)")

    def labeling_settings(self) -> dict[str, Any]:
        """This record's fields by name (what a stage passes on to a stage that labels)."""
        return {f.name: getattr(self, f.name) for f in fields(LabelingSettings)}


@dataclass(frozen=True, kw_only=True)
class EngineSettings(LabelingSettings):
    """How the teacher generates: the labeling settings, and what an engine takes from the stage's
    other sections (the lengths, the seed). Recorded in the cache manifest."""

    NO_TAILS: ClassVar[bool] = True  # CTranslate2's compute-type comparison labels greedily without tails

    max_source_length: int
    """Prompt tokens kept."""
    max_new_tokens: int
    """Most tokens generated per output."""
    seed: int = 0
    """Sampling seed (used when ``temperature`` > 0)."""

    @classmethod
    def of(cls, config: Any, **resolved: Any) -> EngineSettings:
        """The engine's view of a stage config that holds ``LabelingSettings``: every field by name,
        ``resolved`` (the engine's own kd temperatures and compute type, say) replacing some."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if f.name not in resolved}, **resolved)


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
