"""Land-cover classes and the class-conditional change (pure numpy/scipy).

A harvested field changes like many other fields did between two dates, so its change is normal
for its class; a new roof is not normal for either date's class. `kmeans_classes` finds the
classes on a deterministic subsample; `class_conditional_change` standardises the change vector
within each class and takes the larger of the two dates' answers.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.vq import kmeans2

from changedet.core.normalize import fast_median
from changedet.core.stats import sample_index

__all__ = ["class_conditional_change", "kmeans_classes"]


def kmeans_classes(
    image: np.ndarray, valid: np.ndarray, *, n_classes: int, seed: int = 0
) -> np.ndarray:
    """(H, W) int16 land-cover class per pixel from k-means on robust-standardised bands (-1 invalid).

    Fitted on a deterministic subsample, then every valid pixel goes to its nearest centre.
    """
    n_bands = image.shape[0]
    flat = image.reshape(n_bands, -1)
    flat_idx = np.flatnonzero(valid.ravel())
    out = np.full(valid.shape, -1, dtype=np.int16)
    if flat_idx.size < n_classes * 10:
        out[valid] = 0
        return out
    sample = flat[:, flat_idx[sample_index(flat_idx.size, 20_000)]].T.astype(np.float64)
    med = fast_median(np.ascontiguousarray(sample.T))
    mad = 1.4826 * fast_median(np.ascontiguousarray(np.abs(sample - med).T))
    mad[mad <= 0] = 1.0
    scaled = (sample - med) / mad
    # scipy re-checks finiteness on every iteration; one check here gives the same answer (and
    # still lets scipy raise its own error on non-finite input).
    finite = bool(np.isfinite(scaled).all())
    centres, _ = kmeans2(scaled, n_classes, seed=seed, minit="++", check_finite=not finite)
    # Nearest centre in standardised units without standardising every pixel:
    # |(x - med)/mad - c|^2 = sum_b (x_b - m_b)^2 / mad_b^2 with m = med + mad * c; the x^2 term
    # is the same for every centre, so argmin of |m|_w^2 - 2 x.(m w) decides.
    w = 1.0 / mad**2
    means = med + mad * centres  # (K, B) in reflectance units
    cross = (means * w).astype(np.float32) @ flat  # (K, N)
    cross *= np.float32(-2.0)
    cross += ((means**2) * w).sum(axis=1).astype(np.float32)[:, None]
    # Running minimum over the K rows: much faster than argmin along a short first axis.
    classes = np.zeros(flat.shape[1], dtype=np.int16)
    best = cross[0].copy()
    for k in range(1, n_classes):
        closer = cross[k] < best
        classes[closer] = k
        np.minimum(best, cross[k], out=best)
    return np.where(valid, classes.reshape(valid.shape), out)


def _class_distance(delta: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """RMS over bands of the change vector standardised by the median/MAD of its class."""
    n_bands = delta.shape[0]
    flat_delta = delta.reshape(n_bands, -1)
    if not np.issubdtype(flat_delta.dtype, np.floating):
        flat_delta = flat_delta.astype(np.float64)
    lookup = classes.ravel().astype(np.intp) + 1  # 0: invalid (-1), j + 1: class j
    # Pixels of each class in increasing index order (stable sort) and where each class starts.
    order = np.argsort(classes.ravel(), kind="stable")
    bounds = np.zeros(n_classes + 2, dtype=np.intp)
    np.cumsum(np.bincount(lookup, minlength=n_classes + 1), out=bounds[1:])
    # Per-class median and MAD of every band (NaN centre: class too small or invalid -> NaN).
    centre = np.full((n_bands, n_classes + 1), np.nan, dtype=flat_delta.dtype)
    spread = np.ones((n_bands, n_classes + 1), dtype=flat_delta.dtype)
    for j in range(n_classes):
        start, stop = bounds[j + 1], bounds[j + 2]
        if stop - start < 20:
            continue
        s = flat_delta[:, order[start + sample_index(stop - start, 50_000)]]
        med = fast_median(s)[:, None]
        mad = 1.4826 * fast_median(np.abs(s - med))
        centre[:, j + 1] = med[:, 0]
        spread[:, j + 1] = np.maximum(mad, 1e-4)
    # Every pixel at once through the per-class tables; the same float32 operations in the same
    # order as standardising each class apart ((d - med) / mad, squared, mean over bands).
    total = np.empty(flat_delta.shape[1], dtype=flat_delta.dtype)
    term = np.empty_like(total)
    for i in range(n_bands):
        dest = total if i == 0 else term
        np.subtract(flat_delta[i], centre[i].take(lookup), out=dest)
        dest /= spread[i].take(lookup)
        np.square(dest, out=dest)
        if i > 0:
            total += term
    np.true_divide(total, np.intp(n_bands), out=total, casting="unsafe")  # as ndarray.mean
    np.sqrt(total, out=total)
    return total.reshape(classes.shape).astype(np.float32, copy=False)


def class_conditional_change(
    before: np.ndarray,
    after: np.ndarray,
    delta: np.ndarray,
    valid: np.ndarray,
    *,
    n_classes: int,
    before_classes: np.ndarray | None = None,
) -> np.ndarray:
    """max over the two dates of the change standardised within that date's land-cover class.
    before_classes: `kmeans_classes(before, valid, n_classes=n_classes)`, when known."""
    if before_classes is None:
        before_classes = kmeans_classes(before, valid, n_classes=n_classes)
    by_before = _class_distance(delta, before_classes, n_classes)
    by_after = _class_distance(delta, kmeans_classes(after, valid, n_classes=n_classes), n_classes)
    return np.fmax(by_before, by_after)
