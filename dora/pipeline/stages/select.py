"""``dora cache select``: an annotation queue of the pool rows the teacher doubts most, from the cache alone.

Each row gets four doubt scores, all read from what the cache stores:

* ``seq_logprob``: the pseudo-label's log-probability (low: doubtful);
* ``mean_entropy``: mean over its tokens of the entropy (nats) of the top-k plus the tail bucket
  (high: doubtful; ``dora.cache.transform.mean_entropy``);
* ``tail_mass``: mean over its tokens of the probability outside the top-k at T = 1 (high: doubtful);
* ``label_margin``: for closed-label caches with ``label_logprobs``, the log-probability of the
  teacher's best label minus its second best (low: doubtful).

Rows are ranked by one score (``--by``; the label margin where the cache has one, else the
entropy), ties by row order, and the first ``n`` are written as JSON Lines or CSV (by the file's
suffix): id, source, the teacher's label, an empty ``target`` for the annotator to fill, the rank and
every score. ``n`` is given, or the number of labels ``--budget`` buys at the task's label price
(never more than the budget pays for).

    dora cache select caches/fever --budget 50 --out queue.jsonl
"""

from __future__ import annotations

import csv
import io
import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dora.cache.reader import LabelCache
from dora.cache.shard import DecodedShard
from dora.cache.transform import mean_entropy
from dora.errors import CacheError, ConfigError
from dora.files import check_output, write_atomic

Doubt = Literal["auto", "margin", "entropy", "seq-logprob", "tail"]
SCORES = {"margin": ("label_margin", 1), "entropy": ("mean_entropy", -1), "seq-logprob": ("seq_logprob", 1),
          "tail": ("tail_mass", -1)}
"""--by: (the score's column, +1 when low means doubtful, -1 when high does)."""


def doubt_scores(cache: LabelCache) -> dict[str, np.ndarray]:
    """Every row's id, source, teacher label, row number and doubt scores, in row order."""
    m = cache.manifest
    temps = [float(t) for t in m.generation.kd_temperatures]
    at_one = temps.index(1.0) if 1.0 in temps else None
    parts: dict[str, list[Any]] = {"row": [], "id": [], "source": [], "teacher_label": [], "seq_logprob": [],
                                   "mean_entropy": [], "tail_mass": [], "label_margin": []}
    labels = m.generation.label_set
    for entry in m.shards:
        shard = DecodedShard(cache.read_shard(entry))
        parts["row"].append(shard.rows)
        parts["id"] += shard.ids
        parts["source"] += shard.sources
        parts["teacher_label"] += shard.targets
        parts["seq_logprob"].append(shard.seq_logprob.astype(np.float64))
        parts["mean_entropy"].append(mean_entropy(shard, at_one))
        parts["tail_mass"].append(shard.row_mean(shard.token_tails(at_one)[1]))
        if labels:
            scores = shard.label_logprobs.astype(np.float64).reshape(shard.num_rows, len(labels))
            top2 = -np.sort(-scores, axis=1)[:, :2]
            parts["label_margin"].append(top2[:, 0] - top2[:, 1])
    out = {name: (np.concatenate(v) if v and isinstance(v[0], np.ndarray) else np.array(v, dtype=object))
           for name, v in parts.items() if name != "label_margin"}
    if labels:
        out["label_margin"] = np.concatenate(parts["label_margin"]) if parts["label_margin"] else np.zeros(0)
    return out


def labels_for(budget_usd: float, per_label_usd: float) -> int:
    """How many labels ``budget_usd`` pays for at ``per_label_usd``: n * price <= budget, exactly
    (in decimal, as the numbers were written, so 1.29 at 0.129 is 10, not 9 from float rounding)."""
    budget, price = Decimal(repr(float(budget_usd))), Decimal(repr(float(per_label_usd)))
    if price <= 0:
        raise ConfigError("the label price is 0: give --n instead of --budget")
    return int(budget // price)


def select(cache_path: str | Path, out: str | Path, *, by: Doubt = "auto", n: int | None = None,
           budget_usd: float | None = None, annotation_usd: float | None = None, verify: bool = True,
           overwrite: bool = False) -> dict[str, Any]:
    """Write the annotation queue; returns {"rows", "by", "n", "price", "out"}."""
    from dora.pipeline.costs.pricing import Prices

    out = Path(out)
    if out.suffix.lower() not in (".jsonl", ".csv"):
        raise ConfigError(f"--out {out}: give a .jsonl or .csv file for the queue")
    if (n is None) == (budget_usd is None):
        raise ConfigError("give exactly one of --n (rows) and --budget (dollars at the task's label price)")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"--n must be a positive whole number, got {n!r}")
    if budget_usd is not None and not (math.isfinite(budget_usd) and budget_usd > 0):
        raise ConfigError(f"--budget must be a positive number of dollars, got {budget_usd!r}")
    check_output(out, option="--out", inputs=[], ours=None, overwrite=overwrite)
    cache = LabelCache.open(cache_path, verify=verify)
    scores = doubt_scores(cache)
    if by == "auto":
        by = "margin" if "label_margin" in scores else "entropy"
    if by not in SCORES:
        raise ConfigError(f"--by must be auto, {', '.join(SCORES)}; got {by!r}")
    column, sign = SCORES[by]
    if column not in scores:
        raise CacheError(f"{cache.root}: has no label_logprobs (not a closed-label cache, or labeled with "
                         "--no-score-labels); use --by entropy, seq-logprob or tail")
    price = None
    if budget_usd is not None:
        price = Prices.resolve(cache.manifest.task["name"], annotation_usd=annotation_usd).annotation_usd
        if price is None:
            raise ConfigError(f"no label price for task {cache.manifest.task['name']!r}: give --annotation-usd, or --n")
        n = labels_for(budget_usd, price)
        if n < 1:
            raise ConfigError(f"--budget {budget_usd:g} buys no label at {price:g} USD per label")
    assert n is not None
    order = np.lexsort((scores["row"], sign * scores[column]))[:n]  # most doubtful first, ties by row
    names = ["seq_logprob", "mean_entropy", "tail_mass", *(["label_margin"] if "label_margin" in scores else [])]
    rows = [{"id": str(scores["id"][i]), "source": scores["source"][i], "teacher_label": scores["teacher_label"][i],
             "target": "", "rank": rank + 1, "row": int(scores["row"][i]),
             **{name: round(float(scores[name][i]), 6) for name in names}} for rank, i in enumerate(order)]
    _write(out, rows)
    return {"rows": rows, "by": by, "n": len(rows), "pool_rows": len(scores["row"]), "price": price, "out": out}


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    if out.suffix.lower() == ".csv":
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows(rows)
        data = text.getvalue()
    else:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, data.encode("utf-8"))
