"""Relative radiometric normalisation of one image to another.

Season, sun angle and atmosphere change every band of a whole scene by a gain and an offset; left
alone they read as change everywhere. Each band of the target is regressed on the reference over
pixels that look unchanged (iteratively re-selected, in the spirit of IR-MAD no-change pixels), and
the fitted linear map is applied to the whole target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Normalization", "relative_normalize"]

_MAX_SAMPLES = 50_000  # pixels used per fit: plenty for two parameters per band, and fast


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


def relative_normalize(
    reference: np.ndarray,
    target: np.ndarray,
    *,
    iterations: int = 3,
    no_change_quantile: float = 0.5,
) -> tuple[np.ndarray, Normalization]:
    """Map `target` (B, H, W) onto the radiometry of `reference` (B, H, W), band by band.

    Pixels finite in both are fitted; after each fit the `no_change_quantile` share with the
    smallest standardised change is kept as no-change for the next fit. NaN stays NaN.
    Returns the normalised target (float32) and the fitted gains/offsets.
    """
    if reference.shape != target.shape or reference.ndim != 3:
        raise ValueError(
            f"relative_normalize needs two (B, H, W) arrays of one shape, got "
            f"{reference.shape} and {target.shape}"
        )
    n_bands = reference.shape[0]
    valid = np.isfinite(reference).all(axis=0) & np.isfinite(target).all(axis=0)
    flat = np.flatnonzero(valid.ravel())
    if flat.size < 10:
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
        for i in range(n_bands):
            x, y = tgt[i, keep], ref[i, keep]
            sx = x.std()
            if sx > 0:
                # Reduced major axis: symmetric in the two images, unlike ordinary least squares,
                # which shrinks the gain when the target is noisy.
                gain[i] = float(y.std() / sx)
                offset[i] = float(y.mean() - gain[i] * x.mean())
            else:
                gain[i], offset[i] = 1.0, float(y.mean() - x.mean())
        resid = ref - (gain[:, None] * tgt + offset[:, None])
        scale = 1.4826 * np.median(np.abs(resid - np.median(resid, axis=1, keepdims=True)), axis=1)
        dist = ((resid / np.maximum(scale, 1e-6)[:, None]) ** 2).sum(axis=0)
        keep = dist <= np.quantile(dist, no_change_quantile)
    out = target.astype(np.float32) * gain.astype(np.float32)[:, None, None]
    out += offset.astype(np.float32)[:, None, None]
    return out, Normalization(
        tuple(float(g) for g in gain), tuple(float(o) for o in offset), int(keep.sum())
    )
