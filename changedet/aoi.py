"""Read and validate AOI files; choose each AOI's UTM grid.

Accepts GeoJSON, GeoPackage and Shapefile in any CRS (reprojected to EPSG:4326); one AOI per
polygon feature. Invalid rings are repaired with a warning; empty, non-polygon and oversized
AOIs are refused with a one-line error.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from pyproj import CRS, Transformer
from shapely.geometry import LineString, MultiLineString, MultiPolygon, Polygon, box, mapping

from changedet.config import AOIConfig
from changedet.errors import AOIError
from changedet.models import AOI, Grid, Scene

__all__ = [
    "aoi_mask",
    "aoi_utm_epsg",
    "area_km2",
    "crop_to_footprints",
    "grid_for",
    "load_aois",
    "lonlat_bbox",
    "lonlat_centroid",
    "near_longitude",
    "reproject_geometry",
    "safe_id",
    "split_at_antimeridian",
    "to_grid_crs",
    "utm_epsg",
]

_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_id(raw: object, fallback: str) -> str:
    """Make a value safe as one path component: no separators, no '..', never empty."""
    text = _SAFE_ID.sub("-", str(raw)).strip("-.")[:64]
    return text or fallback


def load_aois(path: str | Path, config: AOIConfig | None = None) -> list[AOI]:
    """Read every polygon feature of a vector file as an AOI in EPSG:4326. A file of several
    layers (a GeoPackage) is named with its layer, `FILE:LAYER`."""
    cfg = config or AOIConfig()
    p, layer, frame = _read_frame(str(path))
    if len(frame) == 0:
        raise AOIError(f"AOI file '{p}' has no features; draw at least one polygon")
    if frame.crs is None:
        _refuse_projected_without_crs(p, tuple(float(v) for v in frame.total_bounds))
        warnings.warn(f"AOI file '{p}' has no CRS; assuming EPSG:4326", stacklevel=2)
        src_crs = CRS.from_epsg(4326)
    else:
        src_crs = CRS.from_user_input(frame.crs)
        _refuse_degrees_in_metres(p, src_crs, tuple(float(v) for v in frame.total_bounds))

    if cfg.id_property != AOIConfig().id_property and cfg.id_property not in frame.columns:
        warnings.warn(  # a misspelt aoi.id_property would rename every folder and ledger
            f"AOI file '{p}': no feature has the property '{cfg.id_property}' (aoi.id_property); "
            "ids come from 'name', else the file's name",
            stacklevel=2,
        )
    aois: list[AOI] = []
    seen: set[str] = set()
    cut = _ids_cut_at_nul(p, cfg.id_property, len(frame))
    # Unnamed features are named after their file, so two unnamed files do not write (and
    # replace) one OUT/aoi-1 folder
    stem = safe_id(f"{p.stem}-{layer}" if layer else p.stem, "aoi")
    for index, row in enumerate(frame.itertuples(index=False)):
        props = {k: _plain(v) for k, v in row._asdict().items() if k != "geometry"}
        given = cut.get(index) or _id_text(props.get(cfg.id_property))
        name = _id_text(props.get("name")) or _id_text(props.get("Name"))  # KML's is "Name"
        unnamed = stem if len(frame) == 1 else f"{stem}-{index + 1}"
        raw_id = given or name or unnamed
        named = safe_id(raw_id, unnamed)
        if given and named != raw_id:  # a name may well have spaces
            warnings.warn(
                f"AOI file '{p}': id '{_shown(raw_id)}' is not a safe folder name; its outputs go to "
                f"'{named}' (use letters, digits, '-', '_' and '.')",
                stacklevel=2,
            )
        aoi_id = _unique_id(named, index, seen, p)
        geom = _check_geometry(row.geometry, aoi_id, p)
        if not src_crs.equals(CRS.from_epsg(4326)):
            geom = reproject_geometry(geom, src_crs, "EPSG:4326")
        geom = _lonlat(geom, aoi_id, p)
        aoi = AOI(
            id=aoi_id,
            name=name or aoi_id,
            geometry=geom,
            properties=props,
        )
        _check_size(aoi, cfg)
        aois.append(aoi)
    return aois


def _read_frame(path: str) -> tuple[Path, str, Any]:
    """The AOI file, the layer `FILE:LAYER` names ("" for none) and its features as a data
    frame: its one layer with geometry, or that layer."""
    import pyogrio  # the only vector-file reader; local import keeps `import changedet` light

    p, layer = Path(path), None
    if not p.exists():  # FILE:LAYER, the file the shortest such head (a layer may hold ':')
        cuts = [i for i, ch in enumerate(path) if ch == ":"]
        head = next((i for i in cuts if Path(path[:i]).is_file()), None)
        if head is not None:
            p, layer = Path(path[:head]), path[head + 1 :]
    if not p.exists():
        raise AOIError(f"AOI file '{p}' not found; pass a GeoJSON, GeoPackage or Shapefile path")
    if p.is_dir():
        raise AOIError(f"AOI path '{p}' is a folder; pass one GeoJSON, GeoPackage or Shapefile")
    try:
        spatial = [str(name) for name, kind in pyogrio.list_layers(p) if kind is not None]
        if layer is not None and layer not in spatial:
            raise AOIError(
                f"AOI file '{p}' has no layer '{layer}' with geometry; its layers: "
                f"{', '.join(spatial) or 'none'}"
            )
        if layer is None and len(spatial) > 1:
            raise AOIError(
                f"AOI file '{p}' has {len(spatial)} layers ({', '.join(spatial)}); name the one "
                f"to read as '{p}:{spatial[0]}'"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            frame = pyogrio.read_dataframe(p, layer=layer or (spatial[0] if spatial else None))
    except AOIError:
        raise
    except Exception as exc:  # pyogrio raises DataSourceError and friends; report them as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # GDAL's own advice ("prefix the path with '<DRIVER>:'") is not ours to give
        first = first.split(" It might help to specify", 1)[0].strip().rstrip(";.")
        if p.is_file() and p.stat().st_size == 0:
            first = "the file is empty"
        raise AOIError(
            f"AOI file '{p}' could not be read as a vector file ({first}); "
            "pass a GeoJSON, GeoPackage or Shapefile"
        ) from None
    return p, (layer or "") if len(spatial) > 1 else "", frame  # one layer: the file names it


def _shown(text: str) -> str:
    """`text` on one line: control characters (a newline, a NUL) escaped as Python writes them."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _ids_cut_at_nul(path: Path, id_property: str, count: int) -> dict[int, str]:
    """The ids of a GeoJSON file's features that hold a NUL character (JSON's \\u0000), by
    feature: GDAL reads text only up to a NUL, so 'a\\u0000b' came as 'a' and named a folder
    silently. Empty for any other file (a file's bytes are searched first: most have none)."""
    if path.suffix.lower() not in (".geojson", ".json"):
        return {}
    try:
        raw = path.read_bytes()
        if b"\\u0000" not in raw:
            return {}
        features = json.loads(raw)["features"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(features, list) or len(features) != count:
        return {}
    cut = {}
    for index, feature in enumerate(features):
        props = feature.get("properties") if isinstance(feature, dict) else None
        value = props.get(id_property) if isinstance(props, dict) else None
        if isinstance(value, str) and "\x00" in value:
            cut[index] = value
    return cut


def _id_text(value: object) -> str | None:
    """A property as an id: None when missing or empty, 7.0 as '7' (a number column)."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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
    if not np.isfinite(shapely.get_coordinates(geom)).all():
        raise AOIError(
            f"AOI '{aoi_id}' in '{path}' has coordinates that are not numbers (NaN or "
            "infinite); fix them or redraw the polygon"
        )
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        warnings.warn(
            f"AOI '{aoi_id}': invalid geometry ({reason}); repaired as its outer rings joined "
            "less its holes",
            stacklevel=3,
        )
        # "structure": parts that overlap are joined and a hole is taken out, as drawn; the
        # default's even-odd rule turns an overlap into a hole and a stray hole into area.
        fixed = shapely.make_valid(geom, method="structure", keep_collapsed=False)
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


def _degrees(bounds: tuple[float, ...]) -> bool:
    """Bounds that can be lon/lat (longitudes up to one turn past ±180° for an AOI written
    unwrapped across the antimeridian)."""
    xmin, ymin, xmax, ymax = bounds
    return -90.0 <= ymin <= ymax <= 90.0 and -540.0 <= xmin <= xmax <= 540.0


def _refuse_projected_without_crs(path: Path, bounds: tuple[float, ...]) -> None:
    """A file without a CRS is taken as EPSG:4326 -- unless its coordinates cannot be degrees:
    then the missing projection is named (a Shapefile without its .prj, typically)."""
    if not _degrees(bounds):
        where = ", ".join(f"{v:.6g}" for v in bounds)
        raise AOIError(
            f"AOI file '{path}' has no CRS (a Shapefile's .prj missing?) and its coordinates "
            f"({where}) are not longitude/latitude; add the .prj file or save the AOI with its "
            "CRS (e.g. as GeoPackage, or GeoJSON in EPSG:4326)"
        )


def _refuse_degrees_in_metres(path: Path, crs: CRS, bounds: tuple[float, ...]) -> None:
    """A file that names a projected CRS but holds degrees (a `crs` member pasted in): read as
    metres it is a few square metres at the false origin, refused as holding no pixel centre."""
    if crs.is_projected and _degrees(bounds) and max(map(abs, bounds)) < 1000:
        where = ", ".join(f"{v:.6g}" for v in bounds)
        raise AOIError(
            f"AOI file '{path}' declares {crs.to_string()} (metres) but its coordinates ({where}) "
            "look like longitude/latitude; fix or remove the file's CRS"
        )


def _lonlat(geom: Any, aoi_id: str, path: Path) -> Any:
    """The AOI in RFC 7946 lon/lat: coordinates that cannot be degrees after reprojection are
    refused, and an AOI across the antimeridian is split there into parts within ±180°."""
    if not _degrees(geom.bounds):
        where = ", ".join(f"{v:.6g}" for v in geom.bounds)
        raise AOIError(
            f"AOI '{aoi_id}' in '{path}': coordinates ({where}) are outside ±180°/±90° in "
            "EPSG:4326, as the file was read (a GeoJSON without a 'crs' member is in EPSG:4326); "
            "if they are metres of a projection, save the AOI in EPSG:4326 or in a format that "
            "carries its CRS (GeoPackage, a Shapefile with its .prj)"
        )
    return split_at_antimeridian(geom)


def split_at_antimeridian(geom: Any) -> Any:
    """A lon/lat polygon or line as RFC 7946 wants it (§3.1.9): longitudes within ±180°, and a
    part that crosses the antimeridian (a jump of more than 180° between two vertices, or
    longitudes beyond ±180°) cut there into pieces on either side. Anything else is returned
    unchanged."""
    parts = list(getattr(geom, "geoms", [geom]))
    if not parts or not all(isinstance(p, Polygon | LineString) for p in parts):
        return geom
    continuous = [_unwrapped(p) for p in parts]
    if all(a is b for a, b in zip(continuous, parts, strict=True)):
        return geom  # within ±180° without a jump: nothing to split
    pieces = []
    for part in continuous:
        for turns in (-1, 0, 1):
            window = box(-180.0 + 360.0 * turns, -90.0, 180.0 + 360.0 * turns, 90.0)
            piece = part.intersection(window)
            if not piece.is_empty:
                pieces.extend(_simple(shapely.affinity.translate(piece, xoff=-360.0 * turns)))
    polygons = [p for p in pieces if isinstance(p, Polygon)]
    if polygons and len(polygons) == len(pieces):
        return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)
    lines = [p for p in pieces if isinstance(p, LineString)]
    return lines[0] if len(lines) == 1 else MultiLineString(lines)


def _simple(geom: Any) -> list[Any]:
    """The polygons or lines of an intersection result (its points and slivers dropped)."""
    return [
        g
        for g in getattr(geom, "geoms", [geom])
        if (isinstance(g, Polygon) and g.area > 0) or (isinstance(g, LineString) and g.length > 0)
    ]


def _unwrapped(part: Any) -> Any:
    """`part` (a Polygon or LineString) unchanged, or with longitudes made continuous (no jump
    above 180° between vertices; holes shifted next to the exterior) when it had such a jump."""

    def ring(coords: Any, lon0: float | None = None) -> np.ndarray:
        xy = np.asarray(coords, dtype=float)[:, :2].copy()
        xy[:, 0] = np.degrees(np.unwrap(np.radians(xy[:, 0])))
        if lon0 is not None:
            xy[:, 0] += 360.0 * round((lon0 - xy[0, 0]) / 360.0)
        return xy

    rings = [part] if isinstance(part, LineString) else [part.exterior, *part.interiors]
    lons = [np.asarray(r.coords)[:, 0] for r in rings]
    jump = max(np.abs(np.diff(x)).max(initial=0.0) for x in lons)
    if jump <= 180.0 and all(x.min() >= -180.0 and x.max() <= 180.0 for x in lons):
        return part
    if isinstance(part, LineString):
        return LineString(ring(part.coords))
    shell = ring(part.exterior.coords)
    return Polygon(shell, [ring(h.coords, shell[0, 0]) for h in part.interiors])


def near_longitude(geom: Any, lon0: float) -> Any:
    """`geom` with each part shifted by whole turns so it lies within 180° of `lon0` (the
    pieces of a geometry split at the antimeridian come back together, unwrapped)."""
    parts = list(getattr(geom, "geoms", [geom]))
    moved = []
    for part in parts:
        turns = round((lon0 - part.centroid.x) / 360.0)
        moved.append(shapely.affinity.translate(part, xoff=360.0 * turns) if turns else part)
    return shapely.union_all(moved)


def lonlat_bbox(geom: Any) -> tuple[float, float, float, float]:
    """(west, south, east, north) of a lon/lat geometry as RFC 7946 §5.2 writes it: across the
    antimeridian west > east (e.g. 179.5 … -179.5), not a box around the whole globe."""
    lon0, _ = lonlat_centroid(geom)
    west, south, east, north = near_longitude(geom, lon0).bounds
    if east - west >= 360.0:
        return -180.0, south, 180.0, north
    return _wrap(west) if west != -180.0 else -180.0, south, _wrap(east), north


def _wrap(lon: float) -> float:
    """`lon` within (-180, 180]."""
    return 180.0 - ((180.0 - lon) % 360.0)


def lonlat_centroid(geom: Any) -> tuple[float, float]:
    """(lon, lat) of the centroid of a lon/lat geometry, taken on its unwrapped form (an AOI
    split at the antimeridian has its centroid near ±180°, not near 0°), lon within ±180°."""
    parts = list(getattr(geom, "geoms", [geom]))
    largest = max(parts, key=lambda p: p.area or p.length)
    centre = near_longitude(geom, largest.centroid.x).centroid
    return 180.0 - ((180.0 - centre.x) % 360.0), centre.y  # lon within (-180, 180]


def aoi_utm_epsg(aoi: AOI) -> int:
    """EPSG code of the UTM zone of the AOI's (unwrapped) centroid."""
    return utm_epsg(*lonlat_centroid(aoi.geometry))


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 / UTM zone containing (lon, lat); lon is taken modulo 360°
    (180° itself is zone 60)."""
    lon = 180.0 - ((180.0 - lon) % 360.0)
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
    utm = to_grid_crs(aoi.geometry, f"EPSG:{aoi_utm_epsg(aoi)}")
    return float(utm.area) / 1e6


_MAX_FROM_MERIDIAN_DEG = 6.0  # half a zone past its edge: scale error about 0.5 %


def _check_zone(aoi: AOI) -> None:
    """An AOI is gridded in the UTM zone of its centroid: refuse one reaching so far past that
    zone (parts of it far apart) that areas and shapes there would be distorted."""
    epsg = aoi_utm_epsg(aoi)
    meridian = -183.0 + 6.0 * (epsg % 100)
    west, _, east, _ = near_longitude(aoi.geometry, meridian).bounds
    reach = max(meridian - west, east - meridian)
    if reach > _MAX_FROM_MERIDIAN_DEG:
        raise AOIError(
            f"AOI '{aoi.id}' reaches {reach:.0f}° of longitude from the central meridian of its "
            f"UTM zone ({epsg % 100}); its grid would distort areas and shapes out there. Give "
            "each site (each part far from the others) as its own feature"
        )


def zone_edge_crossed(aoi: AOI) -> str | None:
    """'UTM zone 39 at 54° E' when the AOI reaches past an edge of the zone it is gridded in
    (its centroid's): a redraw moving the centroid across regrids it and renames every
    structure. None when it lies within its zone."""
    epsg = aoi_utm_epsg(aoi)
    meridian = -183.0 + 6.0 * (epsg % 100)
    west, _, east, _ = near_longitude(aoi.geometry, meridian).bounds
    if west >= meridian - 3.0 and east <= meridian + 3.0:
        return None
    edge = meridian - 3.0 if west < meridian - 3.0 else meridian + 3.0
    return f"UTM zone {epsg % 100} at {_meridian_text(edge)}"


def zone_edge_warning(aoi: AOI) -> str | None:
    """The warning for an AOI across the edge of its UTM zone (`zone_edge_crossed`), or None."""
    crossed = zone_edge_crossed(aoi)
    if crossed is None:
        return None
    return (
        f"AOI '{aoi.id}' crosses the edge of {crossed}: it is gridded in that zone (its "
        "centroid's), and a redraw that moves its centroid across the edge regrids it and "
        "renames every structure; keep its outline's centre on one side"
    )


def _meridian_text(lon: float) -> str:
    lon = 180.0 - ((180.0 - lon) % 360.0)
    return f"{abs(lon):g}° {'E' if lon >= 0 else 'W'}"


def _check_size(aoi: AOI, cfg: AOIConfig) -> None:
    _check_zone(aoi)
    utm = to_grid_crs(aoi.geometry, f"EPSG:{aoi_utm_epsg(aoi)}")
    km2 = float(utm.area) / 1e6  # `area_km2`
    if km2 > cfg.max_area_km2:
        raise AOIError(
            f"AOI '{aoi.id}' covers {km2:.0f} km², above the {cfg.max_area_km2:.0f} km² limit; "
            "draw a smaller AOI or raise [aoi] max_area_km2"
        )
    if km2 <= 0:
        raise AOIError(f"AOI '{aoi.id}' has no area; draw a polygon")
    # Sentinel-2's 10 m pixels belong to the AOI whose polygon holds their centre: a small or
    # thin one may hold none, and then nothing of it can be read or analysed. A polygon holding
    # a disc of half a pixel's diagonal holds a centre; only one that does not is rasterised.
    may_miss = utm.buffer(-10.0 / math.sqrt(2.0) - 1e-3).is_empty
    if may_miss and not aoi_mask(aoi, grid_for(aoi)).any():
        raise AOIError(
            f"AOI '{aoi.id}' ({km2 * 1e6:.0f} m²) holds no centre of a 10 m pixel, so nothing of "
            "it can be analysed; draw a larger polygon (the site and its surroundings)"
        )


def grid_for(
    aoi: AOI, res: float = 10.0, *, context_m: float = 0.0, block_m: float = 1000.0
) -> Grid:
    """The AOI's grid: its UTM zone, `res` metres, bounds snapped outward to the pixel.

    Snapping to multiples of `res` keeps the grid on Sentinel-2's own 10/20/60 m pixel lattice
    (tile origins are multiples of 60 m), so same-zone tiles need no resampling. With
    `context_m` > 0 the bounds grow by that much and snap outward to `block_m` blocks: the
    context window statistics are estimated on (a sub-window of it is the AOI's own grid).
    """
    crs = f"EPSG:{aoi_utm_epsg(aoi)}"
    xmin, ymin, xmax, ymax = to_grid_crs(aoi.geometry, crs).bounds
    step = res
    if context_m > 0:
        xmin, ymin, xmax, ymax = (
            xmin - context_m,
            ymin - context_m,
            xmax + context_m,
            ymax + context_m,
        )
        step = block_m
    x0 = math.floor(xmin / step) * step
    y0 = math.floor(ymin / step) * step
    x1 = math.ceil(xmax / step) * step
    y1 = math.ceil(ymax / step) * step
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


def crop_to_footprints(
    grid: Grid, aoi: AOI, scenes: Sequence[Scene], *, within_aoi: bool = True
) -> Grid:
    """Shrink the grid to where scenes have data on the AOI (`within_aoi`) or on the whole grid
    (a context window); keeps the pixel lattice."""
    footprints = [s.footprint for s in scenes if s.footprint is not None]
    if not footprints or len(footprints) != len(scenes):
        return grid
    # The envelope of each footprint's part, not of their union: a union in lon/lat adds
    # crossing vertices that land millimetres past the footprints, a pixel more of nodata.
    parts = []
    for footprint in footprints:
        part = footprint.intersection(aoi.geometry) if within_aoi else footprint
        part = to_grid_crs(part, grid.crs).intersection(shapely.box(*grid.bounds))
        if not part.is_empty:
            parts.append(part.bounds)
    if not parts:
        return grid
    xmin, ymin = min(p[0] for p in parts), min(p[1] for p in parts)
    xmax, ymax = max(p[2] for p in parts), max(p[3] for p in parts)
    gx0, _, _, gy1 = grid.bounds
    res = grid.res
    col0 = max(0, math.floor((xmin - gx0) / res))
    col1 = min(grid.width, math.ceil((xmax - gx0) / res))
    row0 = max(0, math.floor((gy1 - ymax) / res))
    row1 = min(grid.height, math.ceil((gy1 - ymin) / res))
    if col1 <= col0 or row1 <= row0:
        return grid
    return grid.window(row0, col0, row1 - row0, col1 - col0)
