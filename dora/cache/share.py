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
from dora.cache.manifest import MANIFEST, MAX_MANIFEST_BYTES, Manifest, file_sha256, write_manifest
from dora.cache.reader import LabelCache
from dora.errors import CacheError

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
    """Copy a complete, verified cache to ``dest`` with a dataset card; the manifest goes last."""
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
    sent = 0
    for rel in files:
        local = cache.root / rel
        remote = f"{base.rstrip('/')}/{rel}"
        if fs.exists(remote) and fs.size(remote) == local.stat().st_size:
            continue  # resumed push: already there
        fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local), remote + ".partial")
        fs.mv(remote + ".partial", remote)
        sent += 1
    fs.pipe_file(f"{base.rstrip('/')}/{CARD}", card.encode())
    fs.pipe_file(f"{base.rstrip('/')}/{MANIFEST}", cache.manifest.to_json().encode())  # last: marks it complete
    return {"dest": dest, "files": len(files) + 2, "sent": sent + 2}


def _push_hub(cache: LabelCache, repo: str, card: str, files: list[str]) -> dict[str, Any]:
    from huggingface_hub import HfApi

    stage = cache.root / ".push-card"
    stage.mkdir(exist_ok=True)
    (stage / CARD).write_text(card)
    api = HfApi()
    api.create_repo(repo, repo_type="dataset", exist_ok=True)
    api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=str(cache.root),
                      allow_patterns=[*files, MANIFEST], commit_message="dora: label cache")
    api.upload_file(repo_id=repo, repo_type="dataset", path_or_fileobj=str(stage / CARD), path_in_repo=CARD)
    shutil.rmtree(stage, ignore_errors=True)
    return {"dest": f"hf://datasets/{repo}", "files": len(files) + 2}


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


def pull(src: str, dest: str | Path, *, shards: list[int] | None = None, rows: int | None = None) -> Manifest:
    """Fetch a cache (or a subset of its shards) into ``dest``, verifying every file before use."""
    dest = Path(dest)
    hub = _hub(src)
    if hub is not None:
        src = _snapshot(hub[0], hub[1], dest)
    fs, base = _fs(src)
    base = base.rstrip("/")
    manifest_url = f"{base}/{MANIFEST}"
    try:
        size = fs.size(manifest_url)
    except FileNotFoundError:
        raise CacheError(f"{src}: no {MANIFEST} there; not a dora cache (or not pushed completely)") from None
    if size is not None and size > MAX_MANIFEST_BYTES:
        raise CacheError(f"{src}: manifest of {size} bytes is larger than any real one; refusing it")
    raw = _read_capped(fs, manifest_url, MAX_MANIFEST_BYTES)
    try:
        manifest = Manifest.from_dict(json.loads(raw.decode("utf-8")), f"{src}/{MANIFEST}")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheError(f"{src}/{MANIFEST}: not valid JSON ({e})") from None
    if not manifest.complete:
        raise CacheError(f"{src}: the cache there is incomplete; pull it once its labeling has finished")
    wanted = _select(manifest, shards, rows)
    for entry in [*manifest.tokenizer_files, *wanted.shards]:
        if entry.bytes > MAX_FILE_BYTES:
            raise CacheError(f"{src}/{entry.file}: declared size {entry.bytes} bytes is beyond any real shard; refusing it")
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / MANIFEST).exists():
        here = json.loads((dest / MANIFEST).read_text())
        if here.get("pool", {}).get("fingerprint") != manifest.pool.fingerprint:
            raise CacheError(f"{dest}: holds another cache; pull into an empty directory")
    if _is_local(fs):  # a local source: no file may resolve outside it (symlinks)
        root = Path(base).resolve()
        for entry in [*manifest.tokenizer_files, *wanted.shards]:
            real = Path(f"{base}/{entry.file}").resolve()
            if root not in real.parents:
                raise CacheError(f"{src}/{entry.file}: resolves outside the cache ({real}); refusing it")
    for stale in [*dest.glob("shards/.*.part-*"), *dest.glob("tokenizer/.*.part-*")]:
        stale.unlink()  # left by a pull that died mid-file
    for entry in [*manifest.tokenizer_files, *wanted.shards]:
        _fetch(fs, f"{base}/{entry.file}", dest / entry.file, entry.bytes, entry.sha256, f"{src}/{entry.file}")
    write_manifest(dest, wanted)
    if hub is not None:
        shutil.rmtree(Path(src), ignore_errors=True)
    LabelCache.open(dest)  # the cheap checks, as every consumer will run them
    return wanted


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


def _snapshot(repo: str, revision: str | None, dest: Path) -> str:
    from huggingface_hub import snapshot_download

    staging = dest.with_name(dest.name + ".hub-download")
    path = snapshot_download(repo_id=repo, repo_type="dataset", revision=revision, local_dir=str(staging),
                             allow_patterns=[MANIFEST, "tokenizer/*", "shards/*.parquet"])
    return str(path)
