"""What dora accepts from a cache it did not write in this run: every cache may be crafted.

- JSON is parsed with bounds: a manifest nested 200,000 deep or holding a 5,000-digit integer
  is a ``CacheError`` naming the file, not a ``RecursionError``/``ValueError``.
- Paths: every file dora reads or copies out of a cache is reached through ``contained``: no
  component under the cache root may be a symbolic link, and the path must resolve inside the
  root, so a ``shards/`` or ``tokenizer/`` symlinked elsewhere is refused, never followed.
- The tokenizer: only the data files of a tokenizer (``TOKENIZER_FILES``) may be listed or
  present, ``tokenizer_config.json`` may not declare custom code (``auto_map``), and every file is
  checked against the manifest's size and sha256 before anything loads it; it is then loaded with
  ``trust_remote_code=False`` and ``local_files_only=True`` (``load_cache_tokenizer``), so no code
  shipped with a cache can run, whatever a terminal would answer to transformers' prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dora.errors import CacheError
from dora.files import file_sha256, parse_json

# The files of a tokenizer's data, as transformers and tokenizers save them; anything else (a .py
# file, config.json, a pickle) has no place in a cache's tokenizer directory.
TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "spiece.model", "tokenizer.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "merges.txt",
    "chat_template.jinja", "chat_template.json",
})


def contained(root: Path, rel: str) -> Path:
    """``root / rel`` when no component below ``root`` is a symlink and it resolves inside ``root``."""
    base = root.resolve()
    path = root
    for part in Path(rel).parts:
        if part in ("", ".", "..") or "/" in part:
            raise CacheError(f"{root / rel}: not a plain path inside the cache; refusing it")
        path = path / part
        if path.is_symlink():
            raise CacheError(f"{path}: is a symbolic link; a cache's files must lie inside it, refusing to follow it")
    real = path.resolve()
    if real != base and base not in real.parents:
        raise CacheError(f"{path}: resolves outside the cache ({real}); refusing it")
    return path


def check_tokenizer_name(name: str, where: str) -> None:
    """A manifest may list only tokenizer data files (``tokenizer/NAME`` with NAME allowed)."""
    file = name.removeprefix("tokenizer/")
    if file not in TOKENIZER_FILES:
        raise CacheError(f"{where}: lists tokenizer file {name!r}, which is not a tokenizer data file "
                         f"({', '.join(sorted(TOKENIZER_FILES))}); a cache ships no code or other files, refusing it")


def check_tokenizer_files(root: Path, listed: list[tuple[str, int, str]], *, hash_files: bool = True) -> Path:
    """Check the tokenizer directory of the cache at ``root`` against the manifest's entries
    (``(tokenizer/NAME, bytes, sha256)``) and return it: a real directory, holding exactly the
    listed files, each of the listed size and hash, declaring no custom code."""

    directory = contained(root, "tokenizer")
    if not directory.is_dir():
        raise CacheError(f"{directory}: missing; the cache's tokenizer is gone (pull the cache again)")
    if not listed:
        raise CacheError(f"{root}/manifest.json: lists no tokenizer files; the cache cannot be decoded")
    names = {file.removeprefix("tokenizer/"): (size, sha) for file, size, sha in listed}
    for path in sorted(directory.iterdir()):
        if path.name not in names:
            raise CacheError(f"{path}: not listed in the manifest; a cache's tokenizer directory holds only the "
                             "listed tokenizer files (remove it, or pull the cache again)")
    for name, (size, sha) in names.items():
        path = contained(root, f"tokenizer/{name}")
        if not path.is_file():
            raise CacheError(f"{path}: listed in the manifest but missing; pull the cache again")
        if path.stat().st_size != size:
            raise CacheError(f"{path}: {path.stat().st_size} bytes, the manifest says {size}; the file was changed")
        if hash_files and file_sha256(path) != sha:
            raise CacheError(f"{path}: sha256 does not match the manifest; the file was changed or damaged")
    config = directory / "tokenizer_config.json"
    if config.is_file():
        data = parse_json(config.read_bytes(), str(config))
        if not isinstance(data, dict):
            raise CacheError(f"{config}: expected a JSON object")
        if "auto_map" in data:
            raise CacheError(f"{config}: declares custom tokenizer code (auto_map); dora never runs code from a "
                             "cache, refusing it")
    return directory


def load_cache_tokenizer(root: Path, listed: list[tuple[str, int, str]]) -> Any:
    """The cache's tokenizer, checked first and loaded without any code from the cache."""
    from transformers import AutoTokenizer

    directory = check_tokenizer_files(root, listed)
    try:
        return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False, local_files_only=True)
    except Exception as e:  # transformers raises many types for a damaged directory
        raise CacheError(f"{directory}: cannot load the cached tokenizer ({str(e).splitlines()[0][:200]})") from None
