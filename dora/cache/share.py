"""Pushing and pulling caches: any fsspec URL, or a Hugging Face Hub dataset repository.

    dora cache push caches/fever /mnt/shared/fever         # or file://, memory://, s3://, gs://
    dora cache push caches/fever hf://datasets/org/fever-t5xxl
    dora cache pull https://example.org/caches/fever caches/fever --shards 0,1
    dora cache pull hf://datasets/org/fever-t5xxl@v1 caches/fever

Only files the manifest names are moved (``manifest.json``, ``tokenizer/*``, ``shards/*``,
``README.md``), and the manifest is validated before anything else is read, so a stranger's
manifest cannot point outside the cache. A pull downloads every file to a temporary name with
its declared size as a hard limit, checks its sha256 and only then moves it into place; the
manifest comes last. A rerun skips files already present with the right hash, so an
interrupted transfer resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from dora.cache.card import dataset_card
from dora.cache.manifest import MANIFEST, MAX_MANIFEST_BYTES, Manifest, read_manifest, write_manifest
from dora.cache.reader import LabelCache
from dora.cache.trust import check_tokenizer_files, contained
from dora.errors import CacheError
from dora.files import file_sha256, parse_json, write_atomic

MAX_FILE_BYTES = 64 * 1024**3  # no single shard or tokenizer file is larger than this
CHUNK = 1 << 20
CARD = "README.md"


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise CacheError(f"{url}: cannot open this location ({e}); install the fsspec backend it needs "
                         "(s3fs, gcsfs, aiohttp for http)") from None


def _hub(url: str) -> tuple[str, str | None] | None:
    """``hf://datasets/org/name[@revision]`` -> (repo id, revision)."""
    if not url.startswith("hf://"):
        return None
    rest = url[len("hf://"):]
    if not rest.startswith("datasets/"):
        raise CacheError(f"{url}: caches live in dataset repositories; use hf://datasets/ORG/NAME")
    repo, _, revision = rest[len("datasets/"):].partition("@")
    if repo.count("/") != 1:
        raise CacheError(f"{url}: expected hf://datasets/ORG/NAME[@REVISION]")
    return repo, revision or None


def push(root: str | Path, dest: str, *, license: str = "other") -> dict[str, Any]:
    """Copy a complete, verified cache to ``dest`` with a dataset card; the manifest goes last.

    ``dest`` must be new or empty, an earlier push of this cache (its manifest), or one this
    push started and did not finish (its ``.dora-push.json``): anything else is refused before a
    byte is written. Nothing is ever written into the source cache.
    """
    cache = LabelCache.open(root)
    problems = cache.verify_checksums()
    if problems:
        raise CacheError(f"refusing to push a damaged cache: {problems[0]}")
    card = dataset_card(cache.manifest, license=license)
    files = [f.file for f in cache.manifest.tokenizer_files] + [s.file for s in cache.manifest.shards]
    hub = _hub(dest)
    if hub is not None:
        return _push_hub(cache, hub[0], card, files)
    fs, base = _fs(dest)
    base = base.rstrip("/")
    if _is_local(fs):
        here, there = cache.root.resolve(), Path(base).resolve()
        if here == there or here in there.parents or there in here.parents:
            raise CacheError(f"{dest}: is the cache itself or lies inside it (or it inside {dest}); push to "
                             "another location")
    marker = f"{base}/{PUSH_MARKER}"
    mine = json.dumps({"pool": cache.manifest.pool.fingerprint, "dora": "push"}).encode()
    with _remote_errors(dest):
        _check_push_target(fs, base, dest, cache.manifest, mine)
        fs.makedirs(base, exist_ok=True)
        fs.pipe_file(marker, mine)  # first: a rerun knows the files here are this push's
        sent = 0
        for rel in files:
            local = contained(cache.root, rel)
            remote = f"{base}/{rel}"
            if fs.exists(remote) and fs.size(remote) == local.stat().st_size:
                continue  # resumed push: already there
            fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(local), remote + ".partial")
            fs.mv(remote + ".partial", remote)
            sent += 1
        fs.pipe_file(f"{base}/{CARD}", card.encode())
        fs.pipe_file(f"{base}/{MANIFEST}", cache.manifest.to_json().encode())  # last: marks it complete
        fs.rm_file(marker)
    return {"dest": dest, "files": len(files) + 2, "sent": sent + 2}


