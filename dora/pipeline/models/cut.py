"""Students cut from the teacher (the distil-whisper recipe): the teacher's embeddings, output
head and N evenly spaced layers, in a smaller model of the same family with the same tokenizer,
so same-vocabulary top-k KD applies and the student starts from the teacher's knowledge.

T5-like models (t5, mt5, umt5) keep encoder and decoder layers separately; decoder-only models
whose layers are ``layers.<i>.`` (Llama, Mistral, Qwen2, SmolLM2, ...) keep N of them. The first
layer is always kept (T5's relative position bias lives in it) and, with N >= 2, the last.

>>> spaced(12, 4)
[0, 4, 7, 11]
>>> spaced(6, 1)
[0]
"""

from __future__ import annotations

import copy
import re
from typing import Any

from dora.errors import ConfigError, ModelError

T5_TYPES = ("t5", "mt5", "umt5")
_T5_LAYER = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.")
_DECODER_LAYER = re.compile(r"^(.*?\blayers)\.(\d+)\.")


def spaced(total: int, keep: int) -> list[int]:
    """``keep`` evenly spaced indices of ``total`` layers: the first always, the last when keep >= 2."""
    if keep == 1:
        return [0]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def layer_counts(config: Any) -> dict[str, int]:
    """The teacher's layer stacks by name: encoder and decoder for T5, layers for decoder-only."""
    if config.model_type in T5_TYPES:
        return {"encoder": config.num_layers, "decoder": config.num_decoder_layers or config.num_layers}
    if getattr(config, "num_hidden_layers", None) and not getattr(config, "is_encoder_decoder", False):
        return {"layers": config.num_hidden_layers}
    raise ModelError(f"make-student cuts T5-like ({', '.join(T5_TYPES)}) and decoder-only models with "
                     f"num_hidden_layers; {config.model_type!r} is neither")


def cut(teacher: Any, keep: dict[str, int]) -> tuple[Any, dict[str, list[int]]]:
    """(a new model with ``keep[stack]`` of each stack's layers, the teacher layer each one copies).

    Every weight of the student comes from the teacher (the same name, or the layer it copies);
    a weight with no teacher counterpart, or of another shape, is an error rather than left random.
    """
    config = teacher.config
    counts = layer_counts(config)
    chosen: dict[str, list[int]] = {}
    for stack, total in counts.items():
        n = keep[stack]
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= total:
            option = "--layers" if stack == "layers" else f"--{stack}-layers"
            raise ConfigError(f"{option} must be from 1 to {total} (the teacher's {stack} layers), got {n!r}")
        chosen[stack] = spaced(total, n)
    small = copy.deepcopy(config)
    if config.model_type in T5_TYPES:
        small.num_layers, small.num_decoder_layers = keep["encoder"], keep["decoder"]
    else:
        small.num_hidden_layers = keep["layers"]
        if getattr(small, "layer_types", None):  # per-layer attention kinds (sliding window) follow their layers
            small.layer_types = [config.layer_types[i] for i in chosen["layers"]]
    student = type(teacher)(small)
    source = teacher.state_dict()
    target = student.state_dict()
    pattern = _T5_LAYER if config.model_type in T5_TYPES else _DECODER_LAYER
    if not any(pattern.match(name) for name in target):  # layers under another name: copying by name would
        raise ModelError(f"cannot cut {config.model_type}: its layers are not named like T5's or Llama's "  # keep the first N
                         "(encoder.block.<i>. / layers.<i>.); this architecture is not supported by make-student")
    state = {}
    for name, tensor in target.items():
        origin = _origin(name, chosen)
        if origin not in source or source[origin].shape != tensor.shape:
            raise ModelError(f"cannot cut {config.model_type}: the student's {name} has no teacher weight of shape "
                             f"{tuple(tensor.shape)} ({origin}); this architecture is not supported by make-student")
        state[name] = source[origin].clone()
    student.load_state_dict(state)
    return student, chosen


def _origin(name: str, chosen: dict[str, list[int]]) -> str:
    """The teacher weight a student weight copies: layer i of a stack is the i-th chosen layer."""
    m = _T5_LAYER.match(name)
    if m is not None and m.group(1) in chosen:
        return f"{m.group(1)}.block.{chosen[m.group(1)][int(m.group(2))]}.{name[m.end():]}"
    m = _DECODER_LAYER.match(name)
    if m is not None and "layers" in chosen:
        return f"{m.group(1)}.{chosen['layers'][int(m.group(2))]}.{name[m.end():]}"
    return name
