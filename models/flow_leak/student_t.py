"""The Student t quantile the burst detector needs (`burst._z_for_days`), without scipy: on a
gateway `scipy.special` costs ~26 MB of memory for this one function.

`upper_quantile(df, tail)` is the t with P(T > t) = `tail` for `df` degrees of freedom:
scipy.special.stdtrit(df, tail) for tail <= 0.5, to about 1e-13 relative (tests/test_student_t.py
compares them from df 1 to 40 and tails from 0.5 to 1e-300). P(T > t) = I_x(df/2, 1/2) / 2 with
x = df / (df + t^2), the regularized incomplete beta function by its continued fraction (Lentz),
in logarithms so that a tail of 1e-300 (t near 1e299 at one degree of freedom) stays finite; the
quantile is found by bisection on t.
"""

from __future__ import annotations

import math

_TINY = 1e-300
_EPS = 1e-16


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for aa in (even, odd):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _EPS:
            break
    return h


def _log_upper_tail(t: float, df: float) -> float:
    """log P(T > t) for t >= 0."""
    a, b = df / 2.0, 0.5
    if t <= 0:
        return math.log(0.5)
    # x = df / (df + t^2) and 1 - x, in logarithms: t^2 overflows beyond 1e154
    ratio = (df / t) / t  # df / t^2
    small = ratio > 1.0  # t below sqrt(df): 1 / ratio is finite
    log_x = -math.log1p(1.0 / ratio) if small else math.log(df) - 2.0 * math.log(t) - math.log1p(ratio)
    log_1mx = -math.log1p(ratio)
    x = math.exp(log_x)
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    if x < (a + 1.0) / (a + b + 2.0):
        front = a * log_x + b * log_1mx - log_beta - math.log(a)
        return math.log(0.5) + front + math.log(_continued_fraction(a, b, x))
    # I_x(a, b) = 1 - I_{1-x}(b, a): near t = 0
    front = b * log_1mx + a * log_x - log_beta - math.log(b)
    rest = math.exp(front) * _continued_fraction(b, a, 1.0 - x)
    return math.log(0.5) + math.log1p(-rest)


def upper_quantile(df: float, tail: float) -> float:
    """The t with P(T > t) = `tail` (0 < tail <= 0.5) for `df` > 0 degrees of freedom."""
    if not 0.0 < tail <= 0.5 or df <= 0:
        raise ValueError(f"need 0 < tail <= 0.5 and df > 0, got tail {tail}, df {df}")
    target = math.log(tail)
    lo, hi = 0.0, 1.0
    while _log_upper_tail(hi, df) > target:
        lo, hi = hi, hi * 2.0
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _log_upper_tail(mid, df) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