PUSH_MARKER = ".dora-push.json"  # a push in progress: which cache it is sending


def _check_push_target(fs: Any, base: str, dest: str, manifest: Manifest, mine: bytes) -> None:
    """Refuse a destination that holds anything but this cache (or an unfinished push of it)."""
    if fs.exists(f"{base}/{MANIFEST}"):
        there = _parse_manifest(_read_capped(fs, f"{base}/{MANIFEST}", MAX_MANIFEST_BYTES), f"{dest}/{MANIFEST}")
        if there.pool.fingerprint != manifest.pool.fingerprint or there.identity() != manifest.identity():
            raise CacheError(f"{dest}: holds another cache (another pool, teacher or settings); push to a new "
                             "location, or delete that cache first")
        return
    if fs.exists(f"{base}/{PUSH_MARKER}"):
        if _read_capped(fs, f"{base}/{PUSH_MARKER}", 4096) != mine:
            raise CacheError(f"{dest}: holds an unfinished push of another cache; push to a new location")
        return
    if fs.exists(base) and (not fs.isdir(base) or fs.ls(base)):
        raise CacheError(f"{dest}: exists and is not empty, and is no dora cache; push to a new or empty location")


class _remote_errors:
    """Turns errors of a remote filesystem (a full disk, a refused connection) into one line naming it."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if value is None or isinstance(value, CacheError) or not isinstance(value, Exception):
            return
        raise CacheError(_describe(value, self.where)) from None


def _describe(e: BaseException, where: str) -> str:
    """One line for a transfer error: what failed and what to do about it."""
    import errno

    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    name = getattr(e, "filename", None) or where
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"{name}: no space left on the device; free space, then rerun (files already sent are kept)"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{name}: permission denied; choose a location you can write to"
    return f"{where}: transfer failed ({type(e).__name__}: {first}); check the location and the network, then rerun"


def _parse_manifest(raw: bytes, where: str) -> Manifest:
    return Manifest.from_dict(parse_json(raw, where), where)


def _push_hub(cache: LabelCache, repo: str, card: str, files: list[str]) -> dict[str, Any]:
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="dora-card-") as stage, _hub_errors(f"hf://datasets/{repo}"):
        (Path(stage) / CARD).write_text(card)
        api.create_repo(repo, repo_type="dataset", exist_ok=True)
        present = set(api.list_repo_files(repo, repo_type="dataset"))
        if MANIFEST in present:
            from huggingface_hub import hf_hub_download

            there = Path(hf_hub_download(repo, MANIFEST, repo_type="dataset", cache_dir=stage))
            other = _parse_manifest(there.read_bytes(), f"hf://datasets/{repo}/{MANIFEST}")
            if other.pool.fingerprint != cache.manifest.pool.fingerprint or other.identity() != cache.manifest.identity():
                raise CacheError(f"hf://datasets/{repo}: holds another cache; push to a new repository")
        elif present - {".gitattributes", CARD}:
            raise CacheError(f"hf://datasets/{repo}: holds files that are no dora cache; push to a new repository")
        for rel in files:
            contained(cache.root, rel)  # every file sent lies inside the cache
        api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=str(cache.root),
                          allow_patterns=[*files, MANIFEST], commit_message="dora: label cache")
        api.upload_file(repo_id=repo, repo_type="dataset", path_or_fileobj=str(Path(stage) / CARD), path_in_repo=CARD)
    return {"dest": f"hf://datasets/{repo}", "files": len(files) + 2}


class _hub_errors(_remote_errors):
    """Hub errors (offline, refused, unauthorised, missing repository) as one line."""

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if value is None or isinstance(value, CacheError) or not isinstance(value, Exception):
            return
        first = (str(value).splitlines() or [type(value).__name__])[0][:200]
        if type(value).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError") or "offline" in first.lower():
            raise CacheError(f"{self.where}: the Hugging Face Hub cannot be reached in offline mode "
                             "(HF_HUB_OFFLINE is set, or no network); unset it or use a reachable location") from None
        raise CacheError(f"{self.where}: the Hub refused or could not be reached ({type(value).__name__}: {first}); "
                         "check the repository name, your token (`hf auth login`) and the network") from None


def _select(manifest: Manifest, shards: list[int] | None, rows: int | None) -> Manifest:
    chosen = list(manifest.shards)
    if shards is not None:
        known = {s.index for s in chosen}
        missing = [i for i in shards if i not in known]
        if missing:
            raise CacheError(f"--shards {missing} are not in the cache (it has {sorted(known)})")
        chosen = [s for s in chosen if s.index in set(shards)]
    if rows is not None:
        kept, total = [], 0
        for s in chosen:
            if total >= rows:
                break
            kept.append(s)
            total += s.rows
        chosen = kept
    if len(chosen) == len(manifest.shards):
        return manifest
    return dataclasses.replace(manifest, shards=tuple(chosen),
                               lineage={**manifest.lineage, "subset": {"shards": [s.index for s in chosen],
                                                                       "of_rows": manifest.rows}})


PULL_MARKER = ".dora-pull.json"  # a pull in progress: which cache it is fetching


def pull(src: str, dest: str | Path, *, shards: list[int] | None = None, rows: int | None = None) -> Manifest:
    """Fetch a cache (or a subset of its shards) into ``dest``, verifying every file before use.

    ``dest`` must be new or empty, a cache of the same pool (an update), or an unfinished pull of
    this cache (its ``.dora-pull.json``); anything else is refused before anything is fetched.
    """
    if rows is not None and rows < 1:
        raise CacheError(f"--rows must be at least 1, got {rows}")
    dest = Path(dest)
    _check_pull_dest(dest, None)  # before any download: a wrong --out costs nothing
    hub = _hub(src)
    staging: Path | None = None
    created = not dest.exists()
    try:
        if hub is not None:
            staging = dest.with_name(dest.name + ".hub-download")
            src = _snapshot(hub[0], hub[1], staging)
        fs, base = _fs(src)
        base = base.rstrip("/")
        local = Path(base) if _is_local(fs) else None
        manifest_url = str(contained(local, MANIFEST)) if local is not None else f"{base}/{MANIFEST}"
        try:
            size = fs.size(manifest_url)
        except FileNotFoundError as e:
            if _unreachable(e):
                raise CacheError(f"{src}: cannot be reached ({_cause(e)}); check the URL and the network") from None
            raise CacheError(f"{src}: no {MANIFEST} there; not a dora cache (or not pushed completely)") from None
        except CacheError:
            raise
        except Exception as e:  # a backend's own connection errors
            raise CacheError(f"{src}: cannot be reached ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                             "check the URL and the network") from None
        if size is not None and size > MAX_MANIFEST_BYTES:
            raise CacheError(f"{src}: manifest of {size} bytes is larger than any real one; refusing it")
        manifest = _parse_manifest(_read_capped(fs, manifest_url, MAX_MANIFEST_BYTES), f"{src}/{MANIFEST}")
        if not manifest.complete:
            raise CacheError(f"{src}: the cache there is incomplete; pull it once its labeling has finished")
        wanted = _select(manifest, shards, rows)
        for entry in [*manifest.tokenizer_files, *wanted.shards]:
            if entry.bytes > MAX_FILE_BYTES:
                raise CacheError(f"{src}/{entry.file}: declared size {entry.bytes} bytes is beyond any real shard; refusing it")
        if local is not None:  # a local source: no file may be a link or resolve outside it
            for entry in [*manifest.tokenizer_files, *wanted.shards]:
                contained(local, entry.file)
        _check_pull_dest(dest, manifest)
        mine = json.dumps({"pool": manifest.pool.fingerprint, "dora": "pull"}).encode()
        try:
            dest.mkdir(parents=True, exist_ok=True)
            if not (dest / MANIFEST).exists():
                write_atomic(dest / PULL_MARKER, mine)  # a rerun knows these files are this pull's
            for folder in ("shards", "tokenizer"):
                for stale in contained(dest, folder).glob(".*.part-*"):
                    stale.unlink()  # left by a pull that died mid-file
            for entry in manifest.tokenizer_files:
                _fetch(fs, f"{base}/{entry.file}", contained(dest, entry.file), entry.bytes, entry.sha256,
                       f"{src}/{entry.file}")
            try:  # before any shard: a tokenizer that declares code is not kept
                check_tokenizer_files(dest, manifest.tokenizer_listing())
            except CacheError:
                for entry in manifest.tokenizer_files:
                    (dest / entry.file).unlink(missing_ok=True)
                raise
            for entry in wanted.shards:
                _fetch(fs, f"{base}/{entry.file}", contained(dest, entry.file), entry.bytes, entry.sha256,
                       f"{src}/{entry.file}")
            write_manifest(dest, wanted)
        except OSError as e:
            raise CacheError(_describe(e, str(dest))) from None
        (dest / PULL_MARKER).unlink(missing_ok=True)
        LabelCache.open(dest)  # the cheap checks, as every consumer will run them
        return wanted
    except BaseException:
        if created and dest.is_dir() and not any(p.name != PULL_MARKER for p in dest.rglob("*") if p.is_file()):
            shutil.rmtree(dest, ignore_errors=True)  # nothing fetched: leave no empty directory behind
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _check_pull_dest(dest: Path, manifest: Manifest | None) -> None:
    """``dest`` is new, empty, a cache of the same pool, or an unfinished pull of this cache."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise CacheError(f"{dest}: exists and is not a directory; pull into a new or empty directory")
    if not dest.exists() or not any(dest.iterdir()):
        return
    if (dest / MANIFEST).exists() or (dest / MANIFEST).is_symlink():
        try:
            here = read_manifest(dest)
        except CacheError as e:
            raise CacheError(f"{dest}: holds something that is not a readable cache ({e}); pull into a new or "
                             "empty directory") from None
        if manifest is not None and here.pool.fingerprint != manifest.pool.fingerprint:
            raise CacheError(f"{dest}: holds another cache; pull into an empty directory")
        return
    marker = dest / PULL_MARKER
    if marker.is_file() and not marker.is_symlink():
        if manifest is None or marker.read_bytes()[:4096] == json.dumps(
                {"pool": manifest.pool.fingerprint, "dora": "pull"}).encode():
            return
        raise CacheError(f"{dest}: holds an unfinished pull of another cache; pull into an empty directory")
    raise CacheError(f"{dest}: exists and is not empty, and is no dora cache; pull into a new or empty directory")


