"""Percentiles, medians and spreads for the bench reports. Empty samples give NaN (shown
as "n/a" by `fmt`) unless a caller asks for another value."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

NAN = float("nan")


def percentile(data: Iterable[float], p: float) -> float:
    """The p-th percentile (0-100), linear interpolation between closest ranks (numpy's
    default): what overhead.py and the scripts built on it report."""
    values = sorted(data)
    if not values:
        return NAN
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def nearest_rank(data: Iterable[float], p: float, empty: float = NAN) -> float:
    """The p-th percentile (0-100) as the sample nearest its rank, no interpolation: what
    upstream_client.py, vllm_e2e.py and the soak report have always reported."""
    values = sorted(data)
    if not values:
        return empty
    return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]


def median(data: Iterable[float]) -> float:
    values = list(data)
    return statistics.median(values) if values else NAN


def mean(data: Iterable[float]) -> float:
    values = list(data)
    return statistics.fmean(values) if values else NAN


def spread_pct(values: list[float]) -> float:
    """(max - min) / median across rounds, in %; 0 with fewer than two rounds."""
    if len(values) < 2:
        return 0.0
    return 100 * (max(values) - min(values)) / statistics.median(values)


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"
