"""SCL → clear mask, with known answers on small synthetic arrays."""

from __future__ import annotations

import numpy as np
import pytest

from changedet.config import MaskConfig
from changedet.core.mask import (
    persistent_from_counts,
    scl_clear,
    scl_cloudy,
    temporal_dips,
    temporal_spikes,
)

INVALID = MaskConfig().scl_invalid  # 0, 1, 3, 8, 9, 10, 11


def test_every_scl_class_without_dilation() -> None:
    scl = np.arange(12, dtype=np.uint8).reshape(1, 12)
    clear = scl_clear(scl, invalid=INVALID)
    expected = {0: False, 1: False, 2: True, 3: False, 4: True, 5: True, 6: True, 7: True}
    expected.update({8: False, 9: False, 10: False, 11: False})
    assert {c: bool(clear[0, c]) for c in range(12)} == expected


def test_nodata_is_never_clear_even_when_not_listed() -> None:
    scl = np.array([[0, 4]], dtype=np.uint8)
    assert scl_clear(scl, invalid=(9,)).tolist() == [[False, True]]


@pytest.mark.parametrize("radius", [1, 2, 3, 5])
@pytest.mark.parametrize("shape", [(41, 57), (3, 23, 19), (4, 9), (1, 1)])
def test_dilation_is_scipys_binary_dilation_by_the_rounded_square(
    radius: int, shape: tuple[int, ...]
) -> None:
    """The shifted-OR dilation gives scipy's answer to the pixel, never across time, and near
    and past the grid's edges."""
    from scipy import ndimage

    from changedet.core.mask import _dilate, _disk

    mask = np.random.default_rng(radius).random(shape) > 0.92
    mask.flat[0] = True  # an edge pixel
    structure = _disk(radius) if len(shape) == 2 else _disk(radius)[np.newaxis]
    expected = ndimage.binary_dilation(mask, structure=structure)
    got = _dilate(mask, radius)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, expected)


def test_dilation_grows_clouds_and_shadows_only() -> None:
    scl = np.full((9, 9), 4, np.uint8)
    scl[2, 2] = 9  # cloud
    scl[6, 6] = 3  # cloud shadow
    scl[2, 6] = 11  # snow: exact, not grown
    scl[6, 2] = 0  # nodata: exact, not grown
    clear = scl_clear(scl, invalid=INVALID, dilate_px=1)
    masked = ~clear
    assert masked[1:4, 1:4].all() and masked[5:8, 5:8].all()
    assert masked.sum() == 9 + 9 + 1 + 1
    assert masked[2, 6] and not masked[1, 6] and not masked[3, 6]
    assert masked[6, 2] and not masked[5, 2]


def test_dilation_radius_two_is_rounded() -> None:
    scl = np.full((9, 9), 4, np.uint8)
    scl[4, 4] = 8
    masked = ~scl_clear(scl, invalid=INVALID, dilate_px=2)
    assert masked[4, 2] and masked[2, 4] and masked[3, 3]
    assert not masked[2, 2]  # the corners of the 5x5 square stay clear
    assert masked.sum() == 21


def test_dilation_does_not_cross_dates() -> None:
    scl = np.full((2, 5, 5), 4, np.uint8)
    scl[0, 2, 2] = 9
    clear = scl_clear(scl, invalid=INVALID, dilate_px=1)
    assert (~clear[0]).sum() == 9
    assert clear[1].all()


def test_kept_roof_is_clear_and_grows_no_halo() -> None:
    scl = np.full((7, 7), 4, np.uint8)
    scl[3, 3] = 9  # a bright roof SCL calls cloud
    scl[0, 0] = 9  # a real cloud
    keep = np.zeros((7, 7), bool)
    keep[3, 3] = True
    clear = scl_clear(scl, invalid=INVALID, dilate_px=1, keep=keep)
    assert clear[2:5, 2:5].all()
    assert not clear[0:2, 0:2].any()


def test_keep_does_not_make_nodata_clear() -> None:
    scl = np.array([[0, 9]], dtype=np.uint8)
    clear = scl_clear(scl, invalid=INVALID, keep=np.ones((1, 2), bool))
    assert clear.tolist() == [[False, True]]


def test_persistent_bright_counts_only_observed_dates() -> None:
    t = 10
    cloudy = np.zeros((t, 1, 4), bool)
    observed = np.ones((t, 1, 4), bool)
    cloudy[:7, 0, 0] = True  # 7/10 cloudy: a roof at fraction 0.6
    cloudy[:5, 0, 1] = True  # 5/10: weather
    cloudy[:, 0, 2] = True  # cloudy on all 10 dates but observed on only 3
    observed[3:, 0, 2] = False
    cloudy[:6, 0, 3] = True  # exactly 6/10 = 0.6: counts
    n_cloudy, n_observed = (cloudy & observed).sum(0), observed.sum(0)
    roof = persistent_from_counts(n_cloudy, n_observed, fraction=0.6, min_dates=5)
    assert roof.tolist() == [[True, False, False, True]]
    # With enough observations allowed, the 3-date pixel (3/3 cloudy) becomes a roof.
    roof = persistent_from_counts(n_cloudy, n_observed, fraction=0.6, min_dates=3)
    assert roof.tolist() == [[True, False, True, True]]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="fraction"):
        persistent_from_counts(np.zeros((2, 2), int), np.zeros((2, 2), int), fraction=0)
    with pytest.raises(ValueError, match="dilate_px"):
        scl_clear(np.zeros((2, 2), np.uint8), invalid=INVALID, dilate_px=-1)


