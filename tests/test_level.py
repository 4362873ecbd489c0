"""Levelling dates to the baseline (`core.level`): known answers on synthetic fields."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from changedet.core.level import (
    MIN_BLOCK_CLEAR,
    block_levels,
    date_levels,
    filled,
    subtract_levels,
)

H, W, BLOCK = 160, 192, 32


def _texture(seed: int) -> np.ndarray:
    """(2, H, W) urban-like reflectance: fine texture around 0.15."""
    rng = np.random.default_rng(seed)
    return (0.15 + 0.03 * rng.standard_normal((2, H, W))).astype(np.float32)


def _haze() -> np.ndarray:
    """(2, H, W) a smooth haze: brighter towards one corner, stronger in the first band."""
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    ramp = 0.01 + 0.03 * (rows / H) * (cols / W)
    return np.stack([ramp, 0.5 * ramp]).astype(np.float32)


def _levelled(date: np.ndarray, clear: np.ndarray, reference: np.ndarray) -> np.ndarray:
    levels = date_levels(date, clear, reference, BLOCK)
    out = date.copy()
    subtract_levels(out, levels, slice(0, H), BLOCK)
    return out


def _levels_on(levels: np.ndarray, rows: slice) -> np.ndarray:
    """The levels on `rows` (what `subtract_levels` takes off zeros, negated)."""
    out = np.zeros((levels.shape[0], rows.stop - rows.start, W), np.float32)
    subtract_levels(out, levels, rows, BLOCK)
    return -out


def test_a_smooth_haze_is_taken_off_and_a_new_roof_stays() -> None:
    reference = _texture(0)
    noise = 0.002 * np.random.default_rng(1).standard_normal(reference.shape).astype(np.float32)
    date = reference + _haze() + noise
    date[:, 70:76, 90:96] += np.float32(0.02)  # a faint new roof, fainter than the haze
    levelled = _levelled(date, np.ones((H, W), bool), reference)
    residual = levelled - reference
    away = np.ones((H, W), bool)
    away[64:82, 84:102] = False
    before = np.abs(date - reference)[:, away].mean()
    after = np.abs(residual)[:, away].mean()
    assert after < 0.25 * before  # the haze is gone, down to the noise
    assert after < 0.003
    roof = residual[:, 70:76, 90:96].mean()
    assert 0.018 < roof < 0.022  # the roof keeps its contrast


def test_levels_ignore_what_is_not_clear() -> None:
    reference = _texture(2)
    date = reference + np.float32(0.01)
    clear = np.ones((H, W), bool)
    date[:, :40, :] = np.float32(0.5)  # a cloud the mask flags
    clear[:40, :] = False
    levels = date_levels(date, clear, reference, BLOCK)
    np.testing.assert_allclose(levels, 0.01, atol=1e-6)


def test_a_block_too_cloudy_to_tell_takes_its_nearest_neighbours_level() -> None:
    reference = _texture(3)
    date = reference.copy()
    date[:, :, :BLOCK] += np.float32(0.02)  # the first column of blocks is hazier
    clear = np.ones((H, W), bool)
    seen = int(MIN_BLOCK_CLEAR * BLOCK * BLOCK) - 1
    clear[:BLOCK, :BLOCK] = False
    clear[:BLOCK, :BLOCK].flat[:seen] = True  # too few clear pixels in the corner block
    date[:, :BLOCK, :BLOCK] += np.float32(0.3)  # ...and those are odd
    levels = date_levels(date, clear, reference, BLOCK)
    np.testing.assert_allclose(levels[:, 0, 0], 0.02, atol=1e-6)  # from the block below it
    np.testing.assert_allclose(levels[:, 1:, 0], 0.02, atol=1e-6)
    np.testing.assert_allclose(levels[:, :, 1:], 0.0, atol=1e-6)


def test_a_date_with_nothing_clear_is_not_levelled() -> None:
    reference = _texture(4)
    levels = date_levels(reference + 0.1, np.zeros((H, W), bool), reference, BLOCK)
    assert not levels.any()


def test_levels_on_some_rows_are_those_of_the_whole_grid() -> None:
    levels = np.random.default_rng(5).standard_normal((2, 5, 6)).astype(np.float32)
    whole = _levels_on(levels, slice(0, H))
    for rows in (slice(0, 7), slice(31, 97), slice(150, H)):
        assert np.array_equal(_levels_on(levels, rows), whole[:, rows])
    # bilinear between block centres, the edges holding the outer blocks' values: as scipy's
    rows, cols = np.mgrid[0:H, 0:W]
    at = [(rows + 0.5) / BLOCK - 0.5, (cols + 0.5) / BLOCK - 0.5]
    for band in range(2):
        expected = ndimage.map_coordinates(levels[band], at, order=1, mode="nearest")
        np.testing.assert_allclose(whole[band], expected, atol=1e-5)


def test_a_date_levelled_in_bands_of_block_rows_is_levelled_as_a_whole() -> None:
    """What the streaming detector does: block medians on bands of whole block rows (the last
    one short), holes filled once over the whole grid."""
    reference = _texture(6)
    date = reference + _haze()
    clear = np.ones((H, W), bool)
    clear[:50, :70] = False  # a cloud across two block rows: holes to fill
    whole = date_levels(date, clear, reference, BLOCK)
    bands = [slice(top, min(top + 2 * BLOCK, H)) for top in range(0, H, 2 * BLOCK)]
    parts = [block_levels(date[:, b], clear[b], reference[:, b], BLOCK) for b in bands]
    assert np.isnan(parts[0]).any()
    assert np.array_equal(filled(np.concatenate(parts, axis=1)), whole)
