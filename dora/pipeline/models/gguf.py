"""GGUF checkpoints (llama.cpp's format) as teachers and students, converted once to safetensors.

transformers dequantises a GGUF as it loads it (``from_pretrained(dir, gguf_file=NAME)``), which
takes tens of seconds and gives a model that ``save_pretrained`` refuses ("quantized models are
not serializable"). dora converts each GGUF once into a plain checkpoint (config, float32
safetensors weights, tokenizer) in a content-addressed local cache,
``$DORA_HOME/gguf/<sha256>/`` (``DORA_HOME`` defaults to ``~/.cache/dora``), and every command
loads that directory. The GGUF's sha256 names the directory, is recorded in it
(``dora_gguf.json``), and goes into the manifest of a cache labeled from it (``lineage.gguf``).

A model option names a GGUF either as the file or as a directory that holds exactly one ``.gguf``
and no ``config.json``. Parsing a GGUF runs no code from it: the ``gguf`` package reads its
header and tensors with numpy.

Example::

    dora teacher-label --task fever --teacher SmolLM2-135M-Instruct.Q4_1.gguf --train gold.jsonl \\
        --pool pool.jsonl --out cache/fever
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from dora.errors import ModelError, first_line
from dora.files import file_sha256, stored

RECORD = "dora_gguf.json"
"""Written last into a converted directory: what it was converted from. Its presence marks the
conversion complete."""

_SHA256: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256: hash a big file once per process


def dora_home() -> Path:
    """dora's local cache root: ``$DORA_HOME``, else ``~/.cache/dora``."""
    home = os.environ.get("DORA_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "dora"


def gguf_file(name: str | Path) -> Path | None:
    """The GGUF file a model option names (the file, or a directory holding exactly one ``.gguf``
    and no ``config.json``), or None when it names something else (a checkpoint, a hub id)."""
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"{name}: no such GGUF file; check the path")
        return path
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
    if len(found) > 1:
        raise ModelError(f"{name}: holds {len(found)} GGUF files ({', '.join(p.name for p in found[:3])}); pass the "
                         "one you mean as the file path")
    return found[0] if found else None


def sha256_of(path: Path) -> str:
    """sha256 of a (large) file, computed once per process while it is unchanged."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        _SHA256[key] = file_sha256(path)
    return _SHA256[key]


def architecture(path: Path) -> str:
    """``general.architecture`` from a GGUF's header (read without loading any tensor)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelError(f"{path}: reading a GGUF needs the gguf package; pip install 'dora-distill[pretrained]'") from None
    try:
        reader = GGUFReader(str(path), "r")
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    except KeyError:
        raise ModelError(f"{path}: the GGUF names no general.architecture; not a model GGUF") from None
    except Exception as e:  # a truncated or crafted file: numpy and struct errors of every kind
        raise ModelError(f"{path}: not a readable GGUF file ({first_line(e, 160)})"
                         "; check that the download is complete") from None


def record(path: Path) -> dict[str, Any]:
    """What a manifest or run record says about a GGUF model: file name and sha256."""
    return {"file": path.name, "sha256": sha256_of(path)}


def find(name: str) -> Path | None:
    """The GGUF a model option names, or None (a checkpoint directory, a hub id): ``gguf_file``
    for names that can be local paths."""
    could_be = name.lower().endswith(".gguf") or Path(name).expanduser().is_dir()
    return gguf_file(name) if could_be else None


def lineage(name: str, *, role: str) -> dict[str, Any]:
    """``{"gguf": {...}}`` for a manifest or run record when the model option ``name`` is a GGUF
    (``role``: what it was, e.g. the teacher or the base it was fine-tuned from), else ``{}``."""
    found = find(name)
    return {"gguf": record(found) | {"role": role}} if found is not None else {}


def resolve(name: str) -> str:
    """The directory to load for a model option: the converted checkpoint for a GGUF (converting
    it first if this machine has not yet), ``name`` itself otherwise."""
    found = find(name)
    return str(converted(found)) if found is not None else name


def converted(path: Path) -> Path:
    """The plain checkpoint converted from the GGUF at ``path``: ``$DORA_HOME/gguf/<sha256>``."""
    if importlib.util.find_spec("gguf") is None:  # before hashing a big file
        raise ModelError(f"{path}: reading a GGUF needs the gguf package; pip install 'dora-distill[pretrained]'")
    digest = sha256_of(path)
    start = time.perf_counter()

    def build(tmp: Path) -> dict[str, Any]:
        arch = _check_supported(path)
        from dora.progress import console, quiet_libraries

        quiet_libraries()
        console.print(f"gguf: converting {path.name} ({path.stat().st_size / 1e6:.0f} MB) to a safetensors "
                      f"checkpoint in {dora_home() / 'gguf' / digest} (once per file)")
        _convert(path, tmp)
        return _record_for(path, arch)

    target, made = stored(dora_home() / "gguf", digest, RECORD, build, what="conversion of " + path.name)
    if made:
        from dora.progress import console

        console.print(f"gguf: converted {path.name} in {time.perf_counter() - start:.0f} s")
    return target


def _check_supported(path: Path) -> str:
    """Refuse, in one line and before the slow load, an architecture transformers cannot dequantise."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch = architecture(path)
    if arch not in GGUF_SUPPORTED_ARCHITECTURES or arch in ("general", "tokenizer"):  # metadata groups, not models
        import transformers

        raise ModelError(f"{path}: transformers {transformers.__version__} cannot dequantise a GGUF of architecture "
                         f"{arch!r} (it reads {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES)[:8])}, ...); convert "
                         "the original checkpoint to safetensors and pass its directory instead")
    return arch


def _convert(path: Path, out: Path) -> None:
    """Dequantise with transformers, then save a plain model: the loaded one carries a GGUF
    quantization config that ``save_pretrained`` refuses, so its weights move into a model built
    fresh from the same config without it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from dora.pipeline.models.kinds import kind_of

    where, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        config = AutoConfig.from_pretrained(where, gguf_file=name)
        auto = AutoModelForSeq2SeqLM if kind_of(config) == "seq2seq" else AutoModelForCausalLM
        loaded = auto.from_pretrained(where, gguf_file=name, dtype="float32")
    except ModelError:
        raise
    except Exception as e:  # transformers raises ValueError, KeyError, NotImplementedError... for unfit files
        raise ModelError(f"{path}: transformers cannot dequantise this GGUF ({first_line(e)}); convert the original "
                         "checkpoint to safetensors and pass its directory instead") from None
    import torch

    plain_config = loaded.config
    if hasattr(plain_config, "quantization_config"):
        del plain_config.quantization_config
    try:
        with torch.device("meta"):  # no second copy of the weights in memory: the loaded tensors move in
            plain = auto.from_config(plain_config)
        plain.load_state_dict(loaded.state_dict(), assign=True)
        plain.tie_weights()
        plain.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    except OSError as e:
        raise ModelError(f"{path}: could not write its converted checkpoint under {out.parent} ({e.strerror or e}); "
                         "free space there or set DORA_HOME to another disk") from None
    except (RuntimeError, ValueError) as e:
        raise ModelError(f"{path}: the dequantised weights do not fit the model transformers built for it "
                         f"({first_line(e)}); convert the original checkpoint to safetensors instead") from None


def _record_for(path: Path, arch: str) -> dict[str, Any]:
    import transformers

    from dora import __version__

    return {"source": str(path), "bytes": path.stat().st_size, "architecture": arch,
            "converted_with": {"transformers": transformers.__version__, "dora": __version__}}
