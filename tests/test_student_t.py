"""The burst detector's Student t quantile, without scipy: scipy.special's figure, from one
degree of freedom to forty and from the median to a tail of 1e-300."""

from __future__ import annotations

import math

import pytest
from scipy.special import stdtrit

from water_edge.models.flow_leak.student_t import upper_quantile

TAILS = [0.5, 0.3, 0.1, 1e-2, 1e-5, 1e-10, 1e-50, 1e-150, 1e-300]


@pytest.mark.parametrize("df", [1, 2, 3, 5, 7, 13, 20, 24, 40])
def test_the_upper_quantile_is_scipys_to_1e_12(df: int) -> None:
    for tail in TAILS:
        expected = -float(stdtrit(df, tail))  # scipy's is the lower quantile
        if math.isinf(expected):  # scipy gives up at some tails of 1e-300: this one stays finite
            assert upper_quantile(df, 1e-150) < upper_quantile(df, tail) < math.inf
            continue
        assert upper_quantile(df, tail) == pytest.approx(expected, rel=1e-12, abs=1e-12), tail


def test_a_tail_outside_0_to_one_half_is_refused() -> None:
    for tail in (0.0, 0.6, -1e-3):
        with pytest.raises(ValueError, match="tail"):
            upper_quantile(5, tail)
