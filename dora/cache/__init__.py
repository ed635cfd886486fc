"""The label-cache format, version 2 (version 1 caches still open): a manifest, the teacher's tokenizer, Parquet shards.

This package imports no training code: anything that reads or writes caches can use it alone::

    from dora.cache import LabelCache
    cache = LabelCache.open("cache/")         # manifest, shard sizes and schema checked
    cache.manifest.teacher.vocab_size
    table = cache.read(["id", "target"])      # a pyarrow.Table
"""

from dora.cache.manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    GenerationInfo,
    Manifest,
    PoolInfo,
    ShardEntry,
    TeacherInfo,
    tokenizer_fingerprint,
)
from dora.cache.reader import LabelCache
from dora.cache.schema import shard_schema
from dora.cache.writer import CacheWriter, shard_name, shard_rows

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "CacheWriter", "GenerationInfo", "LabelCache", "Manifest",
    "PoolInfo", "ShardEntry", "TeacherInfo", "shard_name", "shard_rows", "shard_schema",
    "tokenizer_fingerprint",
]
