"""Turning recorded quantities into dollars, with every dollar traced to a price and its source.

dora records device-hours and labels; prices are the user's. Compute is priced from
``--gpu-hour-usd`` (any device) or a prices file; annotation from ``--annotation-usd`` or the
paper's per-label estimates (Kang, Xu and Ritter, ACL 2023, Table 1). A quantity without a
price stays a quantity: its dollars are ``None`` and the line says the price is missing.

A prices file (JSON or YAML) maps device kinds (matched case-insensitively as a substring of the
recorded device name, the longest match winning; ``"*"`` for any device) to dollars per
device-hour, and may set the annotation price::

    gpu_hour_usd: {"H100": 2.49, "A100": 1.29, "cpu": 0.04}
    annotation_usd: 0.15

>>> p = Prices.resolve("fever", gpu_hour_usd=2.0)
>>> p.labels(1000).usd, p.labels(1000).source
(129.0, "the paper's estimate for fever (0.129 USD per label)")
>>> p.compute("labeling", {"device": "NVIDIA H100 80GB HBM3", "device_hours": 1.5}).usd
3.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dora.checks import check_number
from dora.errors import ConfigError
from dora.files import read_mapping

MAX_PRICE_USD = 1e6
"""Highest price accepted per device-hour or per label: far above any real one, and low enough
that every sum of recorded quantities times prices stays a finite number."""

# US dollars per label, the paper's estimates (Table 1).
SMALL_CPU_HOUR_USD = 0.10
"""About what a 2-vCPU cloud machine costs per hour: the demo prices its compute (CPU hours) at it."""
PAPER_ANNOTATION_USD = {"wlp": 0.260, "stanceosaurus": 0.364, "fever": 0.129, "multipit_id": 0.200,
                        "multipit_gen": 0.371, "nq": 0.129}


@dataclass(frozen=True, kw_only=True)
class Line:
    """One priced quantity: ``quantity`` ``unit`` at ``price`` each is ``usd`` (None: no price)."""

    what: str
    quantity: float
    unit: str
    price: float | None
    usd: float | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "quantity": round(self.quantity, 6), "unit": self.unit, "price": self.price,
                "usd": None if self.usd is None else round(self.usd, 4), "source": self.source}


@dataclass(frozen=True, kw_only=True)
class Prices:
    gpu_hour_usd: dict[str, float] = field(default_factory=dict)
    """Dollars per device-hour by device kind (substring of the recorded name; ``*``: any)."""
    compute_source: str = ""
    annotation_usd: float | None = None
    annotation_source: str = ""

    @classmethod
    def resolve(cls, task: str, *, gpu_hour_usd: float | None = None, annotation_usd: float | None = None,
                prices_file: Path | None = None) -> Prices:
        """Command-line prices win over the file; the paper's estimate is the annotation default."""
        table: dict[str, float] = {}
        compute_source = ""
        file_annotation = None
        if prices_file is not None:
            table, file_annotation = _read_prices(Path(prices_file))
            compute_source = f"{prices_file}"
        if gpu_hour_usd is not None:
            table = {"*": check_number(gpu_hour_usd, "--gpu-hour-usd", low=0, high=MAX_PRICE_USD)}
            compute_source = "--gpu-hour-usd"
        if annotation_usd is not None:
            ann = check_number(annotation_usd, "--annotation-usd", low=0, high=MAX_PRICE_USD)
            ann_source = "--annotation-usd"
        elif file_annotation is not None:
            ann, ann_source = file_annotation, f"{prices_file}"
        elif task in PAPER_ANNOTATION_USD:
            ann = PAPER_ANNOTATION_USD[task]
            ann_source = f"the paper's estimate for {task} ({ann} USD per label)"
        else:
            ann, ann_source = None, f"no annotation price for task {task!r}: pass --annotation-usd"
        return cls(gpu_hour_usd=table, compute_source=compute_source, annotation_usd=ann, annotation_source=ann_source)

    def device_hour(self, device: str) -> tuple[float | None, str]:
        matches = [k for k in self.gpu_hour_usd if k != "*" and k in device.lower()]
        if matches:
            key = max(matches, key=len)
            return self.gpu_hour_usd[key], f"{self.compute_source} ({key}: {self.gpu_hour_usd[key]} USD/device-hour)"
        if "*" in self.gpu_hour_usd:
            return self.gpu_hour_usd["*"], f"{self.compute_source} ({self.gpu_hour_usd['*']} USD/device-hour)"
        return None, f"price missing for {device!r}: pass --gpu-hour-usd or a --prices file"

    def compute(self, stage: str, cost: dict[str, Any]) -> Line:
        """Dollars for a stage's device-hours; a ledger's entries are priced one by one (a run
        resumed on another kind of device pays that device's price for its part)."""
        entries = cost.get("entries") or [cost]
        hours = float(cost.get("device_hours", 0.0))
        priced = [(self.device_hour(str(e.get("device", ""))), float(e.get("device_hours", 0.0))) for e in entries]
        missing = [source for (price, source), _ in priced if price is None]
        usd = None if missing else sum(price * h for (price, _), h in priced)  # type: ignore[operator]
        prices = {price for (price, _), _ in priced}
        sources = sorted({source for (_, source), _ in priced})
        devices = sorted({f"{e.get('device', '?')} x{e.get('device_count', 1)}" for e in entries})
        return Line(what=f"{stage} on {', '.join(devices)}", quantity=hours, unit="device-hours",
                    price=prices.pop() if len(prices) == 1 else None, usd=usd,
                    source=missing[0] if missing else "; ".join(sources))

    def labels(self, n: int, what: str = "gold labels") -> Line:
        p = self.annotation_usd
        return Line(what=what, quantity=n, unit="labels", price=p, usd=None if p is None else n * p,
                    source=self.annotation_source)


