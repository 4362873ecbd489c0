"""Known-answer tests for relative radiometric normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from changedet.core.normalize import relative_normalize


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.02, 0.4, size=(4, 80, 90)).astype(np.float32)


def test_planted_gain_and_offset_are_removed() -> None:
    reference = _scene()
    gains = np.array([0.8, 1.1, 1.25, 0.95], np.float32)[:, None, None]
    offsets = np.array([0.03, -0.02, 0.05, 0.0], np.float32)[:, None, None]
    target = reference * gains + offsets  # season/atmosphere: a linear map per band
    out, fit = relative_normalize(reference, target)
    np.testing.assert_allclose(out, reference, atol=1e-4)
    np.testing.assert_allclose(fit.gain, 1 / gains.ravel(), rtol=1e-3)


def test_real_change_does_not_bend_the_fit() -> None:
    rng = np.random.default_rng(3)
    reference = _scene(1)
    target = reference * 1.2 + 0.04 + rng.normal(0, 0.002, reference.shape).astype(np.float32)
    target[:, :10, :] += 0.3  # 11 % of the pixels really changed (much brighter)
    out, fit = relative_normalize(reference, target)
    unchanged = out[:, 10:, :] - reference[:, 10:, :]
    assert abs(float(np.median(unchanged))) < 2e-3
    np.testing.assert_allclose(fit.gain, 1 / 1.2, rtol=0.02)
    assert fit.n_no_change > 0


def test_nan_pixels_stay_nan_and_are_not_fitted() -> None:
    reference = _scene(2)
    target = reference + 0.05
    target[0, 5, 5] = np.nan
    reference[1, 6, 6] = np.nan
    out, _ = relative_normalize(reference, target)
    assert np.isnan(out[0, 5, 5])
    finite = np.isfinite(reference) & np.isfinite(out)
    np.testing.assert_allclose(out[finite], reference[finite], atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_median_equals_numpy_median_exactly(dtype: type) -> None:
    from changedet.core.normalize import fast_median

    rng = np.random.default_rng(5)
    rows = [
        rng.normal(size=5_001),
        rng.normal(size=100_000),
        np.round(rng.normal(size=60_000), 1),  # heavy ties
        np.sort(rng.normal(size=20_000)),  # already sorted
        np.concatenate([np.zeros(10_000), -np.zeros(10_001)]),  # signed zeros
        np.concatenate([rng.normal(size=9_999), [np.nan]]),  # a NaN
    ]
    for row in rows:
        x = row.astype(dtype)
        got, want = fast_median(x), np.median(x, axis=-1)
        np.testing.assert_array_equal(got, want)
        assert np.signbit(got) == np.signbit(want)
    table = rng.normal(size=(4, 30_000)).astype(dtype)
    np.testing.assert_array_equal(fast_median(table), np.median(table, axis=-1))
