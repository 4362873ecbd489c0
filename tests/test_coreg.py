"""Known-answer tests for co-registration: planted sub-pixel shifts are measured and removed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import numpy as np
import pytest
from scipy import ndimage as ndi

from changedet.config import Config
from changedet.core.coreg import ShiftReference, apply_shift, coregister_dates, measure_shift
from changedet.core.timeseries import date_shift_threshold
from changedet.models import Stack


def _texture(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.normal(size=shape), 2.0).astype(np.float32)


def _fourier_shift(image: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Exact sub-pixel translation of a periodic image (content moves by +shift)."""
    spectrum = ndi.fourier_shift(np.fft.fft2(image), shift)
    return np.fft.ifft2(spectrum).real.astype(np.float32)


@pytest.mark.parametrize("planted", [(0.0, 0.0), (0.3, -0.7), (-1.25, 0.45), (2.6, 1.1)])
def test_planted_shift_is_measured_to_a_tenth_of_a_pixel(planted: tuple[float, float]) -> None:
    reference = _texture((256, 256))
    moving = _fourier_shift(reference, planted)
    row, col = measure_shift(reference, moving)
    # The shift that re-aligns `moving` is the opposite of the planted displacement.
    assert abs(row + planted[0]) < 0.1 and abs(col + planted[1]) < 0.1


def test_measure_shift_ignores_nan_holes() -> None:
    reference = _texture((200, 220), seed=1)
    moving = _fourier_shift(reference, (0.6, -0.4))
    moving[50:80, 60:100] = np.nan
    row, col = measure_shift(reference, moving)
    assert abs(row + 0.6) < 0.1 and abs(col - 0.4) < 0.1


def test_a_reference_made_ready_once_measures_as_skimage_does_from_the_images() -> None:
    """`ShiftReference` keeps the reference's spectrum for every date: each shift is the one
    skimage's phase correlation gives from the two windowed images, to the bit."""
    from skimage.registration import phase_cross_correlation

    reference = _texture((600, 540), seed=3)  # larger than the 512 px central window
    meter = ShiftReference(reference)
    window = np.outer(np.hanning(512), np.hanning(512))
    for k, planted in enumerate([(0.3, -0.7), (1.1, 0.2), (-0.45, 2.05)]):
        moving = _fourier_shift(reference, planted) + _texture((600, 540), seed=10 + k) * 0.2
        moving[100 + 40 * k : 160 + 40 * k, 200:260] = np.nan
        # NaN filled with the mean of the finite pixels, then the central 512 px of the float64
        # image (a view: numpy then sums in the order measure_shift does).
        ref, mov = (
            np.where(np.isfinite(im), im, im[np.isfinite(im)].astype(np.float64).mean()).astype(
                np.float64
            )[44:556, 14:526]
            for im in (reference, moving)
        )
        expected, _, _ = phase_cross_correlation(
            (ref - ref.mean()) * window,
            (mov - mov.mean()) * window,
            upsample_factor=20,
            normalization=None,
        )
        assert meter.measure(moving) == (float(expected[0]), float(expected[1]))
    flat = ShiftReference(np.ones((64, 64), np.float32))
    assert flat.measure(reference[:64, :64]) == (0.0, 0.0)


def test_apply_shift_undoes_a_planted_shift() -> None:
    reference = _texture((128, 128), seed=2)
    moving = _fourier_shift(reference, (0.5, -1.5))
    fixed = apply_shift(moving, measure_shift(reference, moving))
    inner = (slice(8, -8), slice(8, -8))
    before = np.abs(moving - reference)[inner].mean()
    after = np.abs(fixed - reference)[inner].mean()
    assert after < 0.2 * before


def test_apply_shift_integer_shift_moves_pixels_and_marks_the_edge_nan() -> None:
    image = np.arange(3 * 6 * 5, dtype=np.float32).reshape(3, 6, 5)
    out = apply_shift(image, (1.0, -2.0))
    assert out.shape == image.shape
    np.testing.assert_allclose(out[:, 1:, :3], image[:, :-1, 2:])
    assert np.isnan(out[:, 0]).all() and np.isnan(out[:, :, 3:]).all()


