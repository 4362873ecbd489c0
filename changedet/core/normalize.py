"""Relative radiometric normalisation of one image to another.

Season, sun angle and atmosphere change every band of a whole scene by a gain and an offset; left
alone they read as change everywhere. Each band of the target is regressed on the reference over
pixels that look unchanged (iteratively re-selected, in the spirit of IR-MAD no-change pixels), and
the fitted linear map is applied to the whole target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Normalization", "fast_median", "relative_normalize"]

_MAX_SAMPLES = 50_000  # pixels used per fit: plenty for two parameters per band, and fast
# Rows shorter than this go straight to np.median: narrowing does not pay below it.
_NARROW_MIN = 4096
_PROBE_SIZE = 2048  # evenly strided values that bracket the median rank before narrowing


@dataclass(frozen=True)
class Normalization:
    """target_normalised = gain * target + offset, per band; `n_no_change` pixels fitted."""

    gain: tuple[float, ...]
    offset: tuple[float, ...]
    n_no_change: int


def _sample_index(n: int, limit: int) -> np.ndarray:
    """Deterministic, evenly spread subsample of range(n)."""
    if n <= limit:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).astype(np.int64)


def _middle_pair(row: np.ndarray, k0: int, k1: int) -> tuple[np.generic, np.generic] | None:
    """The k0-th and k1-th smallest values of a 1-D row (k1 - k0 <= 1), or None when the bracket
    missed (or the row holds NaN): the caller then falls back on np.median.

    Exact: a sorted strided probe brackets the rank in [lo, hi]; with `below` values < lo and all
    of [lo, hi] kept, the k-th smallest of the row is the (k - below)-th smallest of the kept ones
    whenever below <= k < below + kept. Partitioning ~15 % of the row replaces partitioning all of
    it (np.median also partitions for the maximum, to detect NaN).
    """
    n = row.size
    probe = np.sort(row[:: max(n // _PROBE_SIZE, 1)])
    m = probe.size
    centre = (m * k1) // n
    margin = 4 * int(np.sqrt(m)) + 4  # ~8 standard deviations of the probe's median rank
    lo = probe[max(centre - margin, 0)]
    hi = probe[min(centre + margin, m - 1)]
    below = int(np.count_nonzero(row < lo))
    kept = np.compress((row >= lo) & (row <= hi), row)
    above = int(np.count_nonzero(row > hi))
    if below > k0 or below + kept.size <= k1 or below + kept.size + above != n:
        return None
    j1 = k1 - below
    kept.partition(j1)
    # Everything left of position j1 is <= kept[j1]: the next smaller rank is their maximum.
    return (kept[:j1].max() if k0 < k1 else kept[j1]), kept[j1]


def fast_median(values: np.ndarray) -> np.ndarray:
    """np.median(values, axis=-1) of a 1-D (a scalar, as np.median) or 2-D array (one value per
    row): the same values bit for bit, NaN included, found by partitioning a bracket around the
    middle rank instead of the whole row (about 3x faster on 50k-100k values)."""
    rows = np.asarray(values)
    if rows.ndim == 1:
        return np.asarray(fast_median(rows[None]))[0]
    if rows.ndim != 2:
        raise ValueError(f"fast_median needs a 1-D or 2-D array, got shape {rows.shape}")
    n = rows.shape[1]
    if n < _NARROW_MIN:
        return np.asarray(np.median(rows, axis=-1))
    k0, k1 = (n - 1) // 2, n // 2
    middle = np.empty((rows.shape[0], 1 if k0 == k1 else 2), dtype=rows.dtype)
    for r, row in enumerate(rows):
        pair = _middle_pair(row, k0, k1)
        if pair is None:
            return np.asarray(np.median(rows, axis=-1))
        middle[r] = pair[2 - middle.shape[1] :]
    # np.median's own last step (mean of the middle value or pair), for identical rounding.
    return np.asarray(np.mean(middle, axis=-1))


def relative_normalize(
    reference: np.ndarray,
    target: np.ndarray,
    *,
    iterations: int = 3,
    no_change_quantile: float = 0.5,
    valid: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, Normalization]:
    """Map `target` (B, H, W) onto the radiometry of `reference` (B, H, W), band by band.

    Pixels finite in both are fitted; after each fit the `no_change_quantile` share with the
    smallest standardised change is kept as no-change for the next fit. NaN stays NaN.
    `valid` (H, W), when the caller has it, must equal "finite in every band of both" (saves
    recomputing it). `out`, a float32 array of the target's shape (it may be `target` itself),
    receives the result instead of a new array.
    Returns the normalised target (float32) and the fitted gains/offsets.
    """
    if reference.shape != target.shape or reference.ndim != 3:
        raise ValueError(
            f"relative_normalize needs two (B, H, W) arrays of one shape, got "
            f"{reference.shape} and {target.shape}"
        )
    n_bands = reference.shape[0]
    if valid is None:
        valid = np.isfinite(reference).all(axis=0) & np.isfinite(target).all(axis=0)
    flat = np.flatnonzero(valid.ravel())
    if flat.size < 10:
        if out is not None:
            out[...] = target
            return out, Normalization((1.0,) * n_bands, (0.0,) * n_bands, 0)
        return target.astype(np.float32, copy=True), Normalization(
            (1.0,) * n_bands, (0.0,) * n_bands, 0
        )
    pick = flat[_sample_index(flat.size, _MAX_SAMPLES)]
    ref = reference.reshape(n_bands, -1)[:, pick].astype(np.float64)
    tgt = target.reshape(n_bands, -1)[:, pick].astype(np.float64)
    keep = np.ones(pick.size, dtype=bool)
    gain = np.ones(n_bands)
    offset = np.zeros(n_bands)
    for _ in range(max(iterations, 1)):
        tgt_kept, ref_kept = tgt[:, keep], ref[:, keep]  # one gather for all bands
        for i in range(n_bands):
            x, y = tgt_kept[i], ref_kept[i]
            sx = x.std()
            if sx > 0:
                # Reduced major axis: symmetric in the two images, unlike ordinary least squares,
                # which shrinks the gain when the target is noisy.
                gain[i] = float(y.std() / sx)
                offset[i] = float(y.mean() - gain[i] * x.mean())
            else:
                gain[i], offset[i] = 1.0, float(y.mean() - x.mean())
        resid = ref - (gain[:, None] * tgt + offset[:, None])
        scale = 1.4826 * fast_median(np.abs(resid - fast_median(resid)[:, None]))
        dist = ((resid / np.maximum(scale, 1e-6)[:, None]) ** 2).sum(axis=0)
        keep = dist <= np.quantile(dist, no_change_quantile)
    # float32 gain * target + offset, band by band into the output (no full-size temporary).
    target32 = target.astype(np.float32, copy=False)
    gain32, offset32 = gain.astype(np.float32), offset.astype(np.float32)
    if out is None:
        out = np.empty(target.shape, dtype=np.float32)
    for i in range(n_bands):  # reads band i of the target before writing band i of `out`
        np.multiply(target32[i], gain32[i], out=out[i])
        out[i] += offset32[i]
    return out, Normalization(
        tuple(float(g) for g in gain), tuple(float(o) for o in offset), int(keep.sum())
    )
