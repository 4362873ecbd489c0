"""Clouds and their shadows among the change objects of an L1C pair (no SCL), from the cirrus band.

At 1375 nm (Sentinel-2 B10) water vapour absorbs the ground signal completely, so a local excess
there comes from something above the lower troposphere: a cloud, never a roof. A change object is
a cloud of one date when it is brighter on that date and carries a local cirrus-band excess
(`CIRRUS_EXCESS` and `CIRRUS_Z` scene noise units above its own surroundings); thin cirrus
sheets are broad and cancel out. A cloud's shadow is the cloud's shape displaced along the sun
direction and darker in every band on the cloudy date: the displacement is the one that lays the
clouds of that date onto the most such darkening (FFT correlation; the sun geometry is unknown),
and darkening objects under the displaced clouds are shadows.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import fftconvolve

from changedet.core.stats import SAMPLES, sample_index, smooth

__all__ = ["CIRRUS_EXCESS", "CIRRUS_Z", "cloud_and_shadow"]

CIRRUS_EXCESS = 0.0015  # TOA reflectance excess at 1375 nm that marks a cloud
CIRRUS_Z = 6.0  # ...and at least this many scene noise units
_CLOUD_RING_PX = 6  # ring around an object that gives its local cirrus background
_SHADOW_MAX_SHIFT_PX = 400  # a cloud's shadow is searched up to this far
_SHADOW_MIN_MATCH = 0.3  # share of the displaced cloud that must fall on darkening change
_SHADOW_MIN_COVER = 0.5  # share of a darkening object that must lie under the displaced cloud
_EIGHT = np.ones((3, 3), bool)


def _shift_mask(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = mask[y - dy, x - dx]; outside is False."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _signed_objects(
    mask: np.ndarray, delta: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, int]:
    """The brightening and the darkening parts of the change mask, labelled apart, so that a cloud
    (brighter on its date in every band) never drags along a real change it touches only through
    weak pixels."""
    brighter = smooth(np.where(valid, delta.mean(axis=0), 0.0), 1.0) > 0
    up, n_up = ndi.label(mask & brighter, structure=_EIGHT)
    down, n_down = ndi.label(mask & ~brighter, structure=_EIGHT)
    return np.where(down > 0, down + n_up, up), n_up + n_down


def _cirrus_excess(
    cirrus_before: np.ndarray, cirrus_after: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, float] | None:
    """after - before at 1375 nm, centred on its median, and the cloud floor (None: too few)."""
    excess = np.where(valid, cirrus_after - cirrus_before, np.nan)
    ok = np.isfinite(excess)
    if ok.sum() < 100:
        return None
    sample = excess[ok][sample_index(int(ok.sum()), SAMPLES)]
    med = float(np.median(sample))
    mad = 1.4826 * float(np.median(np.abs(sample - med)))
    floor = max(CIRRUS_EXCESS, CIRRUS_Z * mad)
    return np.nan_to_num(excess - np.float32(med), nan=0.0), floor


def _cloud_dates(
    labels: np.ndarray, n: int, excess: np.ndarray, floor: float, brighter_after: np.ndarray
) -> np.ndarray:
    """Per object label: +1 a cloud of the after date, -1 of the before date, 0 no cloud."""
    index = np.arange(1, n + 1)
    peak_after = ndi.maximum(excess, labels, index)
    peak_before = -ndi.minimum(excess, labels, index)
    cloud_date = np.zeros(n + 1, dtype=np.int8)
    for i, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        date_sign = 1 if brighter_after[i] else -1
        peak = peak_after[i] if date_sign > 0 else peak_before[i]
        if peak < floor:
            continue
        # Local background: the cirrus excess in a ring around the object.
        pad = _CLOUD_RING_PX
        sl = tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in box)
        obj = labels[sl] == i + 1
        ring = ndi.binary_dilation(obj, iterations=pad) & ~obj & (labels[sl] == 0)
        if not ring.any():
            continue
        background = float(np.median(date_sign * excess[sl][ring]))
        if peak - background >= floor:
            cloud_date[i + 1] = date_sign
    return cloud_date


def _dark_fields(delta: np.ndarray, valid: np.ndarray) -> dict[int, np.ndarray]:
    """Pixels clearly darker in every band on one date (2 noise units), decided or not: the field
    the displaced cloud shapes are matched against. Key +1: darker after, -1: darker before."""
    smoothed = np.stack([smooth(np.where(valid, d, 0.0), 1.0) for d in delta])
    pick = np.flatnonzero(valid.ravel())
    pick = pick[sample_index(pick.size, SAMPLES)]
    flat = smoothed.reshape(len(delta), -1)[:, pick]
    centre = np.median(flat, axis=1)
    spread = 1.4826 * np.median(np.abs(flat - centre[:, None]), axis=1)
    z = (smoothed - centre[:, None, None]) / np.maximum(spread, 1e-6)[:, None, None]
    return {1: (z.max(axis=0) <= -2.0) & valid, -1: (z.min(axis=0) >= 2.0) & valid}


def _shadow_of(
    clouds_now: np.ndarray, dark: np.ndarray, candidates: np.ndarray, labels: np.ndarray, n: int
) -> np.ndarray | None:
    """Darkening objects under the clouds displaced along the best-matching direction."""
    # corr[dy, dx] = |shift(clouds, dy, dx) & dark| for every displacement at once.
    corr = fftconvolve(dark.astype(np.float32), clouds_now[::-1, ::-1].astype(np.float32))
    h, w = clouds_now.shape
    dys = np.arange(corr.shape[0]) - (h - 1)
    dxs = np.arange(corr.shape[1]) - (w - 1)
    dist = np.hypot(dys[:, None], dxs[None, :])
    corr[(dist < 2) | (dist > _SHADOW_MAX_SHIFT_PX)] = 0
    best = np.unravel_index(int(np.argmax(corr)), corr.shape)
    if corr[best] < _SHADOW_MIN_MATCH * clouds_now.sum():
        return None
    footprint = _shift_mask(clouds_now, int(dys[best[0]]), int(dxs[best[1]]))
    footprint = ndi.binary_dilation(footprint, iterations=2)
    # A shadow has the cloud's shape: most of a darkening object lies under the footprint
    # (a large real change next to a small cloud's displaced footprint is left alone).
    inside = np.bincount(labels[footprint & candidates], minlength=n + 1)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    hit = (inside >= _SHADOW_MIN_COVER * sizes) & (inside > 0)
    shadow: np.ndarray = hit[labels]
    return shadow


def cloud_and_shadow(
    mask: np.ndarray,
    delta: np.ndarray,
    cirrus_before: np.ndarray,
    cirrus_after: np.ndarray,
    valid: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(cloud, shadow) pixels among the change objects of `mask` (L1C pairs without SCL).

    `delta` (B, H, W) is after - before (normalised); the cirrus arrays are TOA reflectance of
    band B10. Pairs without cloud objects come back untouched.
    """
    cloud = np.zeros(mask.shape, dtype=bool)
    shadow = np.zeros(mask.shape, dtype=bool)
    labels, n = _signed_objects(mask, delta, valid)
    if n == 0:
        return cloud, shadow
    measured = _cirrus_excess(cirrus_before, cirrus_after, valid)
    if measured is None:
        return cloud, shadow
    excess, floor = measured
    index = np.arange(1, n + 1)
    # Per object, the mean change of every band: its sign says on which date it is brighter and
    # whether it is darker in every band (a shadow candidate).
    band_means = np.stack([ndi.mean(np.nan_to_num(d, nan=0.0), labels, index) for d in delta])
    cloud_date = _cloud_dates(labels, n, excess, floor, band_means.mean(axis=0) > 0)
    if not cloud_date.any():
        return cloud, shadow
    cloud = cloud_date[labels] != 0
    darker = {1: (band_means < 0).all(axis=0), -1: (band_means > 0).all(axis=0)}
    dark_field = _dark_fields(delta, valid)
    for date_sign in (1, -1):
        clouds_now = cloud_date[labels] == date_sign
        candidates = np.concatenate([[False], darker[date_sign] & (cloud_date[1:] == 0)])[labels]
        if not clouds_now.any() or not candidates.any():
            continue
        found = _shadow_of(clouds_now, dark_field[date_sign], candidates, labels, n)
        if found is not None:
            shadow |= found
    return cloud, shadow
