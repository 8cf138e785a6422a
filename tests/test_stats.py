import pytest

from repfusion.analysis.stats import paired_difference


def test_paired_interval_by_hand():
    # differences 2, 4, 6: mean 4, sd 2, t(0.975, 2) = 4.3027, half-width 4.3027 * 2 / sqrt(3) = 4.968
    d = paired_difference([12, 14, 16], [10, 10, 10])
    assert d.mean == pytest.approx(4) and d.low == pytest.approx(4 - 4.968, abs=1e-3)
    assert d.high == pytest.approx(4 + 4.968, abs=1e-3) and not d.above_zero
    assert paired_difference([3, 4.1, 5], [1, 2, 3]).above_zero
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1, 2], [1])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1, 2], [1, 2], confidence=95)
