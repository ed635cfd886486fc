"""Resumable checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint directory (``checkpoints/last``) holds only the files named here; loading refuses a
directory with anything else in it (a ``.pkl``, ``.pt``, ``.bin``, a ``.metadata``), because the
formats torch and accelerate use for these parts unpickle, and unpickling a planted file runs
its code. Layout::

    trainer_state.json           the loop's counters and history (written last: marks it complete)
    scheduler.json               the learning-rate scheduler's state_dict
    state.safetensors/.json      model and optimizer state (one process, or data-parallel: rank 0)
    sharded/rank-N.safetensors   FSDP: rank N's local shards of the model and optimizer state,
    sharded/rank-N.json            and their structure and scalars (param groups, step counts)
    rng-N.safetensors/.json      rank N's torch/CUDA generator states; python and numpy states

Each ``.json`` mirrors its state dict with every tensor replaced by ``{"tensor": KEY}`` (a key of
the ``.safetensors`` beside it). Loading walks the state dict of the freshly built model and
optimizer (the template) and copies the saved values into it, so a checkpoint can only fill the
slots this run already has, with tensors of the same shape and dtype and scalars of the same type.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dora.errors import CacheError, CheckpointError
from dora.files import parse_json

STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.json"
STATE = "state"
SHARDED = "sharded"
FORMAT = 1

_TOP_LEVEL = re.compile(r"(trainer_state|scheduler|state)\.json|state\.safetensors|rng-\d{1,6}\.(json|safetensors)")
_IN_SHARDED = re.compile(r"rank-\d{1,6}\.(json|safetensors)")
# Suffixes of the formats that unpickle (torch.save, accelerate, torch.distributed.checkpoint).
PICKLE_LIKE = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".metadata", ".distcp")


class WriteFailed(Exception):
    """Internal: writing ``path`` failed with ``cause`` (turned into one line by the caller)."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(str(path))
        self.path, self.cause = path, cause


WRITE_ERRORS: tuple[type[BaseException], ...]
try:
    from safetensors import SafetensorError

    WRITE_ERRORS = (OSError, RuntimeError, SafetensorError, WriteFailed)
except ImportError:  # an older safetensors: its errors are RuntimeErrors or OSErrors
    SafetensorError = RuntimeError  # type: ignore[misc,assignment]
    WRITE_ERRORS = (OSError, RuntimeError, WriteFailed)


def reason(error: BaseException) -> str:
    """The first line of an error, short enough for a one-line message."""
    cause = error.cause if isinstance(error, WriteFailed) else error
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    text = str(cause).strip().splitlines()
    return text[0][:200] if text else type(cause).__name__


def failed_path(error: BaseException, default: Path) -> Path:
    if isinstance(error, WriteFailed):
        return error.path
    if isinstance(error, OSError) and error.filename:
        return Path(error.filename)
    return default


def write_failure(path: Path, error: BaseException, what: str, previous: Path | None) -> CheckpointError:
    """The one-line message for a write that failed (a full disk, most often)."""
    kept = (f"the previous checkpoint is intact ({previous}); free space and rerun to resume from it"
            if previous is not None else "no earlier checkpoint was kept; free space and rerun")
    return CheckpointError(f"{path}: could not write {what} ({reason(error)}); the disk may be full; {kept}")


# --- what a checkpoint directory may hold ---------------------------------------------------------

def check_contents(last: Path) -> None:
    """Refuse a checkpoint directory holding anything dora does not write there."""
    for entry in sorted(last.iterdir()):
        if entry.name == SHARDED and entry.is_dir() and not entry.is_symlink():
            for inner in sorted(entry.iterdir()):
                _check_entry(inner, _IN_SHARDED, last)
        else:
            _check_entry(entry, _TOP_LEVEL, last)


def _check_entry(path: Path, allowed: re.Pattern[str], last: Path) -> None:
    if path.name.lower().endswith(PICKLE_LIKE):
        raise refusal(path, "a pickle-format file, which dora never writes in a checkpoint (loading it could run "
                            "code); not loading it", last)
    if not allowed.fullmatch(path.name) or path.is_symlink() or not path.is_file():
        raise refusal(path, "not a file dora writes in a checkpoint (planted or left by another tool); "
                            "not loading it", last)


def refusal(path: Path, why: str, last: Path) -> CheckpointError:
    return CheckpointError(f"{path}: {why}; refusing to resume: delete {last} to start over")


# --- JSON ----------------------------------------------------------------------------------------

def read_json(path: Path, last: Path) -> Any:
    """Parse ``path``; any damage (bad UTF-8 or JSON, huge numbers, deep nesting) is one line."""
    if not path.is_file():
        raise refusal(path, "missing from the checkpoint", last)
    try:
        return parse_json(path.read_bytes(), str(path))
    except OSError as e:
        raise refusal(path, f"cannot be read ({e.strerror})", last) from None
    except CacheError:  # bad UTF-8 or JSON, a 5,000-digit integer, nesting too deep
        raise refusal(path, "not valid JSON (truncated or corrupt)", last) from None


