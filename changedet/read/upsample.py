"""A 20 m band onto the 10 m grid, in numpy: what GDAL gives, at a fraction of its cost.

Sentinel-2's 20 m bands (SWIR, SCL) share their tile's lattice with the 10 m ones, so on the
AOI's grid every 10 m pixel centre lies a quarter of a source pixel from a source pixel centre:
bilinear weights are 0.25 and 0.75 on each axis, nearest is the source pixel under the centre.
Computed here with slices (arrays in, arrays out) the values are GDAL's to the bit
(tests/test_read.py):

- inside the tile, GDAL's resampled window read: weights in float32 (every product and sum of a
  16-bit integer with quarters is exact there), rounded half up to the source's integer type;
  a pixel any of whose four taps is nodata is nodata (`read.cog` masks GDAL's blend likewise);
- along the tile's edge, GDAL's warper, which weights only the taps inside the tile: the same as
  repeating the edge pixel outwards (the one tap left on an axis gets the whole weight). The
  warper also leaves out nodata taps there; such a grid is not computed here (None: the caller
  warps). Pixels past the tile's edge are nodata.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TAPS_DTYPES", "source_span", "upsample_2x"]

TAPS_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))  # rounding half up is GDAL's here


def source_span(offset: int, n: int, size: int) -> tuple[int, int]:
    """[start, stop) of the source pixels that `n` grid pixels from 10 m index `offset` draw on,
    along an axis of `size` source pixels (empty when the grid misses it)."""
    first, last = max(offset, 0), min(offset + n, 2 * size) - 1  # grid pixels over the source
    if last < first:
        return 0, 0
    return max(first // 2 - 1, 0), min(last // 2 + 2, size)


def _inside(offset: int, n: int, size: int) -> tuple[int, int]:
    """[start, stop) of the grid pixels (0..n) that lie over the source."""
    return min(max(-offset, 0), n), max(min(2 * size - offset, n), 0)


def _padded(window: np.ndarray, start: int, stop: int, size: int, axis: int) -> np.ndarray:
    """`window` (source pixels start..stop on `axis`) with the source's edge pixel repeated
    once beyond each edge of the source it reaches."""
    before = 1 if start == 0 else 0
    after = 1 if stop == size else 0
    pad = [(0, 0)] * window.ndim
    pad[axis] = (before, after)
    return np.pad(window, pad, mode="edge") if before or after else window


def _along(array: np.ndarray, axis: int, start: int, stop: int | None, step: int = 1) -> np.ndarray:
    index: list[slice] = [slice(None)] * array.ndim
    index[axis] = slice(start, stop, step)
    return array[tuple(index)]


def _along_axis(
    near: np.ndarray,
    far: np.ndarray,
    combine: np.ufunc,
    k0: int,
    k1: int,
    origin: int,
    axis: int,
) -> np.ndarray:
    """One axis of the grid pixels at 10 m indices k0..k1: pixel k = 2m is
    combine(near[m], far[m - 1]), pixel k = 2m + 1 is combine(near[m], far[m + 1]), where m
    counts source pixels and `near`, `far` hold the source from pixel `origin` on (index 0),
    its edges repeated."""
    m0, m1 = k0 // 2, (k1 - 1) // 2 + 1  # the source pixels m of the grid pixels 2m, 2m + 1
    shape = list(near.shape)
    shape[axis] = 2 * (m1 - m0)
    out = np.empty(shape, dtype=near.dtype)
    mid = _along(near, axis, m0 - origin, m1 - origin)
    before = _along(far, axis, m0 - 1 - origin, m1 - 1 - origin)
    after = _along(far, axis, m0 + 1 - origin, m1 + 1 - origin)
    combine(mid, before, out=_along(out, axis, 0, None, 2))
    combine(mid, after, out=_along(out, axis, 1, None, 2))
    return _along(out, axis, k0 - 2 * m0, k0 - 2 * m0 + k1 - k0)


def _bilinear_axis(values: np.ndarray, k0: int, k1: int, origin: int, axis: int) -> np.ndarray:
    """Bilinear along one axis: 0.75 x the nearer source pixel + 0.25 x the farther one. Each
    product and sum is exact in float32 for 16-bit values, so the order does not matter."""
    three, quarter = values * np.float32(0.75), values * np.float32(0.25)
    return _along_axis(three, quarter, np.add, k0, k1, origin, axis)


def _any_tap(bad: np.ndarray, k0: int, k1: int, origin: int, axis: int) -> np.ndarray:
    """Whether either tap of each grid pixel along one axis is set."""
    return _along_axis(bad, bad, np.logical_or, k0, k1, origin, axis)


def _edge(
    shape: tuple[int, ...],
    k_rows: tuple[int, int],
    k_cols: tuple[int, int],
    source: tuple[int, int],
) -> np.ndarray:
    """The grid pixels with a tap past the source's edge (where the edge pixel is repeated)."""
    edge = np.zeros(shape, bool)
    if k_rows[0] == 0:
        edge[0] = True
    if k_rows[1] == 2 * source[0]:
        edge[-1] = True
    if k_cols[0] == 0:
        edge[:, 0] = True
    if k_cols[1] == 2 * source[1]:
        edge[:, -1] = True
    return edge


