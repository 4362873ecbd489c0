"""From the context window back to the AOI: crop rasters, clip outlines (pure numpy/shapely).

The detector runs on a context window around the AOI (`read.context_m`) so that its statistics
do not depend on how the polygon is drawn. What the run reports is the AOI's alone: structures
whose centre (`centre_point`) lies inside the polygon (`Ledger.within`), outlines and berm lines
clipped to the polygon, and rasters cropped to the AOI's own grid with change evidence masked
outside it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import shapely

from changedet.models import Berm, ChangeMap, Composite, Grid, Structure

__all__ = [
    "Window",
    "centre_point",
    "clip_berms",
    "clip_structures",
    "crop_change",
    "crop_composite",
    "window_of",
]


@dataclass(frozen=True)
class Window:
    """Where a sub-grid sits in a larger grid on the same lattice."""

    row: int
    col: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)


def window_of(inner: Grid, outer: Grid) -> tuple[Grid, Window]:
    """The part of `inner` inside `outer` (same lattice), as a grid and its window of `outer`.

    Raises ValueError when the grids are not on one lattice or do not overlap.
    """
    if inner.crs != outer.crs or not np.isclose(inner.res, outer.res):
        raise ValueError(f"grids differ in CRS or resolution: {inner.crs} vs {outer.crs}")
    ix0, _, _, iy1 = inner.bounds
    ox0, _, _, oy1 = outer.bounds
    col, row = (ix0 - ox0) / outer.res, (oy1 - iy1) / outer.res
    if not (np.isclose(col, round(col)) and np.isclose(row, round(row))):
        raise ValueError("the inner grid is not on the outer grid's pixel lattice")
    r0, c0 = max(0, round(row)), max(0, round(col))
    r1 = min(outer.height, round(row) + inner.height)
    c1 = min(outer.width, round(col) + inner.width)
    if r1 <= r0 or c1 <= c0:
        raise ValueError("the grids do not overlap")
    win = Window(r0, c0, r1 - r0, c1 - c0)
    return outer.window(r0, c0, win.height, win.width), win


def _crop(array: np.ndarray, win: Window) -> np.ndarray:
    """A view, not a copy: a year of window composites is hundreds of MB, and the run keeps the
    window's while the outputs use the AOI's (a caller that writes into a crop copies it)."""
    rows, cols = win.slices
    return array[..., rows, cols]


def crop_composite(comp: Composite, grid: Grid, win: Window) -> Composite:
    """`comp` on the sub-grid `grid` at `win`."""
    return replace(
        comp,
        grid=grid,
        reflectance=_crop(comp.reflectance, win),
        count=_crop(comp.count, win),
        source_date=_crop(comp.source_date, win),
    )


def crop_change(change: ChangeMap, grid: Grid, win: Window, inside: np.ndarray) -> ChangeMap:
    """`change` on the sub-grid `grid` at `win`, with no change evidence outside `inside`
    ((height, width) bool on `grid`, the AOI polygon's pixels)."""

    def scores(a: np.ndarray) -> np.ndarray:
        out = _crop(a, win).astype(np.float32, copy=True)
        out[~inside] = np.nan
        return out

    def masks(a: np.ndarray) -> np.ndarray:
        return _crop(a, win) & inside

    optional: dict[str, Any] = {}
    if change.structure_score is not None:
        optional["structure_score"] = scores(change.structure_score)
    if change.structure_mask is not None:
        optional["structure_mask"] = masks(change.structure_mask)
    if change.band_change is not None:
        optional["band_change"] = _crop(change.band_change, win)
    return replace(
        change,
        grid=grid,
        score=scores(change.score),
        likelihood=scores(change.likelihood),
        mask=masks(change.mask),
        indicators={k: _crop(v, win) for k, v in change.indicators.items()},
        **optional,
    )


def _parts(geom: Any, dim: int) -> Any:
    """The parts of `geom` of dimension `dim` (2 polygons, 1 lines): an intersection may add
    the points and lines where outlines only touch."""
    if shapely.get_dimensions(geom) == dim and not isinstance(geom, shapely.GeometryCollection):
        return geom
    parts = [g for g in shapely.get_parts(geom) if shapely.get_dimensions(g) == dim]
    return shapely.union_all(parts) if parts else shapely.GeometryCollection()


def _clipped(geom: Any, polygon: Any, dim: int) -> Any | None:
    """`geom` within `polygon` (its parts of dimension `dim`), `geom` itself when wholly inside,
    None when wholly outside."""
    inside = _parts(shapely.intersection(geom, polygon), dim)
    if inside.is_empty:
        return None
    return geom if inside.equals(geom) else inside


def centre_point(geom: Any) -> Any | None:
    """A structure's centre: its centroid, or a point on its surface when the centroid falls
    outside it (an L-shaped or multi-part footprint); None for an empty geometry. What its
    lat/lon publish and what decides the AOI it belongs to (`Ledger.within`)."""
    if geom is None or geom.is_empty:
        return None
    point = geom.centroid
    return point if geom.contains(point) else geom.representative_point()


def clip_structures(structures: Sequence[Structure], polygon: Any) -> tuple[Structure, ...]:
    """Outlines clipped to the AOI `polygon` (grid CRS); `area_m2` stays the whole structure's.
    A structure wholly outside (which `Ledger.within` has already removed) is dropped."""
    out = []
    for s in structures:
        geom = _clipped(s.geometry, polygon, 2)
        if geom is not None:
            out.append(s if geom is s.geometry else replace(s, geometry=geom))
    return tuple(out)


def clip_berms(
    berms: Sequence[Berm], polygon: Any, structure_ids: Collection[str] | None = None
) -> tuple[Berm, ...]:
    """Berm lines clipped to the AOI `polygon` (grid CRS); lines wholly outside are dropped.
    With `structure_ids` (the AOI's structures), a line ringing a structure not among them (its
    centre outside the AOI) keeps no `structure_id`: the outputs never name a structure they
    do not hold."""
    out = []
    for b in berms:
        geom = _clipped(b.geometry, polygon, 1)
        if geom is None:
            continue
        if geom is not b.geometry:
            b = replace(b, geometry=geom, length_m=round(float(geom.length), 1))
        if structure_ids is not None and b.structure_id not in structure_ids:
            b = replace(b, structure_id=None)
        out.append(b)
    return tuple(out)