def write_json(path: Path, obj: Any) -> None:
    try:
        path.write_text(json.dumps(obj, indent=1))
    except WRITE_ERRORS as e:
        raise WriteFailed(path, e) from None


def read_trainer_state(last: Path) -> dict[str, Any]:
    """``trainer_state.json``, checked field by field (the loop trusts these types)."""
    path = last / STATE_FILE
    raw = read_json(path, last)
    if not isinstance(raw, dict):
        raise refusal(path, "not a JSON object", last)

    def bad(key: str) -> CheckpointError:
        return refusal(path, f"{key!r} is missing or has the wrong type", last)

    state: dict[str, Any] = {}
    for key in ("step", "examples_seen", "tokens_seen"):
        if not _count(raw.get(key)):
            raise bad(key)
        state[key] = raw[key]
    seconds = raw.get("seconds")
    if not _number(seconds) or not 0 <= seconds < float("inf"):
        raise bad("seconds")
    state["seconds"] = float(seconds)
    if not isinstance(raw.get("run_key"), str):
        raise bad("run_key")
    state["run_key"] = raw["run_key"]
    best = raw.get("best")
    if best is not None and not _scores(best):
        raise bad("best")
    state["best"] = best
    if raw.get("best_step") is not None and not _count(raw.get("best_step")):
        raise bad("best_step")
    state["best_step"] = raw.get("best_step")
    history = raw.get("history")
    if not isinstance(history, list) or not all(_history_entry(e) for e in history):
        raise bad("history")
    state["history"] = history
    state["since_best"] = raw.get("since_best", 0)
    if not _count(state["since_best"]):
        raise bad("since_best")
    state["stopped_early"] = raw.get("stopped_early", False)
    if not isinstance(state["stopped_early"], bool):
        raise bad("stopped_early")
    return state


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scores(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _number(v) for k, v in value.items())


def _history_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not _count(entry.get("step")):
        return False
    return all(isinstance(k, str) and (_number(v) or _scores(v)) for k, v in entry.items())


# --- state dicts: safetensors + JSON ------------------------------------------------------------

