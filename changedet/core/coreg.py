"""Co-registration: sub-pixel shift by phase correlation, and its correction.

Older Sentinel-2 scenes (and OSCD pairs taken from neighbouring tiles) can be mis-registered by
about a pixel, and a one-pixel shift along every edge reads as change. The shift is measured on one
stable band, reported, and corrected by resampling the moving image when it is large enough:
between the dates of a stack (before compositing, so a composite is not a blur of shifted dates)
and between two composites.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy.fft import fftn
from skimage.registration import phase_cross_correlation

from changedet.models import Stack

__all__ = ["ShiftReference", "apply_shift", "coregister_dates", "measure_shift"]

# Phase correlation on a central window of at most this size: enough texture, bounded FFT cost.
_MAX_WINDOW = 512
_SHIFT_BLOCK_ROWS = 128  # rows per block in apply_shift: a block and its scratch stay in cache


def _filled_central(image: np.ndarray) -> np.ndarray:
    """float64 central window (`_central`) with NaN replaced by the mean of the finite pixels of
    the WHOLE image (0 when there are none). Only the window is converted and filled."""
    image = np.asarray(image)
    finite = np.isfinite(image)
    window = _central(image)
    # The window keeps the row stride of the full image (as a view of a converted full image
    # would): numpy's sums over it (mean, std) then run in the same order, to the last bit.
    out = np.empty((window.shape[0], image.shape[1]), dtype=np.float64)[:, : window.shape[1]]
    if finite.all():
        out[...] = window
        return out
    # float32 -> float64 is exact, so this is the mean of the whole float64 image's finite pixels.
    mean = float(image[finite].astype(np.float64).mean()) if finite.any() else 0.0
    np.copyto(out, window)
    out[~_central(finite)] = mean
    return out


def _central(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    r0 = max((h - _MAX_WINDOW) // 2, 0)
    c0 = max((w - _MAX_WINDOW) // 2, 0)
    return image[r0 : r0 + _MAX_WINDOW, c0 : c0 + _MAX_WINDOW]


def measure_shift(
    reference: np.ndarray, moving: np.ndarray, *, upsample: int = 20
) -> tuple[float, float]:
    """(row, col) shift in pixels that `apply_shift(moving, shift)` needs to line up with `reference`.

    Phase correlation (`skimage.registration.phase_cross_correlation`) refined to 1/`upsample`
    pixel; NaN pixels are filled with the image mean and a Hann window suppresses edge effects.
    Returns (0.0, 0.0) when either image has fewer than 16 x 16 pixels or no texture.
    """
    return ShiftReference(reference).measure(moving, upsample=upsample)


class ShiftReference:
    """A reference image made ready once for `measure_shift` against many moving images: its
    filled, windowed central part and that part's spectrum (the same values, to the bit, as
    `measure_shift` computes for every call)."""

    def __init__(self, reference: np.ndarray) -> None:
        if reference.ndim != 2:
            raise ValueError(
                f"measure_shift needs two 2-D arrays of one shape, got {reference.shape}"
            )
        self.shape = reference.shape
        ref = _filled_central(reference)
        self.window = np.outer(np.hanning(ref.shape[0]), np.hanning(ref.shape[1]))
        self.spectrum: np.ndarray | None = None  # None: too small or flat, nothing to measure
        if min(ref.shape) >= 16 and ref.std() != 0:
            self.spectrum = fftn((ref - ref.mean()) * self.window)

    def measure(self, moving: np.ndarray, *, upsample: int = 20) -> tuple[float, float]:
        if moving.shape != self.shape or moving.ndim != 2:
            raise ValueError(
                f"measure_shift needs two 2-D arrays of one shape, got {self.shape} "
                f"and {moving.shape}"
            )
        mov = _filled_central(moving)
        if self.spectrum is None or mov.std() == 0:
            return (0.0, 0.0)
        moving_spectrum = fftn((mov - mov.mean()) * self.window)
        # skimage's "real" space takes scipy.fft.fftn of both: the same numbers, one FFT less.
        shift, _, _ = phase_cross_correlation(
            self.spectrum,
            moving_spectrum,
            space="fourier",
            upsample_factor=upsample,
            normalization=None,
        )
        return (float(shift[0]), float(shift[1]))


def apply_shift(array: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Move the content of a (H, W) or (B, H, W) array by a (row, col) shift, bilinear.

    out[y, x] = array[y - row, x - col], interpolated between the four nearest pixels. A pixel
    that draws on a NaN or on the outside of the image becomes NaN.
    """
    if array.ndim not in (2, 3):
        raise ValueError(f"apply_shift needs a (H, W) or (B, H, W) array, got {array.shape}")
    src = array.astype(np.float32, copy=False)
    if shift == (0.0, 0.0):
        return src.copy()
    row, col = float(shift[0]), float(shift[1])
    r0, c0 = int(np.floor(row)), int(np.floor(col))
    fr, fc = row - r0, col - c0
    taps = [
        (dy, dx, wy * wx)
        for dy, wy in ((r0, 1.0 - fr), (r0 + 1, fr))
        for dx, wx in ((c0, 1.0 - fc), (c0 + 1, fc))
        if wy * wx > 1e-6  # a zero weight must not spread a neighbour's NaN
    ]
    h, w = src.shape[-2:]
    # Output rows/cols whose every tap lands inside the source; the rest stays NaN.
    y0 = max(0, *(dy for dy, _, _ in taps))
    y1 = min(h, *(h + dy for dy, _, _ in taps))
    x0 = max(0, *(dx for _, dx, _ in taps))
    x1 = min(w, *(w + dx for _, dx, _ in taps))
    if y1 <= y0 or x1 <= x0:
        return np.full(src.shape, np.nan, dtype=np.float32)
    out = np.empty(src.shape, dtype=np.float32)
    out[..., :y0, :] = np.nan  # the frame whose taps fall outside; the inside is written below
    out[..., y1:, :] = np.nan
    out[..., :, :x0] = np.nan
    out[..., :, x1:] = np.nan
    # Band by band, in blocks of rows, with one scratch buffer: the same sum of weighted taps in
    # the same order, in cache-sized pieces and without a full-size temporary per tap.
    planes = out.reshape(-1, h, w)
    sources = src.reshape(-1, h, w)
    scratch = np.empty((_SHIFT_BLOCK_ROWS, x1 - x0), dtype=np.float32)
    for plane, source in zip(planes, sources, strict=True):
        for top in range(y0, y1, _SHIFT_BLOCK_ROWS):
            bottom = min(top + _SHIFT_BLOCK_ROWS, y1)
            inner = plane[top:bottom, x0:x1]
            part = scratch[: bottom - top]
            inner.fill(0.0)
            for dy, dx, weight in taps:
                np.multiply(
                    np.float32(weight), source[top - dy : bottom - dy, x0 - dx : x1 - dx], out=part
                )
                inner += part
    return out


