"""Read and validate AOI files; choose each AOI's UTM grid.

Accepts GeoJSON, GeoPackage and Shapefile in any CRS (reprojected to EPSG:4326); one AOI per
polygon feature. Invalid rings are repaired with a warning; empty, non-polygon and oversized
AOIs are refused with a one-line error.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import MultiPolygon, Polygon, mapping

from changedet.config import AOIConfig
from changedet.errors import AOIError
from changedet.models import AOI, Grid, Scene

__all__ = [
    "aoi_mask",
    "area_km2",
    "crop_to_footprints",
    "grid_for",
    "load_aois",
    "reproject_geometry",
    "safe_id",
    "to_grid_crs",
    "utm_epsg",
]

_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_id(raw: object, fallback: str) -> str:
    """Make a value safe as one path component: no separators, no '..', never empty."""
    text = _SAFE_ID.sub("-", str(raw)).strip("-.")[:64]
    return text or fallback


def load_aois(path: str | Path, config: AOIConfig | None = None) -> list[AOI]:
    """Read every polygon feature of a vector file as an AOI in EPSG:4326."""
    import pyogrio  # the only vector-file reader; local import keeps `import changedet` light

    cfg = config or AOIConfig()
    p = Path(path)
    if not p.exists():
        raise AOIError(f"AOI file '{p}' not found; pass a GeoJSON, GeoPackage or Shapefile path")
    if p.is_dir():
        raise AOIError(f"AOI path '{p}' is a folder; pass one GeoJSON, GeoPackage or Shapefile")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            frame = pyogrio.read_dataframe(p)
    except Exception as exc:  # pyogrio raises DataSourceError and friends; report them as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AOIError(
            f"AOI file '{p}' could not be read as a vector file ({first}); "
            "pass a GeoJSON, GeoPackage or Shapefile"
        ) from None
    if len(frame) == 0:
        raise AOIError(f"AOI file '{p}' has no features; draw at least one polygon")
    if frame.crs is None:
        warnings.warn(f"AOI file '{p}' has no CRS; assuming EPSG:4326", stacklevel=2)
        src_crs = CRS.from_epsg(4326)
    else:
        src_crs = CRS.from_user_input(frame.crs)

    aois: list[AOI] = []
    seen: set[str] = set()
    for index, row in enumerate(frame.itertuples(index=False)):
        props = {k: v for k, v in row._asdict().items() if k != "geometry"}
        raw_id = props.get(cfg.id_property) or props.get("name") or f"aoi-{index + 1}"
        aoi_id = _unique_id(safe_id(raw_id, f"aoi-{index + 1}"), index, seen, p)
        geom = _check_geometry(row.geometry, aoi_id, p)
        if not src_crs.equals(CRS.from_epsg(4326)):
            geom = reproject_geometry(geom, src_crs, "EPSG:4326")
        aoi = AOI(
            id=aoi_id,
            name=str(props.get("name") or aoi_id),
            geometry=geom,
            properties={k: _plain(v) for k, v in props.items()},
        )
        _check_size(aoi, cfg)
        aois.append(aoi)
    return aois


def _unique_id(aoi_id: str, index: int, seen: set[str], path: Path) -> str:
    """`aoi_id`, or when an earlier feature of the file has it (case-insensitively: one output
    folder on macOS and Windows), a new one, announced: it names the feature's output folder."""
    unique, n = aoi_id, index + 1
    while unique.lower() in seen:
        unique = f"{aoi_id}-{n}"
        n += 1
    if unique != aoi_id:
        warnings.warn(
            f"AOI file '{path}': feature {index + 1} repeats the id '{aoi_id}'; "
            f"its outputs go to '{unique}' (give each feature its own id to choose the names)",
            stacklevel=3,
        )
    seen.add(unique.lower())
    return unique