def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank (FSDP); a plain tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def write_state(base: Path, state: Any, **meta: Any) -> None:
    """``base.safetensors`` (every tensor once: tied weights are stored once) and ``base.json``."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    keys: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[Any, ...]] = set()

    def skeleton(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            local = _local(obj).detach()
            if local.numel():
                storage = (local.device, local.untyped_storage().data_ptr())
                view = (*storage, local.storage_offset(), tuple(local.shape), local.stride(), local.dtype)
                if view in keys:  # the same tensor under another name (tied embeddings)
                    return {"tensor": keys[view]}
                if storage in storages:  # a view overlapping a saved one: store a copy
                    local = local.clone()
                storages.add(storage)
                keys[view] = path
            tensors[path] = local.cpu().contiguous()
            return {"tensor": path}
        if isinstance(obj, dict):
            return {str(k): skeleton(v, f"{path}/{k}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [skeleton(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"{path}: cannot checkpoint a {type(obj).__name__} without pickle")

    tree = skeleton(state, "")
    target = base.with_name(base.name + ".safetensors")
    try:
        save_file(tensors, str(target))
    except WRITE_ERRORS as e:
        raise WriteFailed(target, e) from None
    write_json(base.with_name(base.name + ".json"), {"format": FORMAT, **meta, "state": tree})


def read_meta(base: Path, last: Path) -> dict[str, Any]:
    path = base.with_name(base.name + ".json")
    meta = read_json(path, last)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "state" not in meta:
        raise refusal(path, f"not a dora checkpoint file (format {FORMAT})", last)
    return meta


def read_state(base: Path, template: Any, meta: dict[str, Any], last: Path) -> Any:
    """Copy the state saved at ``base`` into ``template`` (the fresh state dict, filled in place
    where it holds tensors) and return it."""
    from safetensors import safe_open

    path = base.with_name(base.name + ".safetensors")
    if not path.is_file():
        raise refusal(path, "missing from the checkpoint", last)
    json_path = base.with_name(base.name + ".json")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return _fill(template, meta["state"], f, set(f.keys()), "", json_path, last)
    except SafetensorError as e:
        raise refusal(path, f"not a complete safetensors file ({reason(e)}; truncated or corrupt)", last) from None
    except OSError as e:
        raise refusal(path, f"cannot be read ({e.strerror})", last) from None


def model_and_optimizer(model: Any, optimizer: Any) -> dict[str, Any]:
    """The model's and the (torch) optimizer's state dicts, keyed by parameter name; under FSDP
    their tensors are DTensors, of which each rank saves its local shard."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def load_model_and_optimizer(base: Path, model: Any, optimizer: Any, last: Path, *, world: int,
                             rank: int | None = None) -> None:
    """Fill the model and optimizer with the state saved at ``base`` by ``world`` processes (and,
    for a shard, by this ``rank``): the fresh state dicts are the template, so only their slots
    can be filled, with tensors of their shapes and dtypes."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    meta = read_meta(base, last)
    if meta.get("world") != world or (rank is not None and meta.get("rank") != rank):
        raise refusal(base.with_name(base.name + ".json"), f"saved by {meta.get('world')!r} processes, this run has "
                      f"{world}: resume with the same number of processes", last)
    template = model_and_optimizer(model, optimizer)  # a fresh optimizer's state is initialised (lr 0)
    state = read_state(base, template, meta, last)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def read_plain(path: Path, template: Any, last: Path) -> Any:
    """A JSON-only state (the scheduler's), shaped and typed like ``template``."""
    meta = read_json(path, last)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "state" not in meta:
        raise refusal(path, f"not a dora checkpoint file (format {FORMAT})", last)
    return _fill(template, meta["state"], None, set(), "", path, last)


def _fill(template: Any, saved: Any, f: Any, keys: set[str], where: str, source: Path, last: Path) -> Any:
    def mismatch() -> CheckpointError:
        return refusal(source, f"does not fit this model, optimizer or scheduler (at {where or '/'})", last)

    if isinstance(template, torch.Tensor):
        key = saved.get("tensor") if isinstance(saved, dict) and len(saved) == 1 else None
        if f is None or not isinstance(key, str) or key not in keys:
            raise mismatch()
        value = f.get_tensor(key)
        local = _local(template)
        if value.shape != local.shape or value.dtype != local.dtype:
            raise mismatch()
        with torch.no_grad():
            local.copy_(value)
        return template
    if isinstance(template, dict):
        if not isinstance(saved, dict) or set(saved) != {str(k) for k in template}:
            raise mismatch()
        return {k: _fill(v, saved[str(k)], f, keys, f"{where}/{k}", source, last) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        if not isinstance(saved, list) or len(saved) != len(template):
            raise mismatch()
        items = [_fill(v, s, f, keys, f"{where}/{i}", source, last) for i, (v, s) in enumerate(zip(template, saved))]
        return tuple(items) if isinstance(template, tuple) else items
    if isinstance(template, int) and not isinstance(template, bool):  # 64-bit counters, not 4,000-digit ones
        if type(saved) is not int or abs(saved) >= 2**63:
            raise mismatch()
        return saved
    if type(saved) is type(template):
        return saved
    if isinstance(template, float) and type(saved) is int and abs(saved) < 2**63:  # lenient: 2 for 2.0
        return float(saved)
    raise mismatch()


# --- random number generators --------------------------------------------------------------------

def write_rng(last: Path, rank: int) -> None:
    """This rank's generator states: torch's and CUDA's (tensors), python's and numpy's (JSON)."""
    from safetensors.torch import save_file

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    target = last / f"rng-{rank}.safetensors"
    try:
        save_file(tensors, str(target))
    except WRITE_ERRORS as e:
        raise WriteFailed(target, e) from None
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    write_json(last / f"rng-{rank}.json", {
        "format": FORMAT, "python": [version, list(internal), gauss],
        "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    })


def read_rng(last: Path, rank: int) -> None:
    """Restore this rank's generators as ``write_rng`` saved them."""
    from safetensors import safe_open

    meta_path, path = last / f"rng-{rank}.json", last / f"rng-{rank}.safetensors"
    meta = read_json(meta_path, last)
    if not path.is_file():
        raise refusal(path, "missing from the checkpoint", last)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise refusal(path, f"not a complete safetensors file ({reason(e)}; truncated or corrupt)", last) from None
    try:
        py, npy, torch_state = meta["python"], meta["numpy"], tensors["torch"]
        version, internal, gauss = py
        name, keys, pos, has_gauss, cached = npy
        valid = (torch_state.dtype == torch.uint8 and version == 3 and _words(internal, 625)
                 and (gauss is None or _number(gauss)) and name == "MT19937" and _words(keys, 624)
                 and _count(pos) and pos <= 624 and has_gauss in (0, 1) and _number(cached))
        if not valid:
            raise ValueError("not a generator state")
        # Restored only once all of it is known to be valid.
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch_state)
        cuda = [tensors[f"cuda/{i}"] for i in range(len(tensors) - 1) if f"cuda/{i}" in tensors]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RuntimeError):
        raise refusal(meta_path, "not a valid random generator state", last) from None


def _words(values: Any, n: int) -> bool:
    """A list of ``n`` unsigned 32-bit integers (a Mersenne Twister's state)."""
    return isinstance(values, list) and len(values) == n and all(_count(x) and x < 2**32 for x in values)
