"""Files dora reads from users and strangers, and files it writes: the lowest layer beside ``errors``.

- ``read_document`` / ``read_object`` / ``read_mapping``: bounded JSON and YAML parsing, every
  failure one error naming the file, line and fix (records, --prices, --engine-config).
- ``write_atomic``: a file is replaced whole or not at all.
- ``parse_json``: JSON from strangers (a cache's manifest, a run's marker), bounded the same way.
- ``file_sha256``: a file's hash, read in chunks.
- ``check_output`` / ``starts_like_json_object``: dora writes a file only where it destroys nothing
  it did not write itself; ``stored``: a directory built once and found again by its record;
  ``png_marked``: a plot dora wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dora.errors import CacheError, ConfigError, DoraError, InputError, ModelError

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


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename: readers see the old file or
    the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def png_marked(path: Path, marker: str) -> bool:
    """Whether the PNG at ``path`` carries ``marker`` in a text chunk near its start (dora writes one
    into every plot, ``savefig(metadata={"Software": marker})``): how a rerun knows its own plot."""
    try:
        with open(path, "rb") as f:
            return marker.encode() in f.read(4096)
    except OSError:
        return False


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


def stored(root: Path, digest: str, record_name: str, build: Callable[[Path], dict[str, Any]], *,
           what: str) -> tuple[Path, bool]:
    """A directory ``root/digest`` made once by ``build`` and kept: content-addressed storage for
    things derived from a file (a converted model). Returns (the directory, whether this call made it).

    ``build(tmp)`` fills a fresh temporary sibling and returns the record written into it last as
    ``record_name`` (with ``sha256: digest``); the sibling is then renamed into place, so a
    directory with that record is complete. A failure removes the sibling; another process that
    finished first wins. A directory there without the record is refused, never deleted: dora
    cannot tell it made it."""
    target = root / digest
    if _has_record(target, record_name, digest):
        return target, False
    if target.exists() or target.is_symlink():
        raise ModelError(f"{target}: exists but is not a complete {what} (no {record_name} naming its sha256); "
                         "delete that directory and rerun")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}.", dir=root))  # ours alone: removed on any failure
    try:
        record = build(tmp)
        (tmp / record_name).write_text(json.dumps({**record, "sha256": digest}, indent=2) + "\n")
        try:
            tmp.rename(target)
        except OSError:
            if not _has_record(target, record_name, digest):  # not another process finishing first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, True


def _has_record(target: Path, record_name: str, digest: str) -> bool:
    marker = target / record_name
    if target.is_symlink() or not target.is_dir() or marker.is_symlink() or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()[:1 << 16]).get("sha256") == digest
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def parse_json(raw: bytes | str, where: str) -> Any:
    """``json.loads`` for files from strangers: every failure is one ``CacheError`` naming ``where``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise CacheError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start}); the file is damaged") from None
    if _depth(text) > MAX_DOCUMENT_DEPTH:
        raise CacheError(f"{where}: nested more than {MAX_DOCUMENT_DEPTH} levels deep; not a file dora wrote")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CacheError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                         "the file is damaged") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of thousands of digits
        raise CacheError(f"{where}: not a file dora wrote ({str(e).splitlines()[0][:120]})") from None


def _depth(text: str) -> int:
    """The deepest bracket nesting outside strings, without building anything."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DOCUMENT_DEPTH:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