def upsample_2x(
    window: np.ndarray,
    start: tuple[int, int],
    offset: tuple[int, int],
    shape: tuple[int, int],
    source_shape: tuple[int, int],
    *,
    bilinear: bool,
    nodata: float,
) -> np.ndarray | None:
    """The (H, W) = `shape` grid of a 20 m source band, from `window`: the source's pixels from
    (row, col) `start` on (`source_span` on each axis). `offset`: the grid's first pixel as
    10 m (row, col) indices from the source's origin; `source_shape`: the source's (rows, cols).
    None when a nodata tap of an edge pixel would make GDAL's warper renormalise."""
    out = np.full(shape, nodata, dtype=window.dtype)
    (r0, r1), (c0, c1) = (_inside(offset[i], shape[i], source_shape[i]) for i in (0, 1))
    if r1 <= r0 or c1 <= c0:
        return out
    k_rows = (offset[0] + r0, offset[0] + r1)
    k_cols = (offset[1] + c0, offset[1] + c1)
    stops = (start[0] + window.shape[0], start[1] + window.shape[1])
    padded = _padded(window, start[0], stops[0], source_shape[0], 0)
    padded = _padded(padded, start[1], stops[1], source_shape[1], 1)
    origin = (start[0] - (1 if start[0] == 0 else 0), start[1] - (1 if start[1] == 0 else 0))
    if not bilinear:  # grid pixel k is source pixel k // 2
        block = padded[
            k_rows[0] // 2 - origin[0] : (k_rows[1] - 1) // 2 + 1 - origin[0],
            k_cols[0] // 2 - origin[1] : (k_cols[1] - 1) // 2 + 1 - origin[1],
        ]
        doubled = block.repeat(2, axis=0).repeat(2, axis=1)
        out[r0:r1, c0:c1] = doubled[
            k_rows[0] % 2 : k_rows[0] % 2 + r1 - r0, k_cols[0] % 2 : k_cols[0] % 2 + c1 - c0
        ]
        return out
    bad = None
    if (window == nodata).any():  # a tile's no-data part (beyond the swath) within reach
        bad = _any_tap(_any_tap(padded == nodata, *k_cols, origin[1], 1), *k_rows, origin[0], 0)
        if (bad & _edge(bad.shape, k_rows, k_cols, source_shape)).any():
            return None
    values = _bilinear_axis(padded.astype(np.float32), *k_cols, origin[1], 1)
    values = _bilinear_axis(values, *k_rows, origin[0], 0)
    values += np.float32(0.5)
    np.floor(values, out=values)
    result = values.astype(window.dtype)
    if bad is not None:
        result[bad] = window.dtype.type(nodata)
    out[r0:r1, c0:c1] = result
    return out
