"""Loading teachers and students: seq2seq (T5 and friends), decoder-only (Llama, Qwen, ...), or,
for students of closed-label tasks only, an encoder classifier (BERT, MiniLM, RoBERTa, ...)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from dora.errors import ModelError
from dora.pipeline.models.kinds import ModelKind, classifier_checkpoint, kind_of


def _hub_hint(name: str) -> str:
    if Path(name).exists():
        return "check that the directory holds config.json and the weights"
    if _HUB_PROBED == [False]:
        return ("the hub did not answer within 3 s, so dora looked in the local Hugging Face cache only: pass a local "
                "directory (dora never needs the hub), or check the network (or set HTTPS_PROXY)")
    return "pass a local directory (dora never needs the hub), or check the model id and your network"


def _check_local(name: str) -> None:
    """A name that is clearly a path must exist: say so instead of asking the hub for it."""
    first = name.split("/", 1)[0]
    # A path by its look, or by its first part being a directory here (models/t5-typo, not org/name).
    looks_local = (name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
                   or ("/" in name and first not in ("", ".", "..") and Path(first).is_dir()))
    if looks_local and not Path(name).expanduser().exists():
        what = "GGUF file" if name.lower().endswith(".gguf") else "model directory"
        raise ModelError(f"{name}: no such {what}; check the path (hub ids look like org/name)")


def local(name: str) -> str:
    """What to load for a model option: a GGUF's converted checkpoint (``dora.pipeline.models.gguf``),
    else the name itself; a clearly local name that does not exist is refused, and a hub id with the
    hub out of reach is looked up in the local cache only (see ``offline_unless_reachable``)."""
    from dora.pipeline.models.gguf import resolve

    _check_local(name)
    if not Path(name).expanduser().exists():
        offline_unless_reachable()
    return resolve(name)


_HUB_PROBED: list[bool] = []  # once per process: whether the hub answered
_PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def offline_unless_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (``HF_ENDPOINT``) can be reached; if not, switch this process
    to offline mode (``HF_HUB_OFFLINE=1``): hub ids then come from the local cache or fail at once,
    instead of after the hub client's retries (about a minute with no network). One TCP connect,
    name lookup included, bounded by ``timeout``, once per process; skipped when offline mode is
    already on, and when a proxy is set (the hub is reached through it, not directly)."""
    import os
    import socket
    import threading
    from urllib.parse import urlsplit

    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(name) for name in _PROXIES):
        return True
    if not _HUB_PROBED:
        url = urlsplit(hub.ENDPOINT)
        address = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
        answered: list[bool] = []

        def connect() -> None:
            try:
                socket.create_connection(address, timeout=timeout).close()
                answered.append(True)
            except OSError:
                pass

        probe = threading.Thread(target=connect, daemon=True)  # a name lookup has no timeout of its own
        probe.start()
        probe.join(timeout)
        _HUB_PROBED.append(bool(answered))
        if not answered:
            os.environ["HF_HUB_OFFLINE"] = "1"  # for anything that reads it later (and child processes)
            hub.HF_HUB_OFFLINE = True  # for the hub client, which read it at import
    return _HUB_PROBED[0]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "tokenizer.model",
                   "vocab.json", "sentencepiece.bpe.model", "spm.model", "vocab.model", "tekken.json")
"""Files of which a local model directory holds at least one when its tokenizer is there (or a
``*.tiktoken`` file)."""


def require_tokenizer_files(name: str) -> None:
    """A local model directory must hold its tokenizer: transformers 5 would otherwise build an
    empty one from the model's config alone (five special tokens), and training would run on garbage ids."""
    root = Path(name).expanduser()
    if root.is_dir() and not any((root / f).is_file() for f in TOKENIZER_FILES) and not any(root.glob("*.tiktoken")):
        raise ModelError(f"{name}: no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...) beside the model; save "
                         "its tokenizer there (tokenizer.save_pretrained(DIR)) or copy them from where the model came from")


