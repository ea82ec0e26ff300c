"""Percentiles and summaries, in one place so every table and JSON file agrees on them.

Latencies are kept raw (seconds, one per request) and only summarised at the
end: pooled percentiles over rounds are honest, an average of per-round
percentiles is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of latencies given in seconds, in milliseconds; NaN if none."""
    if not len(seconds):
        return math.nan
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q)) * 1000


def rounded(value: float | None, digits: int = 3) -> float | None:
    """JSON has no NaN: a figure with nothing measured is reported as null."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return round(value, digits)


def summary(values: Sequence[float], digits: int = 4) -> dict[str, float | None]:
    """min / p50 / max of a list of scores (e.g. the similarities a cell's hits reported)."""
    if not len(values):
        return {"min": None, "p50": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    return {
        "min": rounded(float(array.min()), digits),
        "p50": rounded(float(np.median(array)), digits),
        "max": rounded(float(array.max()), digits),
    }
