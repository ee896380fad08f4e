"""Statistics shared by the analysis: Student's t intervals and the power-law fit (A3).

At the bottom of the analysis: :mod:`medssl_utils.results` (tables) and
:mod:`medssl_utils.claims` (the claims table) both use it; it imports neither.
"""

from __future__ import annotations

import math

import numpy as np


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of a Student's t interval; low/high NaN with fewer than 2 values."""
    from scipy import stats

    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def fit_power_law(n, err) -> dict:
    """Least-squares fit of ``err = a · n^(−b)`` in log–log space.

    Args:
        n: numbers of labelled slices (> 0); err: errors (points with err ≤ 0 or non-finite
            values are excluded and counted).

    Returns:
        ``{"a", "b", "r2", "n_points", "n_excluded"}``; ``r2`` is R² of ``log err`` on
        ``log n`` (NaN with fewer than 3 points or no spread); a, b NaN with fewer than 2
        distinct n.
    """
    n, err = np.asarray(n, dtype=float), np.asarray(err, dtype=float)
    ok = np.isfinite(n) & np.isfinite(err) & (n > 0) & (err > 0)
    x, y = np.log(n[ok]), np.log(err[ok])
    out = {"a": math.nan, "b": math.nan, "r2": math.nan, "n_points": int(ok.sum()), "n_excluded": int((~ok).sum())}
    if len(np.unique(x)) < 2:
        return out
    slope, intercept = np.polyfit(x, y, 1)
    out["a"], out["b"] = float(np.exp(intercept)), float(-slope)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if len(x) >= 3 and ss_tot > 0:
        out["r2"] = 1.0 - float(((y - (intercept + slope * x)) ** 2).sum()) / ss_tot
    return out
