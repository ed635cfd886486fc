"""Fields every stage config shares, documented and validated once.

Stage configs (``TeacherLabelConfig``, ``TrainStudentConfig``) inherit these frozen,
keyword-only bases and add their own fields; ``__post_init__`` of each stage calls
``super().__post_init__()`` so every check runs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from dora.errors import ConfigError, DoraError, InputError
from dora.pipeline.data import Fields

Preset = Literal["none", "paper"]
C = TypeVar("C")

# The paper's settings (Kang, Xu and Ritter 2023: its README's commands and run_t5.py defaults):
# AdamW at 3e-5, batch 32, linear decay without warm-up or weight decay, sources cut to 128
# tokens and targets to 8, generation with max_length 8 (7 new tokens after T5's start token),
# KD at T = 2 with no cross-entropy term, evaluation every 2,000 steps. Distillation ran 50
# epochs, training on gold labels (the annotate route, and the T5-XXL teacher) 20.
PAPER: dict[str, Any] = {
    "learning_rate": 3e-5, "batch_size": 32, "grad_accum": 1, "warmup_ratio": 0.0, "weight_decay": 0.0,
    "max_source_length": 128, "max_target_length": 8, "max_new_tokens": 7,
}
PAPER_STUDENT: dict[str, Any] = {"temperature": 2.0, "alpha": 0.0, "eval_every": 2000}
PAPER_EPOCHS = {"distill": 50.0, "annotate": 20.0}


MAX_EPOCHS = 1e6  # far past any real run; bounds the step count computed from it


PRESET_FIELDS = frozenset({*PAPER, *PAPER_STUDENT, "epochs"})
"""Every field a preset may set: an option given explicitly wins over the preset."""


def with_preset(cls: type[C], preset: str, given: dict[str, Any]) -> C:
    """Build the stage config ``cls`` from the options ``given`` explicitly, the preset's values
    filling every field not given (``preset`` "none": the config's own defaults).

    The student distills (50 epochs) when a cache is given and annotates (20) otherwise; the
    teacher is fine-tuned on gold labels like the paper's annotate runs (20 epochs).
    """
    if preset not in ("none", "paper"):
        raise ConfigError(f"--preset must be none or paper, got {preset!r}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if preset == "paper":
        # The teacher's ``temperature`` is its sampling temperature, not KD's: student settings stay with students.
        values = {**PAPER, **(PAPER_STUDENT if getattr(cls, "PRESET_STAGE", "") == "student" else {})}
        route = "distill" if given.get("cache") is not None else "annotate"
        values["epochs"] = PAPER_EPOCHS[route]
        values = {k: v for k, v in values.items() if k in names and k not in given}
    config = cls(**{**values, **given})
    object.__setattr__(config, "preset", preset)
    object.__setattr__(config, "preset_values", values)
    return config


def as_paths(config: Any, *names: str) -> None:
    """Let users pass strings for path fields of a frozen config."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not isinstance(value, Path):
            object.__setattr__(config, name, Path(value))


MAX_DOCUMENT_BYTES = 16 << 20
"""Largest JSON/YAML file dora parses: records, prices and settings are kilobytes, and a bound
keeps a hostile file from costing gigabytes of memory."""
MAX_DOCUMENT_DEPTH = 64
"""Deepest nesting accepted: dora's own records nest 4 deep; deeper structures only exist to
make later recursive code (json.dumps, deepcopy) fail far from the file."""
MAX_DOCUMENT_NODES = 1_000_000
"""Most values a document may expand to (YAML aliases can make a few lines expand to billions)."""


def _document_error(path: Path, message: str, *, line: int | None, fix: str,
                    error: type[DoraError]) -> DoraError:
    if error is InputError:
        return InputError(path, message, line=line, fix=fix)
    where = f"{path}" + (f", line {line}" if line is not None else "")
    return error(f"{where}: {message}" + (f"; {fix}" if fix else ""))


def read_document(path: Path, *, fix: str, error: type[DoraError] = InputError) -> Any:
    """Parse a JSON or YAML file (YAML by a .yaml/.yml extension) that a user, or a stranger, wrote.

    Every failure is one ``error`` naming the file (and line and column for a syntax error), never a
    traceback: a missing file or a directory, a file too large, not UTF-8, a syntax error, nesting
    too deep (the parsers recurse: RecursionError), an integer of thousands of digits (ValueError
    since Python 3.11), YAML aliases expanding past ``MAX_DOCUMENT_NODES``, a YAML value JSON has
    no type for (dates, bytes, sets) or a key that is not a string. ``fix`` ends every message.
    NaN and infinities parse (dora's own records may hold them): callers check the numbers they use.
    """
    path = Path(path)

    def fail(message: str, line: int | None = None) -> DoraError:
        return _document_error(path, message, line=line, fix=fix, error=error)

    if not path.is_file():
        raise fail("file not found" if not path.exists() else "is a directory, not a file"
                   if path.is_dir() else "not a regular file")
    if path.stat().st_size > MAX_DOCUMENT_BYTES:
        raise fail(f"{path.stat().st_size:,} bytes, more than the {MAX_DOCUMENT_BYTES:,} dora reads from such a file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise fail(f"not UTF-8 text (byte {e.start + 1})") from None
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    kind = "YAML" if yaml_file else "JSON"
    if yaml_file:
        import yaml

        syntax_errors: tuple[type[Exception], ...] = (yaml.YAMLError,)
    else:
        syntax_errors = (json.JSONDecodeError,)
    try:
        loaded = _parse_yaml(text) if yaml_file else json.loads(text)
    except syntax_errors as e:
        raise fail(*_syntax_error(kind, e)) from None
    except RecursionError:
        raise fail(f"not valid {kind} for dora: nested too deeply") from None
    except ValueError as e:  # Python's limit on the digits of an integer
        raise fail(f"not valid {kind} for dora ({str(e).split(';')[0][:120]})") from None
    trouble = _unplain(loaded)
    if trouble:
        raise fail(f"not valid {kind} for dora: {trouble}")
    return loaded


def _parse_yaml(text: str) -> Any:
    import yaml

    # libyaml when present: fast, and it stops runaway nesting itself (pure-Python YAML recurses).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)  # noqa: S506 -- a safe loader: no tags that build objects


def _syntax_error(kind: str, e: Exception) -> tuple[str, int | None]:
    """(one-line message naming the column, line) of a JSON or YAML syntax error."""
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg} at column {e.colno})", e.lineno
    mark = getattr(e, "problem_mark", None)
    problem = " ".join(str(getattr(e, "problem", None) or e).split())[:160]  # YAML's own text spans lines
    if mark is None:
        return f"not valid {kind} ({problem})", None
    return f"not valid {kind} ({problem} at column {mark.column + 1})", mark.line + 1


