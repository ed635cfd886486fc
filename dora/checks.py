"""Checks of option values that every stage config shares: numbers finite and in range, positive
integers, paths given as strings. Each failure is a ConfigError naming the option and the fix."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dora.errors import ConfigError


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


def as_paths(config: Any, *names: str) -> None:
    """Let users pass strings for path fields of a frozen config."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not isinstance(value, Path):
            object.__setattr__(config, name, Path(value))


def positive_ints(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


def check_labels(labels: Iterable[Any] | None) -> tuple[str, ...] | None:
    """``--labels`` as a tuple of two or more distinct, non-empty labels (stripped); None stays None."""
    if labels is None:
        return None
    found = tuple(str(x).strip() for x in labels)
    if len(found) < 2 or not all(found) or len(set(found)) != len(found):
        raise ConfigError(f"--labels needs two or more distinct, non-empty labels, got {','.join(found)!r}; "
                          "e.g. --labels SUPPORTS,REFUTES")
    return found