def test_scl_cloudy_classes() -> None:
    scl = np.array([[3, 8, 9, 10, 11]], dtype=np.uint8)
    assert scl_cloudy(scl).tolist() == [[False, True, True, True, False]]
    assert scl_cloudy(scl, cloud_classes=(9,)).tolist() == [[False, False, True, False, False]]


def _spikes(blue: list[float], *, trailing: bool = False) -> list[int]:
    """temporal_spikes of one pixel's blue series (NaN: not clear), at the default tolerance."""
    series = np.array(blue, dtype=np.float32)[:, None, None]
    spikes = temporal_spikes(series, tolerance=0.02, trailing=trailing)
    return spikes[:, 0, 0].astype(int).tolist()


NAN = float("nan")


@pytest.mark.parametrize(
    ("blue", "expected"),
    [
        # one cloudy date between clear ones
        ([0.28, 0.28, 0.50, 0.28, 0.28], [0, 0, 1, 0, 0]),
        # a new roof is a step: it stays, so none of its dates is a spike
        ([0.28, 0.28, 0.40, 0.40, 0.40], [0, 0, 0, 0, 0]),
        # a hazy date beside a cloud no longer hides it: the second pass, without the cloud
        ([0.28, 0.28, 0.44, 0.52, 0.28, 0.28], [0, 0, 1, 1, 0, 0]),
        # a new roof seen through a cloud on its second date is still a step
        ([0.28, 0.28, 0.40, 0.55, 0.40, 0.40], [0, 0, 0, 1, 0, 0]),
        # a cloud on two dates in a row, each brighter than its neighbours beyond the other
        ([0.28, 0.32, 0.52, 0.50, 0.31, 0.41, 0.30], [0, 0, 1, 1, 0, 1, 0]),
        # a pair beside a single cloud: tested again without the single, which no longer hides it
        ([0.30, 0.25, 0.30, 0.50, 0.49, 0.30, 0.43, 0.29, 0.28], [0, 0, 0, 1, 1, 0, 1, 0, 0]),
        # a new roof followed by one dark date (a shadow SCL missed) is not such a pair
        ([0.28, 0.28, 0.40, 0.40, 0.20, 0.40, 0.40], [0, 0, 0, 0, 0, 0, 0]),
        # a cloud on the first date: brighter than both of the next two
        ([0.51, 0.28, 0.41, 0.28, 0.28], [1, 0, 1, 0, 0]),
        # a bright first date with one darker date after it is no spike: the one after is as bright
        ([0.40, 0.28, 0.40, 0.40], [0, 0, 0, 0]),
        # the last date may be a roof that just appeared
        ([0.28, 0.28, 0.28, 0.50], [0, 0, 0, 0]),
        # neighbours are the nearest clear dates; not-clear dates are never spikes
        ([NAN, 0.28, NAN, 0.50, NAN, 0.28, 0.28], [0, 0, 0, 1, 0, 0, 0]),
        # bright surfaces vary more: 10 % of the reference plus the tolerance is not a spike
        ([0.50, 0.50, 0.56, 0.50, 0.50], [0, 0, 0, 0, 0]),
    ],
)
def test_temporal_spikes_known_answers(blue: list[float], expected: list[int]) -> None:
    assert _spikes(blue) == expected


@pytest.mark.parametrize(
    ("blue", "expected"),
    [
        # a brightening on the last date, than both of the two before it, waits for the next scene
        ([0.28, 0.28, 0.28, 0.50], [0, 0, 0, 1]),
        # ... and is judged as any date once that scene is there: a cloud, or a roof that stays
        ([0.28, 0.28, 0.28, 0.50, 0.28], [0, 0, 0, 1, 0]),
        ([0.28, 0.28, 0.28, 0.50, 0.50], [0, 0, 0, 0, 0]),
        # a roof seen on the last two dates is a step
        ([0.28, 0.28, 0.40, 0.40], [0, 0, 0, 0]),
        # brighter than only one of the two before it
        ([0.45, 0.28, 0.46], [0, 0, 0]),
        # the two before it are the nearest clear ones
        ([0.28, 0.28, NAN, 0.50, NAN], [0, 0, 0, 1, 0]),
    ],
)
def test_temporal_spikes_trailing_known_answers(blue: list[float], expected: list[int]) -> None:
    assert _spikes(blue, trailing=True) == expected


