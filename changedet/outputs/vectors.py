"""The vector content of a run, as plain data: no files are written here.

One responsibility: what the vector outputs hold and how their geometries are expressed. The
documented properties of structures, berms, change areas and scenes (the same in GeoJSON and
GeoPackage, in order); RFC 7946 FeatureCollections (EPSG:4326 lon/lat, right-hand winding,
~1 cm coordinate precision, snapped so they stay valid); the change mask vectorised into
8-connected polygons with their statistics; and the grid CRS ↔ EPSG:4326 transforms the
GeoPackage, run.json and report share. `changedet.outputs.write` writes all of it to files.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import LineString, MultiLineString, MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from changedet.aoi import split_at_antimeridian, to_grid_crs
from changedet.core.clip import centre_point
from changedet.models import Berm, ChangeMap, Grid, RunResult, Scene, Structure

__all__ = [
    "ANALYSED_AREA_PROPERTIES",
    "BERM_PROPERTIES",
    "CHANGE_AREA_PROPERTIES",
    "GEOJSON_DECIMALS",
    "SCENE_PROPERTIES",
    "STRUCTURE_PROPERTIES",
    "all_to_wgs84",
    "analysed_area",
    "analysed_area_feature_collection",
    "aoi_feature_collection",
    "as_multilinestring",
    "as_multipolygon",
    "berm_properties",
    "berms_feature_collection",
    "change_areas",
    "finite_round",
    "from_wgs84",
    "geojson_text",
    "iso_text",
    "right_hand",
    "round_coords",
    "scene_rows",
    "structure_point",
    "structure_properties",
    "structures_feature_collection",
    "to_wgs84",
    "viewer_links",
]

GEOJSON_DECIMALS = 7  # 1e-7 degree is ~1 cm: far below a 10 m pixel, small files

# Documented GeoJSON/GeoPackage properties, in order (README "Outputs" lists their meaning).
STRUCTURE_PROPERTIES = (
    "id",
    "kind",
    "flattening",
    "soil_gain",
    "width_px",
    "area_m2",
    "confidence",
    "first_seen_start",
    "first_seen_end",
    "confirmed",
    "n_clear_obs",
    "bermed",
    "berm_score",
    "source_scenes",
    "status",
    "vanished_after",
    "absent_since",
    "review",
    "review_note",
    "lat",
    "lon",
)
BERM_PROPERTIES = ("id", "length_m", "score", "structure_id")
CHANGE_AREA_PROPERTIES = ("id", "area_m2", "n_pixels", "mean_score", "max_score", "mean_likelihood")
SCENE_PROPERTIES = (
    "scene_id",
    "status",
    "reason",
    "datetime",
    "date",
    "collection",
    "tile",
    "platform",
    "cloud_cover",
    "processing_baseline",
    "composites",
)
_SCENE_DATE = re.compile(r"(?<!\d)(20\d{2})(\d{2})(\d{2})(?!\d)")

# ----------------------------------------------------------------------------------------------
# Geometry helpers


@functools.lru_cache(maxsize=16)
def _transformer(src_crs: str, dst_crs: str) -> Transformer:
    return Transformer.from_crs(src_crs, dst_crs, always_xy=True)


def _coordinates(src_crs: str, dst_crs: str) -> Callable[[np.ndarray], np.ndarray]:
    """(N, 2) coordinates in `src_crs` → the same in `dst_crs` (`shapely.transform`'s form)."""
    transformer = _transformer(src_crs, dst_crs)

    def xy(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return xy


def _reprojection(src_crs: str, dst_crs: str) -> Callable[[BaseGeometry], BaseGeometry]:
    xy = _coordinates(src_crs, dst_crs)
    return lambda geom: shapely.transform(geom, xy)


def to_wgs84(grid_crs: str) -> Callable[[BaseGeometry], BaseGeometry]:
    """Geometry in `grid_crs` → the same geometry in EPSG:4326 lon/lat."""
    return _reprojection(grid_crs, "EPSG:4326")


def all_to_wgs84(grid_crs: str, geoms: Sequence[BaseGeometry]) -> list[BaseGeometry]:
    """`to_wgs84` of many geometries at once: one call of the transformer for all their
    coordinates instead of one per geometry (the same values)."""
    if not geoms:
        return []
    xy = _coordinates(grid_crs, "EPSG:4326")
    return list(shapely.transform(np.asarray(geoms, dtype=object), xy))


def from_wgs84(grid_crs: str) -> Callable[[BaseGeometry], BaseGeometry]:
    """Geometry in EPSG:4326 lon/lat → the same geometry in `grid_crs`."""
    return _reprojection("EPSG:4326", grid_crs)


def right_hand(geom: BaseGeometry) -> BaseGeometry:
    """RFC 7946 §3.1.6: exterior rings counterclockwise, holes clockwise."""
    if isinstance(geom, Polygon):
        return orient(geom, sign=1.0)
    if isinstance(geom, MultiPolygon):
        return MultiPolygon([orient(p, sign=1.0) for p in geom.geoms])
    return geom


def _rfc7946_geometry(geom: BaseGeometry) -> Any:
    """Lon/lat geometry → RFC 7946 geometry dict (right-hand rule, rounded, valid; cut at the
    antimeridian where it crosses it, §3.1.9)."""
    lonlat = split_at_antimeridian(geom)
    # Snapping to the output precision with set_precision keeps the result valid, which rounding the
    # printed numbers alone does not guarantee.
    snapped = shapely.set_precision(lonlat, 10.0**-GEOJSON_DECIMALS)
    if snapped.is_empty:
        snapped = lonlat
    if not snapped.is_valid:
        snapped = shapely.make_valid(snapped)
    return round_coords(mapping(right_hand(snapped)))


def round_coords(obj: Any) -> Any:
    """Every float in a GeoJSON-like structure rounded to GEOJSON_DECIMALS."""
    if isinstance(obj, float):
        return round(obj, GEOJSON_DECIMALS)
    if isinstance(obj, list | tuple):
        return [round_coords(v) for v in obj]
    if isinstance(obj, dict):
        return {k: round_coords(v) for k, v in obj.items()}
    return obj


def as_multipolygon(geom: BaseGeometry) -> MultiPolygon:
    """`geom` as a MultiPolygon (its polygon parts; GeoPackage layers have one geometry type)."""
    if isinstance(geom, MultiPolygon):
        return geom
    if isinstance(geom, Polygon):
        return MultiPolygon([geom])
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]
    return MultiPolygon(polys)


def as_multilinestring(geom: BaseGeometry) -> MultiLineString:
    """`geom` as a MultiLineString (its line parts)."""
    if isinstance(geom, MultiLineString):
        return geom
    if isinstance(geom, LineString):
        return MultiLineString([geom])
    lines = [g for g in getattr(geom, "geoms", []) if isinstance(g, LineString)]
    return MultiLineString(lines)


# ----------------------------------------------------------------------------------------------
# Plain values


def iso_text(d: date | datetime | None) -> str | None:
    """ISO 8601 text of a date or datetime (UTC as Z), None for None."""
    if d is None:
        return None
    if isinstance(d, datetime):
        return d.isoformat().replace("+00:00", "Z")
    return d.isoformat()


def finite_round(value: float | None, digits: int) -> float | None:
    """`value` rounded to `digits`, None for None, NaN or infinity."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else round(value, digits)


LATLON_DECIMALS = 6  # 1e-6 degree is ~10 cm


def structure_point(s: Structure, grid_crs: str) -> tuple[float, float] | None:
    """(lat, lon) of the structure's centroid, or of a point on its surface when the centroid
    falls outside it (an L-shaped or multi-part footprint); None for an empty geometry."""
    point = centre_point(s.geometry)
    if point is None:
        return None
    lon, lat = _transformer(grid_crs, "EPSG:4326").transform(point.x, point.y)
    return round(float(lat), LATLON_DECIMALS), round(float(lon), LATLON_DECIMALS)


def viewer_links(lat: float, lon: float) -> dict[str, str]:
    """Links that open the spot in common web viewers (for the report and structures.csv)."""
    return {
        "Google Maps": f"https://www.google.com/maps/search/?api=1&query={lat},{lon}",
        "OpenStreetMap": f"https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=17/{lat}/{lon}",
        "Copernicus Browser": (
            f"https://browser.dataspace.copernicus.eu/?zoom=16&lat={lat}&lng={lon}"
        ),
    }


def _evidence(s: Structure, key: str) -> float | None:
    value = s.evidence.get(key)
    return None if value is None else finite_round(value, 3)


def _soil_gain(s: Structure) -> float | None:
    gains = [s.evidence[k] for k in ("bsi_gain", "brightness_gain") if k in s.evidence]
    return finite_round(max(gains), 3) if gains else None


def structure_properties(s: Structure, grid_crs: str | None = None) -> dict[str, Any]:
    """The documented properties of one structure (same in GeoJSON, GeoPackage, CSV and KML);
    `lat`/`lon` need the grid CRS the geometry is in (null without)."""
    point = structure_point(s, grid_crs) if grid_crs else None
    return {
        "id": s.id,
        "kind": s.kind,
        # The evidence `kind` was decided on (`core.kinds`): null where it could not be measured.
        "flattening": _evidence(s, "spectral_flattening"),
        "soil_gain": _soil_gain(s),
        "width_px": _evidence(s, "width_px"),
        "area_m2": finite_round(s.area_m2, 1),
        "confidence": finite_round(s.confidence, 3),
        "first_seen_start": iso_text(s.first_seen_start),
        "first_seen_end": iso_text(s.first_seen_end),
        "confirmed": bool(s.confirmed),
        "n_clear_obs": int(s.n_clear_obs),
        "bermed": None if s.bermed is None else bool(s.bermed),
        "berm_score": finite_round(s.berm_score, 3),
        "source_scenes": list(s.source_scenes),
        "status": s.status,
        "vanished_after": iso_text(s.vanished_after),
        "absent_since": iso_text(s.absent_since),
        "review": s.review,
        "review_note": s.review_note,
        "lat": None if point is None else point[0],
        "lon": None if point is None else point[1],
    }


def berm_properties(b: Berm) -> dict[str, Any]:
    """The documented properties of one berm line (same in GeoJSON and GeoPackage)."""
    return {
        "id": b.id,
        "length_m": finite_round(b.length_m, 1),
        "score": finite_round(b.score, 3),
        "structure_id": b.structure_id,
    }


# ----------------------------------------------------------------------------------------------
# GeoJSON


def _feature_collection(
    items: Iterable[tuple[BaseGeometry, dict[str, Any]]], grid: Grid, name: str
) -> dict[str, Any]:
    shown = [(geom, props) for geom, props in items if geom is not None and not geom.is_empty]
    lonlats = all_to_wgs84(grid.crs, [geom for geom, _ in shown])
    features = [
        {
            "type": "Feature",
            "id": props["id"],
            "geometry": _rfc7946_geometry(lonlat),
            "properties": props,
        }
        for (_, props), lonlat in zip(shown, lonlats, strict=True)
    ]
    # RFC 7946 has no "crs" member: EPSG:4326 lon/lat is implied. "name" is a foreign member
    # that GDAL uses as the layer name.
    return {"type": "FeatureCollection", "name": name, "features": features}


def _said_synthetic(fc: dict[str, Any], result: RunResult) -> dict[str, Any]:
    if result.synthetic:
        fc["synthetic"] = True  # a foreign member: the detections are of generated data
    return fc


def structures_feature_collection(result: RunResult) -> dict[str, Any]:
    """The structures as an RFC 7946 FeatureCollection dict (EPSG:4326, right-hand rule)."""
    fc = _feature_collection(
        ((s.geometry, structure_properties(s, result.grid.crs)) for s in result.structures),
        result.grid,
        "structures",
    )
    return _said_synthetic(fc, result)


def berms_feature_collection(result: RunResult) -> dict[str, Any]:
    """The berm lines as an RFC 7946 FeatureCollection dict."""
    fc = _feature_collection(
        ((b.geometry, berm_properties(b)) for b in result.berms), result.grid, "berms"
    )
    return _said_synthetic(fc, result)


def aoi_feature_collection(result: RunResult) -> dict[str, Any]:
    """The AOI polygon (`id`, `name`) as an RFC 7946 FeatureCollection: the project's `aoi`
    layer when there is no GeoPackage."""
    aoi = result.aoi
    feature = {
        "type": "Feature",
        "id": aoi.id,
        "geometry": _rfc7946_geometry(aoi.geometry),
        "properties": {"id": aoi.id, "name": aoi.name},
    }
    return _said_synthetic(
        {"type": "FeatureCollection", "name": "aoi", "features": [feature]}, result
    )


def analysed_area_feature_collection(result: RunResult) -> dict[str, Any]:
    """The analysed area (`analysed_area`) as an RFC 7946 FeatureCollection, one feature (its
    geometry null when nothing was analysed), none when the run did not measure its coverage:
    the project's `analysed area` layer when there is no GeoPackage."""
    found = analysed_area(result)
    features = []
    if found is not None:
        geom, props = found
        lonlat = None if geom is None else _rfc7946_geometry(to_wgs84(result.grid.crs)(geom))
        features.append({"type": "Feature", "geometry": lonlat, "properties": props})
    fc = {"type": "FeatureCollection", "name": "analysed_area", "features": features}
    return _said_synthetic(fc, result)


def geojson_text(fc: Mapping[str, Any]) -> str:
    """A FeatureCollection dict as GeoJSON text, one feature per line."""
    # Compact per feature, one feature per line: diffable and small.
    synthetic = ', "synthetic": true' if fc.get("synthetic") else ""
    head = (
        f'{{"type": "FeatureCollection", "name": {json.dumps(fc["name"])}{synthetic}, '
        '"features": [\n'
    )
    body = ",\n".join(
        json.dumps(f, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        for f in fc["features"]
    )
    return head + body + ("\n" if body else "") + "]}\n"


# ----------------------------------------------------------------------------------------------
# Change areas (vectorised change mask)


def change_areas(change: ChangeMap) -> list[tuple[BaseGeometry, dict[str, Any]]]:
    """Every 8-connected region of the change mask as a polygon in the grid CRS, with its stats."""
    mask = np.asarray(change.mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    n_pixels = ndimage.sum_labels(mask, labels, index)
    score = np.nan_to_num(np.asarray(change.score, dtype=np.float64), nan=0.0)
    likelihood = np.nan_to_num(np.asarray(change.likelihood, dtype=np.float64), nan=0.0)
    mean_score = ndimage.mean(score, labels, index)
    # ufunc.at over the region pixels: ndimage.maximum sorts the whole grid (0.5 s at 1620 px)
    max_score = np.full(n, -np.inf)
    np.maximum.at(max_score, labels[mask] - 1, score[mask])
    mean_like = ndimage.mean(likelihood, labels, index)
    # Traced 4-connected and joined per region: an 8-connected trace of pixels that meet at a
    # corner is a ring touching itself, which GEOS (and QGIS's overlays) call invalid.
    parts: dict[int, list[Polygon]] = {}
    for part, value in shapes(labels.astype(np.int32), mask=mask, transform=change.grid.transform):
        parts.setdefault(int(value), []).append(shape(part))
    pixel_area = change.grid.pixel_area_m2
    out = []
    for label in index:
        polys = parts.get(int(label), [])
        geom: BaseGeometry = (
            polys[0] if len(polys) == 1 and polys[0].is_valid else shapely.union_all(polys)
        )
        i = int(label) - 1
        out.append(
            (
                geom,
                {
                    "id": int(label),
                    "area_m2": finite_round(n_pixels[i] * pixel_area, 1),
                    "n_pixels": int(n_pixels[i]),
                    "mean_score": finite_round(mean_score[i], 3),
                    "max_score": finite_round(max_score[i], 3),
                    "mean_likelihood": finite_round(mean_like[i], 3),
                },
            )
        )
    return out


# ----------------------------------------------------------------------------------------------
# Scenes (the GeoPackage scenes layer)


def _scene_date_from_id(scene_id: str) -> str | None:
    m = _SCENE_DATE.search(scene_id)
    if not m:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3])).isoformat()
    except ValueError:
        return None