def _plain(value: object) -> object:
    """numpy scalars and NaN from the data frame → JSON-friendly values."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _check_geometry(geom: object, aoi_id: str, path: Path) -> Polygon | MultiPolygon:
    if geom is None or getattr(geom, "is_empty", True):
        raise AOIError(f"AOI '{aoi_id}' in '{path}' has an empty geometry; draw a polygon")
    if not isinstance(geom, Polygon | MultiPolygon):
        kind = getattr(geom, "geom_type", type(geom).__name__)
        raise AOIError(
            f"AOI '{aoi_id}' in '{path}' is a {kind}, not a polygon; draw the area as a Polygon"
        )
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        warnings.warn(f"AOI '{aoi_id}': invalid geometry ({reason}); repaired", stacklevel=3)
        fixed = shapely.make_valid(geom)
        polys = [
            g for g in getattr(fixed, "geoms", [fixed]) if isinstance(g, Polygon | MultiPolygon)
        ]
        if not polys:
            raise AOIError(
                f"AOI '{aoi_id}' in '{path}' cannot be repaired into a polygon; redraw it"
            )
        fixed = shapely.union_all(polys)
        if fixed.is_empty:
            raise AOIError(f"AOI '{aoi_id}' in '{path}' has no area after repair; redraw it")
        return fixed
    return geom


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 / UTM zone containing (lon, lat)."""
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    return (32600 if lat >= 0 else 32700) + zone


def reproject_geometry(geom: object, src: object, dst: object) -> Any:
    """Reproject a shapely geometry between CRSs (anything pyproj accepts), x/y axis order."""
    tr = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(geom, tr.transform, interleaved=False)


def to_grid_crs(geom: object, crs: str) -> Any:
    """Reproject an EPSG:4326 geometry to `crs`."""
    return reproject_geometry(geom, "EPSG:4326", crs)


def area_km2(aoi: AOI) -> float:
    centroid = aoi.geometry.centroid
    utm = to_grid_crs(aoi.geometry, f"EPSG:{utm_epsg(centroid.x, centroid.y)}")
    return float(utm.area) / 1e6


def _check_size(aoi: AOI, cfg: AOIConfig) -> None:
    km2 = area_km2(aoi)
    if km2 > cfg.max_area_km2:
        raise AOIError(
            f"AOI '{aoi.id}' covers {km2:.0f} km², above the {cfg.max_area_km2:.0f} km² limit; "
            "draw a smaller AOI or raise [aoi] max_area_km2"
        )
    if km2 <= 0:
        raise AOIError(f"AOI '{aoi.id}' has no area; draw a polygon")


def grid_for(aoi: AOI, res: float = 10.0) -> Grid:
    """The AOI's grid: its UTM zone, `res` metres, bounds snapped outward to the pixel.

    Snapping to multiples of `res` keeps the grid on Sentinel-2's own 10/20/60 m pixel lattice
    (tile origins are multiples of 60 m), so same-zone tiles need no resampling.
    """
    centroid = aoi.geometry.centroid
    crs = f"EPSG:{utm_epsg(centroid.x, centroid.y)}"
    xmin, ymin, xmax, ymax = to_grid_crs(aoi.geometry, crs).bounds
    x0 = math.floor(xmin / res) * res
    y0 = math.floor(ymin / res) * res
    x1 = math.ceil(xmax / res) * res
    y1 = math.ceil(ymax / res) * res
    width, height = round((x1 - x0) / res), round((y1 - y0) / res)
    return Grid.from_origin(crs, x0, y1, res, width, height)


def aoi_mask(aoi: AOI, grid: Grid) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies inside the AOI."""
    from rasterio.features import rasterize

    geom = to_grid_crs(aoi.geometry, grid.crs)
    out = rasterize(
        [(mapping(geom), 1)], out_shape=grid.shape, transform=grid.transform, fill=0, dtype="uint8"
    )
    return out.astype(bool)


def crop_to_footprints(grid: Grid, aoi: AOI, scenes: Sequence[Scene]) -> Grid:
    """Shrink the AOI grid to where scenes have data (keeps the pixel lattice)."""
    footprints = [s.footprint for s in scenes if s.footprint is not None]
    if not footprints or len(footprints) != len(scenes):
        return grid
    covered = shapely.union_all(footprints).intersection(aoi.geometry)
    if covered.is_empty:
        return grid
    xmin, ymin, xmax, ymax = to_grid_crs(covered, grid.crs).bounds
    gx0, _, _, gy1 = grid.bounds
    res = grid.res
    col0 = max(0, math.floor((xmin - gx0) / res))
    col1 = min(grid.width, math.ceil((xmax - gx0) / res))
    row0 = max(0, math.floor((gy1 - ymax) / res))
    row1 = min(grid.height, math.ceil((gy1 - ymin) / res))
    if col1 <= col0 or row1 <= row0:
        return grid
    return grid.window(row0, col0, row1 - row0, col1 - col0)