def _dips(swir: list[float], relative: float = 0.1) -> list[int]:
    """temporal_dips of one pixel's SWIR series (NaN: not clear), at the default tolerance."""
    series = np.array(swir, dtype=np.float32)[:, None, None]
    return temporal_dips(series, tolerance=0.02, relative=relative)[:, 0, 0].astype(int).tolist()


@pytest.mark.parametrize(
    ("swir", "expected"),
    [
        # a shadow SCL missed: one dark date between clear ones
        ([0.40, 0.40, 0.28, 0.40, 0.40], [0, 0, 1, 0, 0]),
        # a new dark roof is a step: it stays, so none of its dates is a dip
        ([0.40, 0.40, 0.25, 0.25, 0.25], [0, 0, 0, 0, 0]),
        # a shadow on the first date: darker than both of the next two
        ([0.30, 0.40, 0.41, 0.40], [1, 0, 0, 0]),
        # ... but not when one of them is as dark
        ([0.30, 0.40, 0.31, 0.31], [0, 0, 0, 0]),
        # the last date may be a roof that just appeared
        ([0.40, 0.40, 0.40, 0.25], [0, 0, 0, 0]),
        # neighbours are the nearest clear dates; not-clear dates are never dips
        ([0.40, NAN, 0.28, NAN, 0.40], [0, 0, 1, 0, 0]),
        # 10 % of the darker neighbour plus the tolerance is not a dip
        ([0.50, 0.50, 0.44, 0.50, 0.50], [0, 0, 0, 0, 0]),
    ],
)
def test_temporal_dips_known_answers(swir: list[float], expected: list[int]) -> None:
    assert _dips(swir) == expected


@pytest.mark.parametrize(
    ("swir", "at_tenth", "at_default"),
    [
        # a cloud shadow's soft edge on bright sand: 12 % darker
        ([0.50, 0.50, 0.44, 0.50, 0.50], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]),
        # ...on a one-date baseline (semi-real abudhabi, January)
        ([0.464, 0.528, 0.530, 0.526], [0, 0, 0, 0], [1, 0, 0, 0]),
        # a sand pixel's ordinary spread from date to date is not a dip at either
        ([0.50, 0.51, 0.485, 0.50, 0.49], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),
    ],
)
def test_the_default_dip_share_catches_a_soft_shadow_on_bright_ground(
    swir: list[float], at_tenth: list[int], at_default: list[int]
) -> None:
    assert _dips(swir, relative=0.1) == at_tenth
    assert _dips(swir, relative=MaskConfig().dip_relative) == at_default


def test_temporal_dips_settle_only_pixels_without_a_drop() -> None:
    """The cheap look (no observation darker than the clear one after it) only settles pixels
    with no dip: the answer is the full test's over every pixel."""
    from changedet.core.mask import _Neighbours, _single_spikes

    rng = np.random.default_rng(11)
    swir = (0.35 + 0.01 * rng.standard_normal((30, 40, 50))).astype(np.float32)
    swir[rng.random(swir.shape) < 0.3] = np.nan
    swir[rng.random(swir.shape) < 0.02] -= 0.15  # shadows, some on consecutive dates
    swir[rng.random(swir.shape) < 0.02] += 0.1  # clouds
    negated = -swir.reshape(30, -1)  # a dip is a single spike of the negated values
    gain, tol = np.float32(0.9), np.float32(0.02)
    full = _single_spikes(negated, _Neighbours.of(negated), gain, tol, False).reshape(swir.shape)
    assert full.any() and not full.all()
    np.testing.assert_array_equal(temporal_dips(swir, tolerance=0.02, relative=0.1), full)


def test_temporal_spikes_keep_pixels_apart() -> None:
    cloud = np.full((5, 2, 2), 0.28, dtype=np.float32)
    cloud[2, 0, 1] = 0.5
    spikes = temporal_spikes(cloud, tolerance=0.02)
    assert spikes.sum() == 1 and spikes[2, 0, 1]


def test_temporal_spikes_settle_only_pixels_without_a_jump() -> None:
    """The cheap look (no observation brighter than a clear neighbour) only settles pixels the
    full tests would find no spike in: the answer is the full tests' over every pixel."""
    from changedet.core.mask import _spikes_of

    rng = np.random.default_rng(7)
    blue = (0.25 + 0.01 * rng.standard_normal((30, 40, 50))).astype(np.float32)
    blue[rng.random(blue.shape) < 0.3] = np.nan
    blue[rng.random(blue.shape) < 0.02] += 0.2  # clouds, some on consecutive dates
    blue[rng.random(blue.shape) < 0.02] -= 0.1  # shadows
    for trailing in (False, True):
        flat = _spikes_of(blue.reshape(30, -1), np.float32(1.1), np.float32(0.02), trailing)
        full = flat.reshape(blue.shape)
        assert full.any() and not full.all()
        got = temporal_spikes(blue, tolerance=0.02, trailing=trailing)
        np.testing.assert_array_equal(got, full)
