"""Known-answer tests for co-registration: planted sub-pixel shifts are measured and removed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from changedet.coreg import apply_shift, measure_shift


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
