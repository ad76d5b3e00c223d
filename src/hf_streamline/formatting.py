"""Numbers as people read them, one way everywhere: the evaluation report, the model card, the healing comparison and
the command line's tables all format through these."""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"  # a value that was not measured


def number(v: Any, digits: int = 4) -> str:
    """A measured value: whole numbers with thousands separators; floats to the precision their size needs (1.23e+05,
    123.4, 35.81, 0.4065 with ``digits`` significant digits below 1); ``MISSING`` for None, NaN or infinity."""
    if v is None or isinstance(v, bool):
        return MISSING if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return MISSING
        if abs(v) >= 1e5:
            return f"{v:.3g}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.{digits}g}"
    return str(v)


def count(n: Any, missing: str = MISSING) -> str:
    """A parameter or token count: 1234567 -> '1.23M' (K, M, B); ``missing`` for None."""
    if n is None:
        return missing
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def percent(v: Any) -> str:
    """A share already in percent: 93.3 -> '93.3%'."""
    return MISSING if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.1f}%"


def plus_minus(v: Any, se: Any) -> str:
    """A value with its standard error: '0.4065 ± 0.0093'."""
    return number(v) if se is None else f"{number(v)} ± {number(se)}"