def total(lines: list[Line]) -> float | None:
    """Sum of the lines' dollars; None when any line has no price."""
    if any(line.usd is None for line in lines):
        return None
    return sum(line.usd or 0.0 for line in lines)


def _read_prices(path: Path) -> tuple[dict[str, float], float | None]:
    """(USD per device-hour by lower-cased device kind, USD per label or None) from a prices file;
    every problem names the file and the key."""
    expected = 'a mapping like {"gpu_hour_usd": {"H100": 2.49}, "annotation_usd": 0.15}'
    data = read_mapping(path, option="--prices", expected=expected)
    unknown = sorted(set(data) - {"gpu_hour_usd", "annotation_usd"})
    if unknown:  # a misspelt key would silently leave its prices out
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; a prices file holds gpu_hour_usd and annotation_usd")
    devices = data.get("gpu_hour_usd")
    if devices is None:
        devices = {}
    if not isinstance(devices, dict):
        raise ConfigError(f"{path}: gpu_hour_usd must map device kinds to USD per device-hour, "
                          f"e.g. {{\"H100\": 2.49}}, got {devices!r:.60}")
    table: dict[str, float] = {}
    for key, value in devices.items():
        kind = key.strip().lower()
        if not kind:  # "" is a substring of every device name: it would price them all
            raise ConfigError(f"{path}: gpu_hour_usd has an empty device kind; name one, or use \"*\" for any device")
        if kind in table:
            raise ConfigError(f"{path}: gpu_hour_usd names {key!r} twice (kinds match case-insensitively)")
        table[kind] = _file_price(value, path, f"gpu_hour_usd[{key!r}]", "USD per device-hour")
    annotation = data.get("annotation_usd")
    return table, None if annotation is None else _file_price(annotation, path, "annotation_usd", "USD per label")


def _file_price(value: Any, path: Path, key: str, unit: str) -> float:
    if _is_number(value) and 0 <= value <= MAX_PRICE_USD:
        return float(value)
    raise ConfigError(f"{path}: {key} must be a non-negative number of {unit} (at most {MAX_PRICE_USD:,.0f}), "
                      f"got {value!r:.60}")


def _is_number(value: Any) -> bool:
    """A real number: not a bool, a string, NaN or an infinity."""
    return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)