def load_tokenizer(name: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    name = local(name)
    require_tokenizer_files(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises OSError, ValueError, HTTP errors...
        raise ModelError(f"cannot load a tokenizer from {name!r} ({str(e).splitlines()[0][:200]}); {_hub_hint(name)}") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"tokenizer {name!r} has neither a pad nor an EOS token; add one with "
                             "tokenizer.add_special_tokens and save it")
        tok.pad_token = tok.eos_token
    return tok


def load_config(name: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    name = local(name)
    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelError(f"cannot read the model config of {name!r} ({str(e).splitlines()[0][:200]}); {_hub_hint(name)}") from None


def load_model(
    name: str, *, revision: str | None = None, trust_remote_code: bool = False, device_map: str | None = None,
    labels: tuple[str, ...] | None = None,
) -> tuple[Any, ModelKind]:
    """Load weights in float32 (training and labeling cast under accelerate where a device allows).

    ``device_map="auto"`` spreads the layers over the visible GPUs (labeling a teacher bigger than one).
    A classifier is loaded with a head over ``labels`` (in that order; ``id2label`` in its config):
    a bare encoder gets a new head, a classifier with other labels a new head too (said on the
    console); without ``labels`` it must already be a classifier that dora trained (its ``id2label``).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    name = local(name)
    config = load_config(name, revision=revision, trust_remote_code=trust_remote_code)
    kind = kind_of(config)
    extra: dict[str, Any] = {"device_map": device_map} if device_map else {}
    if kind == "classifier":
        extra |= _head(config, name, labels)
    auto = {"seq2seq": AutoModelForSeq2SeqLM, "causal": AutoModelForCausalLM,
            "classifier": AutoModelForSequenceClassification}[kind]
    reset = extra.pop("reset_head", False)

    def load() -> Any:
        return auto.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code, **extra)

    try:
        model = _quietly(load) if "num_labels" in extra else load()
        if reset:
            _reset_head(model)
    except Exception as e:
        raise ModelError(f"cannot load a {kind} model from {name!r} ({str(e).splitlines()[0][:200]}); {_hub_hint(name)}") from None
    return model, kind


def classifier_labels(config: Any) -> tuple[str, ...] | None:
    """The labels of a trained classifier's head, in id order (None: a bare encoder, or a head
    whose labels are transformers' placeholders ``LABEL_0``, ...)."""
    id2label = getattr(config, "id2label", None) or {}
    if not classifier_checkpoint(config) or not id2label:
        return None
    names = tuple(str(id2label[i]) for i in sorted(id2label, key=int))
    return None if all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names


def _head(config: Any, name: str, labels: tuple[str, ...] | None) -> dict[str, Any]:
    """``from_pretrained`` arguments that give a classifier its head over ``labels``."""
    trained = classifier_labels(config)
    if labels is None:
        if trained is None:
            raise ModelError(f"{name}: an encoder without a trained classification head (no id2label); train it "
                             "with `dora train-student --student ENCODER --task TASK` first")
        return {}
    if trained == tuple(labels):
        return {}
    head = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}, "ignore_mismatched_sizes": True}
    if classifier_checkpoint(config):
        from dora.progress import note

        note(f"{name}: its head predicts {', '.join(trained or ('unnamed labels',))}; training a new head over "
             f"{', '.join(labels)}")
        head["reset_head"] = True  # same-shaped weights would load under the new names: start them afresh
    return head


def _reset_head(model: Any) -> None:
    """Re-initialise a sequence classifier's head (``classifier``, ``pre_classifier`` or ``score``;
    each layer's own ``reset_parameters``) so no trained weights survive under other labels' names."""
    parts = [getattr(model, n) for n in ("pre_classifier", "classifier", "score") if hasattr(model, n)]
    if not parts:
        raise ModelError(f"{type(model).__name__}: cannot find its classification head to start afresh; give the "
                         "base encoder (without a head) as --student")
    import torch

    with torch.no_grad():
        for part in parts:
            for module in part.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()


def _quietly(load: Any) -> Any:
    """Run ``load`` without transformers' notice that a new head is initialised (dora says so itself)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return load()
    finally:
        logging.set_verbosity(level)


def weights_sha256(name: str) -> str | None:
    """sha256 over the safetensors files of a local model directory, or of a GGUF file (None for
    a hub id)."""
    from dora.pipeline.models.gguf import find, sha256_of

    found = find(name)
    if found is not None:
        return sha256_of(found)
    root = Path(name)
    files = sorted(root.glob("*.safetensors")) if root.is_dir() else []
    if not files:
        return None
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _WEIGHTS_SHA256:  # a big teacher is hashed once per process while unchanged
        _WEIGHTS_SHA256[key] = _hash_files(files)
    return _WEIGHTS_SHA256[key]


_WEIGHTS_SHA256: dict[tuple[tuple[str, int, int], ...], str] = {}


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def vocab_size(model: Any) -> int:
    """Size of the model's output layer (may exceed len(tokenizer): T5 pads it to 32128)."""
    return int(model.get_output_embeddings().weight.shape[0])


def check_top_k(k: int, vocab: int, name: str) -> None:
    """Refuse a k larger than the vocabulary (checked from the config before any training)."""
    v = vocab
    if k > v:
        raise ModelError(f"--top-k {k} exceeds the vocabulary of {name!r} ({v} tokens); use --top-k {v} or less")


def check_dtype(dtype: str, config: Any, name: str) -> None:
    """Refuse float16 for T5 models with gated activations (T5 v1.1, Flan-T5, mT5): their
    activations overflow float16's range and the labels come out as NaN or garbage."""
    gated = getattr(config, "is_gated_act", False) or str(getattr(config, "feed_forward_proj", "")).startswith("gated")
    if dtype == "float16" and getattr(config, "model_type", "") in ("t5", "mt5", "umt5") and gated:
        raise ModelError(f"--dtype float16 overflows {name!r} (a T5 v1.1 / Flan-T5 style model: its activations exceed "
                         "float16's range, giving NaN labels); use --dtype bfloat16 on a GPU that has it, or float32")


def save_hf(model: Any, tokenizer: Any, path: Path) -> None:
    """Save a plain Hugging Face checkpoint (safetensors) with its tokenizer, replacing ``path`` atomically."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half-written model behind
        raise
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def free_accelerator_memory() -> None:
    """Release memory held by dropped models before another engine loads its own copy."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