def scene_rows(result: RunResult) -> list[tuple[BaseGeometry | None, dict[str, Any]]]:
    """One row per scene used or skipped: (footprint in EPSG:4326 or None, SCENE_PROPERTIES)."""
    used_in: dict[str, list[str]] = {}
    # one composite at a time: a run's `Composites` makes each when asked for
    for comp in itertools.chain((result.before, result.after), result.composites):
        for sid in comp.scene_ids:
            labels = used_in.setdefault(sid, [])
            if comp.period.label not in labels:
                labels.append(comp.period.label)
    rows: list[tuple[BaseGeometry | None, dict[str, Any]]] = []
    for sc in result.scenes_used:
        rows.append((sc.footprint, _scene_props(sc, "used", None, used_in.get(sc.id, []))))
    for sk in result.scenes_skipped:
        props = dict.fromkeys(SCENE_PROPERTIES)
        props.update(
            scene_id=sk.scene_id,
            status="skipped",
            reason=sk.reason,
            date=_scene_date_from_id(sk.scene_id),
            composites="",
        )
        rows.append((None, props))
    return rows


def _scene_props(sc: Scene, status: str, reason: str | None, used_in: list[str]) -> dict[str, Any]:
    return {
        "scene_id": sc.id,
        "status": status,
        "reason": reason,
        "datetime": iso_text(sc.datetime),
        "date": sc.date.isoformat(),
        "collection": sc.collection,
        "tile": sc.tile,
        "platform": sc.platform,
        "cloud_cover": finite_round(sc.cloud_cover, 2),
        "processing_baseline": sc.processing_baseline,
        "composites": ",".join(used_in),
    }


# ----------------------------------------------------------------------------------------------
# Analysed area (where the run could see)

ANALYSED_AREA_PROPERTIES = ("aoi_km2", "analysed_km2", "analysed_share")


def analysed_area(result: RunResult) -> tuple[BaseGeometry | None, dict[str, Any]] | None:
    """The analysed part of the AOI as one (multi)polygon in the grid CRS (its pixels, cut
    along the AOI's edge), with the AOI's and the analysed area; None when the run did not
    measure its coverage."""
    cov = result.coverage
    if cov is None:
        return None
    mask = np.asarray(cov.analysed, dtype=np.uint8)
    parts = [
        shape(part)
        for part, value in shapes(mask, mask=mask > 0, connectivity=4, transform=cov.grid.transform)
        if value
    ]
    geom = shapely.union_all(parts) if parts else None
    if geom is not None:
        geom = as_multipolygon(geom.intersection(to_grid_crs(result.aoi.geometry, cov.grid.crs)))
        geom = None if geom.is_empty else geom
    return geom, {
        "aoi_km2": finite_round(cov.aoi_km2, 6),
        "analysed_km2": finite_round(cov.analysed_km2, 6),
        "analysed_share": finite_round(cov.share, 4),
    }