def coregister_dates(
    stack: Stack,
    *,
    band: str,
    threshold_px: float,
    max_px: float = float("inf"),
    reference_dates: Sequence[int] | None = None,
    min_clear: float = 0.3,
) -> tuple[Stack, tuple[tuple[float, float] | None, ...]]:
    """Line every date of a stack up with the median of `reference_dates` (default: all dates),
    measured on `band`.

    Pass the baseline's dates so that adding later dates never moves earlier ones. Dates with less
    than `min_clear` of their pixels clear are left as they are (shift None: too little to
    measure); shifts above `threshold_px` and up to `max_px` are corrected (bilinear, all bands;
    pixels that draw on masked ones become masked): a larger measured shift is not the sensor but
    the scene (new construction pulling the correlation). Returns the aligned stack and the
    measured shifts.
    """
    from changedet.core.composite import median_composite

    refs = list(range(len(stack.times))) if reference_dates is None else list(reference_dates)
    if len(stack.times) < 2 or not refs:
        return stack, tuple((0.0, 0.0) for _ in stack.times)
    b = stack.bands.index(band)
    reference = median_composite(stack.reflectance[refs, b : b + 1], stack.clear[refs])[0][0]
    meter = ShiftReference(reference)
    reflectance = stack.reflectance
    clear = stack.clear
    shifts: list[tuple[float, float] | None] = []
    for t in range(len(stack.times)):
        if clear[t].mean() < min_clear:
            shifts.append(None)
            continue
        shift = meter.measure(np.where(clear[t], reflectance[t, b], np.nan))
        shifts.append(shift)
        if threshold_px < float(np.hypot(*shift)) <= max_px:
            if reflectance is stack.reflectance:  # copy once, only when something moves
                reflectance, clear = reflectance.copy(), clear.copy()
            reflectance[t] = apply_shift(np.where(clear[t], reflectance[t], np.nan), shift)
            clear[t] = np.isfinite(reflectance[t]).all(axis=0)
    return replace(stack, reflectance=reflectance, clear=clear), tuple(shifts)