def _unplain(value: Any) -> str:
    """Why ``value`` is not a plain JSON-like tree of bounded size and depth ("" when it is).

    Iterative, so a deep tree cannot exhaust the stack; aliased YAML nodes count every time they
    are reached, which bounds a "billion laughs"."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_DOCUMENT_NODES:
            return f"more than {MAX_DOCUMENT_NODES:,} values (YAML aliases expanding?)"
        if depth > MAX_DOCUMENT_DEPTH:
            return f"nested more than {MAX_DOCUMENT_DEPTH} levels deep"
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"key {key!r} is a {type(key).__name__}, not a string; quote it"
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif item is not None and not isinstance(item, (str, int, float, bool)):
            return f"a {type(item).__name__} value ({str(item)[:40]!r}), which JSON has no type for; quote it"
    return ""


def read_object(path: Path, *, expected: str, fix: str, error: type[DoraError] = InputError) -> dict[str, Any]:
    """``read_document`` of a file that must hold one JSON object (a YAML mapping): the shared reader
    for every user's or stranger's JSON/YAML record (run.json, --prices, --engine-config, ...)."""
    loaded = read_document(path, fix=fix, error=error)
    if not isinstance(loaded, dict):
        raise _document_error(path, f"expected {expected}, got {_json_type(loaded)}", line=None, fix=fix,
                              error=error)
    return loaded


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def read_mapping(path: Path, *, option: str, expected: str) -> dict[str, Any]:
    """A JSON or YAML file (by extension) holding a mapping; errors name the file, the option and the fix."""
    if not Path(path).exists():
        raise ConfigError(f"{path}: file not found; check {option}")
    return read_object(path, expected=expected, fix=f"{option} needs {expected}", error=ConfigError)


def check_number(value: Any, option: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """``value`` as a float when it is a finite number in range, else a ConfigError naming ``option``.

    NaN compares false with everything, so ``x < 0`` lets it through: every float a user gives
    passes here. ``low``/``high`` bound the range, ``*_open`` excludes the bound itself."""
    ok = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and math.isfinite(value))
    # Compared before float(): an int of hundreds of digits compares exactly but overflows a float.
    ok = ok and ((low is None or (value > low if low_open else value >= low))
                 and (high is None or (value < high if high_open else value <= high)))
    try:
        number = float(value) if ok else math.nan
    except OverflowError:
        ok = False
    if not ok:
        left = "" if low is None else f"{'above' if low_open else 'at least'} {low:g}"
        right = "" if high is None else f"{'below' if high_open else 'at most'} {high:g}"
        bounds = " and ".join(x for x in (left, right) if x)
        raise ConfigError(f"{option} must be a finite number{' ' + bounds if bounds else ''}, got {_shown(value)}"
                          + (f"; {hint}" if hint else ""))
    return number


def _shown(value: Any) -> str:
    try:
        return repr(value)[:60]
    except ValueError:  # an int past Python's digit limit cannot even be printed
        return "an integer of thousands of digits"


def check_output(path: Path, *, option: str, inputs: Iterable[Path | None] = (),
                 ours: Callable[[Path], bool] | None = None, overwrite: bool = False) -> None:
    """Refuse to write ``path`` where it would destroy something: dora never writes over one of its
    ``inputs`` (even with ``overwrite``), a directory, or an existing file that ``ours`` does not
    recognise as an earlier output of the same kind (unless ``overwrite``). Checked before any work."""
    for source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise ConfigError(f"{option} {path} would overwrite the input file {source}; choose another {option}")
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; give the path of a file to write")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a directory; choose another {option}")
    if not (path.exists() or path.is_symlink()) or overwrite:
        return
    if ours is not None and not path.is_symlink() and ours(path):
        return
    raise ConfigError(f"{option} {path} exists and is not a file dora wrote there before; choose a new path, "
                      "or pass --overwrite to replace it")


def _same_file(a: Path, b: Path) -> bool:
    """Whether writing ``a`` would write over ``b`` (through symlinks and hard links too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): writing cannot touch the other
        return a.absolute() == b.absolute()


