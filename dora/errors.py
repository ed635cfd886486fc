"""dora's exceptions. Library code raises these; ``dora.cli`` turns them into one-line messages.

Every message says what is wrong, where (file and row when there is one), and what to do. Errors
of the user's environment that are not dora's (a full disk, the hub offline, a file no parser can
read) get their advice here too (``environment_error``).
"""

from __future__ import annotations

from pathlib import Path


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors
    that quote what a library said."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


class DoraError(Exception):
    """Base class: a problem the user can fix. The CLI prints ``error: <message>`` and exits 2."""

    exit_code = 2


class ConfigError(DoraError):
    """An option value that cannot work (bad range, missing file, conflicting options)."""


class InputError(DoraError):
    """A data file that cannot be read as examples (bad JSON, missing field, empty, ...)."""

    def __init__(self, path: object, message: str, *, line: int | None = None, fix: str = "") -> None:
        where = f"{path}" + (f", line {line}" if line is not None else "")
        text = f"{where}: {message}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)
        self.path, self.line, self.fix = path, line, fix


class CacheError(DoraError):
    """A label cache that is missing, incomplete, corrupt, or does not fit the run."""


class ModelError(DoraError):
    """A model or tokenizer that cannot be loaded or does not fit the stage."""


class TrainingError(DoraError):
    """Training diverged (a non-finite loss); the last checkpoint is kept."""


class Interrupted(DoraError):
    """Ctrl-C or SIGTERM: the message says exactly what was kept and how to continue (exit 130)."""

    exit_code = 130


class CheckpointError(TrainingError):
    """A checkpoint that cannot be resumed safely (foreign files, corrupt, another model) or written."""


_NETWORK_MODULES = ("requests", "urllib3", "httpx", "httpx2", "httpcore", "aiohttp", "botocore", "gcsfs", "s3fs")
_NETWORK_ERRNOS = frozenset({"ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "ENETUNREACH", "ENETDOWN", "EHOSTUNREACH",
                             "EHOSTDOWN", "ETIMEDOUT"})


def environment_error(e: Exception) -> str | None:
    """A one-line message with the right advice for an error of the user's environment (an OSError
    by errno, the Hugging Face Hub, the network, a JSON/YAML parser giving up on a file); None for
    a bug in dora. ``dora.cli`` prints it."""
    import errno
    import socket

    if isinstance(e, (RecursionError, ValueError)) and not isinstance(e, UnicodeError):
        if _raised_by_parser(e):
            what = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0][:120]
            return (f"JSON or YAML that dora read (a file, or an option's value) is not valid for dora ({what}); "
                    "check the files and values given")
        return None
    module = type(e).__module__.split(".")[0]
    if module == "huggingface_hub":
        return _hub_error(e)
    if not isinstance(e, OSError):
        if module in _NETWORK_MODULES:
            return f"cannot reach the server ({first_line(e)}); check the URL and the network"
        return None
    names = [str(f) for f in (e.filename, e.filename2) if f is not None]
    where = " -> ".join(names) + ": " if names else ""
    reason = e.strerror or first_line(e)
    code = errno.errorcode.get(e.errno or 0, "")
    if isinstance(e, IsADirectoryError):
        return f"{where}is a directory; a file was expected there, give the path of a file"
    if isinstance(e, NotADirectoryError):
        return f"{where}{reason}; a directory was expected there, but the path (or a folder in it) is a file"
    if isinstance(e, FileNotFoundError):
        return f"{where}no such file or directory; check the path"
    if isinstance(e, FileExistsError):
        return f"{where}already exists; choose another path, or remove it if it is yours to remove"
    if code in ("ENOSPC", "EDQUOT", "EFBIG"):
        return f"{where}{reason}; free disk space (or quota), then rerun: complete work is kept"
    if isinstance(e, PermissionError) or code in ("EACCES", "EPERM", "EROFS"):
        return f"{where}{reason}; fix the permissions or choose a writable path, then rerun"
    if (isinstance(e, (ConnectionError, TimeoutError, socket.gaierror, socket.herror)) or code in _NETWORK_ERRNOS
            or module in _NETWORK_MODULES or module == "urllib"):
        return (f"{where}cannot reach the server ({first_line(e)}); check the URL and the network, or set "
                "HF_HUB_OFFLINE=1 to use only local files")
    if code in ("EMFILE", "ENFILE"):
        return f"{where}{reason}; too many open files: raise the limit (ulimit -n), then rerun"
    if code == "ENOMEM":
        return f"{where}{reason}; out of memory: use smaller batches or a larger machine"
    if code == "EIO":
        return f"{where}{reason}; the disk or network file system failed: check it, then rerun"
    return f"{where}{reason}; check the path and the device it is on, then rerun"


def _hub_error(e: Exception) -> str:
    """The Hugging Face Hub's errors, by class name (the hub is imported only when it was used)."""
    kinds = {k.__name__ for k in type(e).__mro__}
    detail = first_line(e)
    if "OfflineModeIsEnabled" in kinds:
        return f"the Hugging Face Hub cannot be reached: HF_HUB_OFFLINE is set ({detail}); unset it, or give local paths"
    if "LocalEntryNotFoundError" in kinds:
        return (f"not in the local Hugging Face cache, and the hub cannot be reached ({detail}); check the network, "
                "unset HF_HUB_OFFLINE, or give a local path")
    if "GatedRepoError" in kinds:
        return f"a gated repository on the hub ({detail}); accept its terms on the hub, then log in (hf auth login)"
    if "RepositoryNotFoundError" in kinds:
        return f"no such repository on the hub, or it is private ({detail}); check the id, or log in (hf auth login)"
    if "RevisionNotFoundError" in kinds:
        return f"no such revision on the hub ({detail}); check --revision"
    if "EntryNotFoundError" in kinds:
        return f"no such file in the hub repository ({detail}); check the path"
    return f"the Hugging Face Hub failed ({detail}); check the network and the id, or set HF_HUB_OFFLINE=1"


_PARSER_FILES = {"json": {"__init__.py", "decoder.py", "scanner.py"},
                 "yaml": {"__init__.py", "cyaml.py", "loader.py", "reader.py", "scanner.py", "parser.py", "composer.py",
                          "constructor.py"}}


def _raised_by_parser(e: BaseException) -> bool:
    """Whether ``e`` came from json's or yaml's reading code (a hostile file, not a bug in dora;
    their writers, json.dumps of a cycle say, are bugs)."""
    tb, last = e.__traceback__, ""
    while tb is not None:  # the innermost Python frame: C parsers raise from their Python caller
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    path = Path(last)
    return path.name in _PARSER_FILES.get(path.parent.name, set())