def _unreachable(e: BaseException) -> bool:
    """fsspec's http raises FileNotFoundError for a refused connection too: its cause tells them apart."""
    cause = e.__cause__ or e.__context__
    return cause is not None and getattr(cause, "status", None) not in (404, 410)


def _cause(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    return f"{type(cause).__name__}: {str(cause).splitlines()[0][:160] if str(cause) else ''}"


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _read_capped(fs: Any, url: str, limit: int) -> bytes:
    with fs.open(url, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CacheError(f"{url}: larger than {limit} bytes; refusing it")
    return data


def _fetch(fs: Any, url: str, target: Path, size: int, sha256: str, shown: str) -> None:
    if target.is_file() and target.stat().st_size == size and file_sha256(target) == sha256:
        return  # already here from an interrupted pull
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part-{os.getpid()}")
    got = 0
    try:
        with fs.open(url, "rb") as remote, open(part, "wb") as local:
            while chunk := remote.read(CHUNK):
                got += len(chunk)
                if got > size:
                    raise CacheError(f"{shown}: more than the {size} bytes the manifest declares; refusing it")
                local.write(chunk)
    except FileNotFoundError:
        part.unlink(missing_ok=True)
        raise CacheError(f"{shown}: listed in the manifest but missing at the source") from None
    except CacheError:
        part.unlink(missing_ok=True)
        raise
    if got != size or file_sha256(part) != sha256:
        part.unlink(missing_ok=True)
        what = f"{got} bytes, the manifest says {size}" if got != size else "sha256 does not match the manifest"
        raise CacheError(f"{shown}: {what}; the source is damaged or was changed, nothing was kept")
    os.replace(part, target)


def _snapshot(repo: str, revision: str | None, staging: Path) -> str:
    from huggingface_hub import snapshot_download

    with _hub_errors(f"hf://datasets/{repo}"):
        path = snapshot_download(repo_id=repo, repo_type="dataset", revision=revision, local_dir=str(staging),
                                 allow_patterns=[MANIFEST, "tokenizer/*", "shards/*.parquet"])
    return str(path)