def test_apply_shift_spreads_nan_to_the_pixels_that_draw_on_it() -> None:
    image = np.ones((10, 10), np.float32)
    image[5, 5] = np.nan
    out = apply_shift(image, (0.5, 0.0))
    assert np.isnan(out[5, 5]) and np.isnan(out[6, 5]) and np.isfinite(out[3, 5])


def test_dates_of_a_stack_are_lined_up_with_their_median(
    make_stack: Callable[..., Stack],
) -> None:
    planted = [(0.0, 0.0), (0.6, -0.3), (-0.4, 0.5), (0.1, 0.1), (0.0, 0.0)]
    base = _texture((128, 128))
    dates = np.stack([_fourier_shift(base, s) for s in planted])[:, None].astype(np.float32)
    clear = np.ones((len(planted), 128, 128), bool)
    clear[1, :40, :60] = False  # a cloud on one date
    stack = make_stack(
        bands=("red",),
        dates=[date(2023, m, 1) for m in range(1, 6)],
        reflectance=np.where(clear[:, None], dates, np.nan),
        clear=clear,
    )
    aligned, shifts = coregister_dates(stack, band="red", threshold_px=0.25)
    mean = np.mean(planted, axis=0)
    for (row, col), measured in zip(planted, shifts, strict=True):
        assert measured is not None
        # The reference is the median of all dates, so shifts are relative to their mean.
        assert measured == pytest.approx((-(row - mean[0]), -(col - mean[1])), abs=0.1)
    # Corrected dates agree with each other far better than before.
    inner = (slice(None), 0, slice(8, -8), slice(8, -8))
    spread_before = np.nanstd(stack.reflectance[inner], axis=0).mean()
    spread_after = np.nanstd(aligned.reflectance[inner], axis=0).mean()
    assert spread_after < 0.5 * spread_before
    assert not aligned.clear[1, :40, :60].any()  # the cloud stays masked
    assert stack.reflectance is not aligned.reflectance  # the input is not modified in place


def test_a_third_of_a_pixel_between_resampled_dates_reads_short_and_the_default_corrects_it(
    make_stack: Callable[..., Stack],
) -> None:
    # Fine texture, every date resampled bilinearly (as a resampled product is) by its own shift.
    base = ndi.gaussian_filter(np.random.default_rng(4).normal(size=(160, 160)), 0.7)
    planted = [(0.3, 0.0), (-0.3, 0.0), (0.0, 0.3), (0.0, -0.3), (0.2, 0.2), (0.0, 0.3)]
    dates = np.stack([ndi.shift(base, p, order=1, mode="nearest") for p in planted])
    stack = make_stack(
        bands=("red",),
        dates=[date(2023, m, 1) for m in range(1, 7)],
        reflectance=dates[:, None].astype(np.float32),
        clear=np.ones((6, 160, 160), bool),
    )
    threshold = Config().change.date_coreg_threshold_px
    aligned, shifts = coregister_dates(
        stack, band="red", threshold_px=threshold, reference_dates=range(5)
    )
    assert shifts[5] is not None
    # Read short of the 0.3 px planted: a 0.25 px threshold would leave it in place.
    assert threshold < float(np.hypot(*shifts[5])) < 0.25
    reference = np.median(dates[:5], axis=0)
    inner = (slice(8, -8), slice(8, -8))
    before = np.abs(dates[5] - reference)[inner].mean()
    after = np.abs(aligned.reflectance[5, 0] - reference)[inner].mean()
    assert after < 0.85 * before


def test_against_one_unresampled_date_a_small_shift_is_left_in_place() -> None:
    # A before/after pair: the before date is the whole reference, sharp; the after date was
    # resampled by 0.2 px. Correcting it would blur it more than it aligns it.
    base = ndi.gaussian_filter(np.random.default_rng(4).normal(size=(160, 160)), 0.7)
    moved = ndi.shift(base, (0.0, 0.2), order=1, mode="nearest")
    shift = measure_shift(base.astype(np.float32), moved.astype(np.float32))
    inner = (slice(8, -8), slice(8, -8))
    corrected = apply_shift(moved.astype(np.float32), shift)
    assert np.abs(corrected - base)[inner].mean() > 0.95 * np.abs(moved - base)[inner].mean()
    config = Config()
    assert date_shift_threshold(config, 1) >= float(np.hypot(*shift))  # left in place
    assert date_shift_threshold(config, 5) < float(np.hypot(*shift))  # a median's dates: lined up