def starts_like_json_object(path: Path, keys: Iterable[str], *, lines: bool = False) -> bool:
    """Whether ``path`` holds a JSON object with every key in ``keys`` (its first line, for JSON Lines):
    how dora recognises files it wrote before. Reads at most ``MAX_DOCUMENT_BYTES``."""
    try:
        with open(path, "rb") as f:
            raw = f.readline(MAX_DOCUMENT_BYTES) if lines else f.read(MAX_DOCUMENT_BYTES + 1)
        if len(raw) > MAX_DOCUMENT_BYTES:
            return False
        loaded = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # unreadable or not JSON: not ours
        return False
    return isinstance(loaded, dict) and all(k in loaded for k in keys)


def positive_ints(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TaskInputs:
    """Which task, and how to read its files."""

    task: str
    """Task name (fever, multipit_id, stanceosaurus, wlp, nq, multipit_gen), or your own with ``metric``."""
    metric: str | None = None
    """Metric for a task of your own (accuracy, f1, squad, bleu, rouge)."""
    prefix: str | None = None
    """Source prefix; default ``"<task>: "``."""
    fields: Fields = field(default_factory=Fields)
    """Column names of source, target and id in the input files."""
    max_source_length: int = 256
    """Input tokens kept (prefix included); longer inputs are cut."""
    max_target_length: int = 64
    """Target tokens trained on (EOS included)."""
    max_new_tokens: int = 64
    """Most tokens generated per output (EOS included)."""
    revision: str | None = None
    """Hub revision of the model."""
    trust_remote_code: bool = False
    """Allow model code from the model's repository to run. Off unless you trust it."""

    def __post_init__(self) -> None:
        positive_ints(self, "max_source_length", "max_target_length", "max_new_tokens")


@dataclass(frozen=True, kw_only=True)
class Optimisation:
    """How a model is trained (teacher fine-tuning or student training)."""

    PRESET_STAGE: ClassVar[str] = "teacher"  # which preset settings apply (see ``with_preset``)

    epochs: float = 3.0
    """Training epochs (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Optimizer steps; overrides ``epochs``."""
    batch_size: int = 16
    """Training micro-batch size."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    learning_rate: float = 3e-4
    """Peak AdamW learning rate (linear warm-up, then linear decay)."""
    warmup_ratio: float = 0.0
    """Fraction of steps spent warming the learning rate up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    seed: int = 42
    """Seed for data order and initialisation."""
    report_to: str = "none"
    """Where training curves go besides ``curves.csv``: none, tensorboard or wandb."""
    preset: str = field(default="none", init=False)
    """The settings preset this config was built with (``with_preset``): none or paper."""
    preset_values: dict[str, Any] = field(default_factory=dict, init=False)
    """The fields the preset set (every one not given explicitly)."""

    def __post_init__(self) -> None:
        positive_ints(self, "batch_size", "grad_accum")
        if self.max_steps is not None:
            positive_ints(self, "max_steps")
        # Every float is checked for NaN and infinity too: NaN passes any `x < 0` test.
        if self.max_steps is None:
            check_number(self.epochs, "--epochs", low=0, low_open=True, high=MAX_EPOCHS)
        else:  # ignored with --max-steps, but never nonsense
            check_number(self.epochs, "--epochs", low=0, high=MAX_EPOCHS)
        check_number(self.learning_rate, "--learning-rate", low=0, high=1, low_open=True, high_open=True,
                     hint="try 1e-4 to 1e-3 for T5")
        check_number(self.warmup_ratio, "--warmup-ratio", low=0, high=1, high_open=True)
        check_number(self.weight_decay, "--weight-decay", low=0, high=1, hint="AdamW decays usually take 0 to 0.1")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            # The loop seeds torch with seed * 1,000,003 + epoch, which must fit in 64 bits.
            raise ConfigError(f"--seed must be an integer from 0 to {2**32 - 1}, got {self.seed!r}")
        from dora.pipeline.tracking import check_report_to

        check_report_to(self.report_to)

    def loop_settings(self, *, eval_every: int | None, save_every: int | None, resume: bool = True,
                      patience: int | None = None) -> Any:
        from dora.pipeline.training import LoopSettings

        names = {f.name for f in fields(Optimisation)} - {"report_to", "preset", "preset_values"}
        return LoopSettings(**{n: getattr(self, n) for n in names}, eval_every=eval_every,
                            save_every=save_every, resume=resume, patience=patience)
