"""Levelling the dates of a series to their baseline: what varies slowly across a date is not
construction.

Haze, thin cloud veils SCL does not flag, and residual calibration and illumination differences
brighten or darken a date over kilometres; a new building changes tens of metres. Each clear
date's difference from the baseline composite is summarised per band on blocks of
`block` x `block` pixels (the median of the block's clear pixels, which a structure covering a
small share of the block hardly moves); the block grid is interpolated bilinearly back to the
pixels and subtracted from the date. What remains is the date's fine detail on the baseline's
broad levels, so a faint new roof is compared against sensor noise rather than against the
day's haze.

Pure numpy: `date_levels` gives a date's block grid (`block_levels` on a band of whole block
rows at a time, then `filled`, gives the same), `subtract_levels` takes it off some rows (the
same per pixel whatever rows are given, so the streaming detector and the in-memory one level
alike, to the bit).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage

__all__ = [
    "MIN_BLOCK_CLEAR",
    "block_levels",
    "date_levels",
    "filled",
    "subtract_levels",
]

# A block with fewer clear pixels than this share takes its level from the nearest block with
# enough: a few pixels between clouds are too few to tell haze from ground.
MIN_BLOCK_CLEAR = 0.3


def _block_medians(residual: np.ndarray, block: int) -> np.ndarray:
    """(nby, nbx) median of the finite values of each block of `residual` (H, W); NaN where a
    block has fewer than MIN_BLOCK_CLEAR of its pixels finite."""
    h, w = residual.shape
    nby, nbx = -(-h // block), -(-w // block)
    padded = np.full((nby * block, nbx * block), np.nan, dtype=np.float32)
    padded[:h, :w] = residual
    # `cells` is a copy of `padded` or a view of it (one block), ours either way: sorted in place
    cells = padded.reshape(nby, block, nbx, block).transpose(0, 2, 1, 3).reshape(nby, nbx, -1)
    n = np.count_nonzero(np.isfinite(cells), axis=2)
    cells.sort(axis=2)  # NaN sort last
    low = np.take_along_axis(cells, np.maximum(n - 1, 0)[..., None] // 2, axis=2)[..., 0]
    high = np.take_along_axis(cells, (n // 2)[..., None], axis=2)[..., 0]
    out = (low + high) * np.float32(0.5)
    # The share is of the block's pixels inside the grid (edge blocks are smaller).
    inside = (
        np.minimum(block, h - np.arange(nby) * block)[:, None]
        * np.minimum(block, w - np.arange(nbx) * block)[None, :]
    )
    out[n < MIN_BLOCK_CLEAR * inside] = np.nan
    return out


def filled(levels: np.ndarray) -> np.ndarray:
    """(B, nby, nbx) block levels whose NaN blocks take the value of the nearest finite block of
    their band (all zero when none is)."""
    return np.stack([_filled(band) for band in levels])


def _filled(levels: np.ndarray) -> np.ndarray:
    bad = np.isnan(levels)
    if not bad.any():
        return levels
    if bad.all():
        return np.zeros_like(levels)
    nearest = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
    return levels[tuple(nearest)]


def block_levels(
    values: np.ndarray, clear: np.ndarray, reference: np.ndarray, block: int
) -> np.ndarray:
    """(B, nby, nbx) float32: per band, the block medians of `values` - `reference` over the
    pixels `clear` (and finite in both); NaN where too few are. values, reference: (B, H, W)
    reflectance (the date, co-registered; the baseline composite); clear: (H, W) bool. Blocks
    do not overlap, so a date's rows cut at multiples of `block` give its block rows."""
    out = []
    for band, ref in zip(values, reference, strict=True):
        residual = np.where(clear, band - ref, np.float32(np.nan))
        out.append(_block_medians(residual, block))
    return np.stack(out)


def date_levels(
    values: np.ndarray, clear: np.ndarray, reference: np.ndarray, block: int
) -> np.ndarray:
    """(B, nby, nbx) float32: `block_levels`, holes filled from the nearest block."""
    return filled(block_levels(values, clear, reference, block))


def _taps(start: int, stop: int, size: int, block: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps along one axis: for pixels start..stop-1 the two block indices and the
    weight of the second (block centres at (i + 0.5) * block - 0.5; clamped at the edges)."""
    at = (np.arange(start, stop, dtype=np.float64) + 0.5) / block - 0.5
    at = np.clip(at, 0.0, size - 1)
    first = np.minimum(np.floor(at).astype(np.intp), max(size - 2, 0))
    second = np.minimum(first + 1, size - 1)
    weight = (at - first).astype(np.float32)
    return first, second, weight


def _runs(
    levels: np.ndarray, rows: slice, width: int, block: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """(start, stop, top, step, weights) per run of `rows` between the same two block-row
    centres: there the levels are top + step * weight, row by row."""
    nby, nbx = levels.shape[1:]
    r0, r1, wr = _taps(rows.start, rows.stop, nby, block)
    first, last = int(r0[0]), int(r1[-1]) + 1  # the block rows these rows lie between
    c0, c1, wc = _taps(0, width, nbx, block)
    near = levels[:, first:last]
    across = near[:, :, c0]  # (B, last - first, width): block rows interpolated along columns
    across += (near[:, :, c1] - across) * wc
    starts = np.flatnonzero(np.r_[True, r0[1:] != r0[:-1]]).tolist()
    for start, stop in zip(starts, [*starts[1:], r0.size], strict=True):
        top = across[:, r0[start] - first]
        yield start, stop, top, across[:, r1[start] - first] - top, wr[start:stop]


def subtract_levels(values: np.ndarray, levels: np.ndarray, rows: slice, block: int) -> None:
    """values (B, len(rows), W) -= the block grid `levels` (B, nby, nbx) interpolated
    bilinearly to the pixels of `rows`, a run of rows at a time (no strip-sized array of
    levels)."""
    for start, stop, top, step, weights in _runs(levels, rows, values.shape[2], block):
        run = step[:, None, :] * weights[:, None]
        run += top[:, None, :]
        values[:, start:stop] -= run
