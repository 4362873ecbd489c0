"""Robust statistics and smoothing of change evidence (pure numpy/scipy).

`robust_z` measures a layer against its own bulk (change is rare, so median and MAD describe
no-change); `smooth` is a NaN-aware Gaussian (normalised convolution) that gives each pixel the
spatial context of its neighbours without letting unobserved pixels bleed in.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from changedet.core.normalize import fast_median

__all__ = ["SAMPLES", "robust_z", "sample_index", "smooth", "smooth_reach", "smooth_reusing"]

SAMPLES = 100_000  # pixels used for robust statistics
_TRUNCATE = 3.0  # the Gaussian of `smooth` is cut this many sigma out


def sample_index(n: int, limit: int) -> np.ndarray:
    """A deterministic, evenly spread subsample of range(n) of at most `limit` indices."""
    if n <= limit:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).astype(np.int64)


def robust_z(
    values: np.ndarray, valid: np.ndarray | None = None, *, reference: np.ndarray | None = None
) -> np.ndarray:
    """(x - median) / (1.4826 MAD) with median and MAD over the finite (and `valid`) pixels of
    `reference` (default: `values` itself); NaN stays NaN."""
    ref = values if reference is None else reference
    ok = np.isfinite(ref) if valid is None else (valid & np.isfinite(ref))
    flat = ref[ok]
    if flat.size == 0:
        return np.full(values.shape, np.nan, dtype=np.float32)
    flat = flat[sample_index(flat.size, SAMPLES)]
    med = float(fast_median(flat))
    mad = 1.4826 * float(fast_median(np.abs(flat - med)))
    if mad <= 0:
        mad = float(flat.std()) or 1.0
    out = (values - np.float32(med)) / np.float32(mad)
    return out.astype(np.float32, copy=False)


def smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """NaN-aware Gaussian smoothing (normalised convolution); NaN pixels stay NaN."""
    return smooth_reusing(values, sigma, [])


def smooth_reach(sigma: float) -> int:
    """How many pixels out `smooth` takes a pixel's neighbours from (scipy's kernel radius)."""
    return int(_TRUNCATE * sigma + 0.5)


def smooth_reusing(
    values: np.ndarray, sigma: float, weights: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """`smooth`, reusing the smoothed finite mask (the normaliser) of an earlier call on the same
    NaN pattern: `weights` holds (finite, normaliser) pairs and is appended to."""
    if sigma <= 0:
        return values.astype(np.float32, copy=True)
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0).astype(np.float32, copy=False)
    num = ndi.gaussian_filter(filled, sigma, truncate=_TRUNCATE)
    if finite.all():
        return num
    den = next((d for f, d in weights if np.array_equal(f, finite)), None)
    if den is None:
        den = ndi.gaussian_filter(finite.astype(np.float32), sigma, truncate=_TRUNCATE)
        weights.append((finite, den))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~finite] = np.nan
    return out
