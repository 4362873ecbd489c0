"""Every file a run hands to the analyst, written into out/<aoi_id>/ in one atomic swap.

This module is the only writer of vector outputs:
- GeoJSON (RFC 7946: EPSG:4326 lon/lat, right-hand winding, ~1 cm coordinate precision) with a QGIS
  `.qml` sidecar of the same name, so QGIS opens each file styled;
- one GeoPackage (`changedet.gpkg`, layers in the run's UTM grid CRS so areas and lengths read in
  metres) with the same styles embedded in the QGIS `layer_styles` table;
- COGs of the change evidence (via `changedet.fsio.write_cog`), `counts.csv`, `run.json`;
- the PNG quicklooks, evidence chips and `report.html` (drawn by `changedet.report`).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import platform
import re
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import LineString, MultiLineString, MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from changedet import __version__
from changedet.config import OutputConfig
from changedet.errors import OutputError
from changedet.fsio import atomic_dir, write_cog, write_json, write_text
from changedet.models import (
    Berm,
    ChangeMap,
    Grid,
    Progress,
    RunResult,
    Scene,
    Structure,
    no_progress,
)
from changedet.report import (
    UNKNOWN_COLOUR,
    first_seen_classes,
    write_report_files,
)

__all__ = [
    "BERM_PROPERTIES",
    "CHANGE_AREA_PROPERTIES",
    "GPKG_LAYERS",
    "RUN_SCHEMA_VERSION",
    "STRUCTURE_PROPERTIES",
    "berms_feature_collection",
    "change_areas",
    "layer_style_qml",
    "run_manifest",
    "structures_feature_collection",
    "write_run_outputs",
]

RUN_SCHEMA_VERSION = 1
GEOJSON_DECIMALS = 7  # 1e-7 degree is ~1 cm: far below a 10 m pixel, small files
GPKG_NAME = "changedet.gpkg"
GPKG_LAYERS = ("aoi", "structures", "berms", "change_areas", "scenes")

# Documented GeoJSON/GeoPackage properties, in order (README "Outputs" lists their meaning).
STRUCTURE_PROPERTIES = (
    "id",
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


def _to_wgs84(grid_crs: str) -> Callable[[BaseGeometry], BaseGeometry]:
    transformer = Transformer.from_crs(grid_crs, "EPSG:4326", always_xy=True)

    def apply(geom: BaseGeometry) -> BaseGeometry:
        def xy(coords: np.ndarray) -> np.ndarray:
            lon, lat = transformer.transform(coords[:, 0], coords[:, 1])
            return np.column_stack([lon, lat])

        return shapely.transform(geom, xy)

    return apply


def _from_wgs84(grid_crs: str) -> Callable[[BaseGeometry], BaseGeometry]:
    transformer = Transformer.from_crs("EPSG:4326", grid_crs, always_xy=True)

    def apply(geom: BaseGeometry) -> BaseGeometry:
        def xy(coords: np.ndarray) -> np.ndarray:
            x, y = transformer.transform(coords[:, 0], coords[:, 1])
            return np.column_stack([x, y])

        return shapely.transform(geom, xy)

    return apply


def _right_hand(geom: BaseGeometry) -> BaseGeometry:
    """RFC 7946 §3.1.6: exterior rings counterclockwise, holes clockwise."""
    if isinstance(geom, Polygon):
        return orient(geom, sign=1.0)
    if isinstance(geom, MultiPolygon):
        return MultiPolygon([orient(p, sign=1.0) for p in geom.geoms])
    return geom


def _rfc7946_geometry(geom: BaseGeometry, to_wgs84: Callable[[BaseGeometry], BaseGeometry]) -> Any:
    """Grid-CRS geometry → RFC 7946 geometry dict (lon/lat, right-hand rule, rounded, valid)."""
    lonlat = to_wgs84(geom)
    # Snapping to the output precision with set_precision keeps the result valid, which rounding the
    # printed numbers alone does not guarantee.
    snapped = shapely.set_precision(lonlat, 10.0**-GEOJSON_DECIMALS)
    if snapped.is_empty:
        snapped = lonlat
    if not snapped.is_valid:
        snapped = shapely.make_valid(snapped)
    return _round_coords(mapping(_right_hand(snapped)))


def _round_coords(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, GEOJSON_DECIMALS)
    if isinstance(obj, list | tuple):
        return [_round_coords(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _round_coords(v) for k, v in obj.items()}
    return obj


def _as_multipolygon(geom: BaseGeometry) -> MultiPolygon:
    if isinstance(geom, MultiPolygon):
        return geom
    if isinstance(geom, Polygon):
        return MultiPolygon([geom])
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]
    return MultiPolygon(polys)


def _as_multilinestring(geom: BaseGeometry) -> MultiLineString:
    if isinstance(geom, MultiLineString):
        return geom
    if isinstance(geom, LineString):
        return MultiLineString([geom])
    lines = [g for g in getattr(geom, "geoms", []) if isinstance(g, LineString)]
    return MultiLineString(lines)


# ----------------------------------------------------------------------------------------------
# Plain values


def _iso(d: date | datetime | None) -> str | None:
    if d is None:
        return None
    if isinstance(d, datetime):
        return d.isoformat().replace("+00:00", "Z")
    return d.isoformat()


def _num(value: float | None, digits: int) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else round(value, digits)


def _jsonable(obj: Any) -> Any:
    """Make provenance values JSON-safe (dates, numpy scalars, tuples, NaN → null)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, date | datetime):
        return _iso(obj)
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, BaseGeometry):
        return mapping(obj)
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    return str(obj)


def structure_properties(s: Structure) -> dict[str, Any]:
    """The documented properties of one structure (same in GeoJSON and GeoPackage)."""
    return {
        "id": s.id,
        "area_m2": _num(s.area_m2, 1),
        "confidence": _num(s.confidence, 3),
        "first_seen_start": _iso(s.first_seen_start),
        "first_seen_end": _iso(s.first_seen_end),
        "confirmed": bool(s.confirmed),
        "n_clear_obs": int(s.n_clear_obs),
        "bermed": None if s.bermed is None else bool(s.bermed),
        "berm_score": _num(s.berm_score, 3),
        "source_scenes": list(s.source_scenes),
        "status": s.status,
        "vanished_after": _iso(s.vanished_after),
    }


def berm_properties(b: Berm) -> dict[str, Any]:
    return {
        "id": b.id,
        "length_m": _num(b.length_m, 1),
        "score": _num(b.score, 3),
        "structure_id": b.structure_id,
    }


# ----------------------------------------------------------------------------------------------
# GeoJSON


def _feature_collection(
    items: Iterable[tuple[BaseGeometry, dict[str, Any]]], grid: Grid, name: str
) -> dict[str, Any]:
    to_wgs84 = _to_wgs84(grid.crs)
    features = []
    for geom, props in items:
        if geom is None or geom.is_empty:
            continue
        features.append(
            {
                "type": "Feature",
                "id": props["id"],
                "geometry": _rfc7946_geometry(geom, to_wgs84),
                "properties": props,
            }
        )
    # RFC 7946 has no "crs" member: EPSG:4326 lon/lat is implied. "name" is a foreign member
    # that GDAL uses as the layer name.
    return {"type": "FeatureCollection", "name": name, "features": features}


def structures_feature_collection(result: RunResult) -> dict[str, Any]:
    """The structures as an RFC 7946 FeatureCollection dict (EPSG:4326, right-hand rule)."""
    return _feature_collection(
        ((s.geometry, structure_properties(s)) for s in result.structures),
        result.grid,
        "structures",
    )


def berms_feature_collection(result: RunResult) -> dict[str, Any]:
    """The berm lines as an RFC 7946 FeatureCollection dict."""
    return _feature_collection(
        ((b.geometry, berm_properties(b)) for b in result.berms), result.grid, "berms"
    )


def _geojson_text(fc: Mapping[str, Any]) -> str:
    # Compact per feature, one feature per line: diffable and small.
    head = f'{{"type": "FeatureCollection", "name": {json.dumps(fc["name"])}, "features": [\n'
    body = ",\n".join(
        json.dumps(f, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        for f in fc["features"]
    )
    return head + body + ("\n" if body else "") + "]}\n"


# ----------------------------------------------------------------------------------------------
# Change areas (vectorised change mask)


def change_areas(change: ChangeMap) -> list[tuple[BaseGeometry, dict[str, Any]]]:
    """Every 8-connected region of the change mask as a polygon in the grid CRS, with its stats."""
    from rasterio.features import shapes
    from scipy import ndimage

    mask = np.asarray(change.mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    n_pixels = ndimage.sum_labels(mask, labels, index)
    score = np.nan_to_num(np.asarray(change.score, dtype=np.float64), nan=0.0)
    likelihood = np.nan_to_num(np.asarray(change.likelihood, dtype=np.float64), nan=0.0)
    mean_score = ndimage.mean(score, labels, index)
    max_score = ndimage.maximum(score, labels, index)
    mean_like = ndimage.mean(likelihood, labels, index)
    parts: dict[int, list[Polygon]] = {}
    for part, value in shapes(
        labels.astype(np.int32), mask=mask, connectivity=8, transform=change.grid.transform
    ):
        parts.setdefault(int(value), []).append(shape(part))
    pixel_area = change.grid.pixel_area_m2
    out = []
    for label in index:
        polys = parts.get(int(label), [])
        geom: BaseGeometry = polys[0] if len(polys) == 1 else MultiPolygon(polys)
        i = int(label) - 1
        out.append(
            (
                geom,
                {
                    "id": int(label),
                    "area_m2": _num(n_pixels[i] * pixel_area, 1),
                    "n_pixels": int(n_pixels[i]),
                    "mean_score": _num(mean_score[i], 3),
                    "max_score": _num(max_score[i], 3),
                    "mean_likelihood": _num(mean_like[i], 3),
                },
            )
        )
    return out


# ----------------------------------------------------------------------------------------------
# Styles


def _style_template(layer: str) -> str:
    return resources.files("changedet").joinpath("styles", f"{layer}.qml").read_text("utf-8")


def _rgba(colour: Sequence[float], alpha: int) -> str:
    r, g, b = (round(float(c) * 255) for c in colour[:3])
    return f"{r},{g},{b},{alpha}"


def layer_style_qml(layer: str, result: RunResult | None = None) -> str:
    """The QGIS style of one layer. For `structures` one category per first-seen date of `result`
    (same colours as the report), built from the `styles/structures.qml` template."""
    text = _style_template(layer)
    if layer != "structures" or result is None:
        return text
    root = ET.fromstring(text)
    renderer = root.find("renderer-v2")
    categories = renderer.find("categories") if renderer is not None else None
    symbols = renderer.find("symbols") if renderer is not None else None
    if categories is None or symbols is None:  # pragma: no cover - the template is ours
        raise OutputError("styles/structures.qml lost its categories; reinstall changedet")
    template = symbols.find("symbol")
    assert template is not None
    for child in list(categories):
        categories.remove(child)
    for child in list(symbols):
        symbols.remove(child)
    classes = first_seen_classes(result.structures)
    entries: list[tuple[str, str, Sequence[float]]] = [
        (c.value, c.label, c.colour) for c in classes if c.value is not None
    ]
    entries.append(("", "first-seen date unknown", UNKNOWN_COLOUR))
    for i, (value, label, colour) in enumerate(entries):
        ET.SubElement(
            categories,
            "category",
            {"render": "true", "symbol": str(i), "value": value, "label": label, "type": "string"},
        )
        symbol = copy.deepcopy(template)
        symbol.set("name", str(i))
        for prop in symbol.iter("prop"):
            if prop.get("k") == "color":
                prop.set("v", _rgba(colour, 70))
            elif prop.get("k") == "outline_color":
                prop.set("v", _rgba(colour, 255))
        symbols.append(symbol)
    ET.indent(root, space="  ")
    header = (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        "<!-- changedet: new structures coloured by first-seen date; unconfirmed ones dashed. -->\n"
    )
    return header + ET.tostring(root, encoding="unicode") + "\n"


_LAYER_STYLES_SQL = """
CREATE TABLE IF NOT EXISTS layer_styles (
  id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  f_table_catalog TEXT(256),
  f_table_schema TEXT(256),
  f_table_name TEXT(256),
  f_geometry_column TEXT(256),
  styleName TEXT(30),
  styleQML TEXT,
  styleSLD TEXT,
  useAsDefault BOOLEAN,
  description TEXT,
  owner TEXT(30),
  ui TEXT(30),
  update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)
"""


def _embed_styles(gpkg: Path, styles: Mapping[str, str]) -> None:
    """Write the QGIS `layer_styles` table (the convention QGIS itself uses) and register it as a
    GeoPackage attributes table so the file stays a valid GeoPackage."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    con = sqlite3.connect(gpkg)
    try:
        with con:
            geom_cols = dict(
                con.execute("SELECT table_name, column_name FROM gpkg_geometry_columns")
            )
            con.execute(_LAYER_STYLES_SQL)
            for layer, qml in styles.items():
                con.execute(
                    "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name,"
                    " f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description,"
                    " owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', NULL, ?)",
                    (layer, geom_cols[layer], layer, qml, f"changedet {__version__} style", now),
                )
            con.execute(
                "INSERT OR REPLACE INTO gpkg_contents (table_name, data_type, identifier,"
                " description, last_change) VALUES ('layer_styles', 'attributes', 'layer_styles',"
                " 'QGIS layer styles', ?)",
                (now,),
            )
    except (sqlite3.Error, KeyError) as exc:
        raise OutputError(f"cannot embed QGIS styles in {gpkg.name}: {exc}") from None
    finally:
        con.close()


# ----------------------------------------------------------------------------------------------
# GeoPackage


def _scene_date_from_id(scene_id: str) -> str | None:
    m = _SCENE_DATE.search(scene_id)
    if not m:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3])).isoformat()
    except ValueError:
        return None


def _scene_rows(result: RunResult) -> list[tuple[BaseGeometry | None, dict[str, Any]]]:
    used_in: dict[str, list[str]] = {}
    composites = (result.before, result.after, *result.composites)
    for comp in composites:
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
        "datetime": _iso(sc.datetime),
        "date": sc.date.isoformat(),
        "collection": sc.collection,
        "tile": sc.tile,
        "platform": sc.platform,
        "cloud_cover": _num(sc.cloud_cover, 2),
        "processing_baseline": sc.processing_baseline,
        "composites": ",".join(used_in),
    }


def _write_layer(
    path: Path,
    layer: str,
    rows: Sequence[tuple[BaseGeometry | None, dict[str, Any]]],
    columns: Sequence[str],
    *,
    crs: str,
    geometry_type: str,
    dtypes: Mapping[str, str],
) -> None:
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    data: dict[str, Any] = {}
    for col in columns:
        values = [props.get(col) for _, props in rows]
        data[col] = pd.Series(values, dtype=dtypes.get(col, "object"))
    frame = gpd.GeoDataFrame(data, geometry=[g for g, _ in rows], crs=crs)
    try:
        pyogrio.write_dataframe(
            frame,
            path,
            layer=layer,
            driver="GPKG",
            geometry_type=geometry_type,
            promote_to_multi=geometry_type.startswith("Multi"),
            layer_options={"IDENTIFIER": layer},
            # GeoPackage 1.2 rather than GDAL's newest 1.4: older GDAL builds (QGIS 3.22 ships
            # GDAL 3.6) warn that 1.4 files are "only partially supported".
            dataset_options={"VERSION": "1.2"},
        )
    except Exception as exc:  # pyogrio raises several GDAL-derived types; one line for the user
        raise OutputError(f"cannot write layer '{layer}' to {path.name}: {exc}") from None


def _write_geopackage(path: Path, result: RunResult, areas: Sequence[Any]) -> None:
    crs = result.grid.crs
    from_wgs84 = _from_wgs84(crs)
    aoi_geom = _as_multipolygon(from_wgs84(result.aoi.geometry))
    _write_layer(
        path,
        "aoi",
        [(aoi_geom, {"id": result.aoi.id, "name": result.aoi.name})],
        ("id", "name"),
        crs=crs,
        geometry_type="MultiPolygon",
        dtypes={},
    )
    structures = []
    for s in result.structures:
        props = structure_properties(s)
        # GeoPackage has no list type: the scene ids travel as a JSON array in text.
        props["source_scenes"] = json.dumps(props["source_scenes"])
        structures.append((_as_multipolygon(s.geometry), props))
    _write_layer(
        path,
        "structures",
        structures,
        STRUCTURE_PROPERTIES,
        crs=crs,
        geometry_type="MultiPolygon",
        dtypes={
            "area_m2": "float64",
            "confidence": "float64",
            "confirmed": "bool",
            "n_clear_obs": "int64",
            "bermed": "boolean",
            "berm_score": "float64",
        },
    )
    _write_layer(
        path,
        "berms",
        [(_as_multilinestring(b.geometry), berm_properties(b)) for b in result.berms],
        BERM_PROPERTIES,
        crs=crs,
        geometry_type="MultiLineString",
        dtypes={"length_m": "float64", "score": "float64"},
    )
    _write_layer(
        path,
        "change_areas",
        [(_as_multipolygon(g), p) for g, p in areas],
        CHANGE_AREA_PROPERTIES,
        crs=crs,
        geometry_type="MultiPolygon",
        dtypes={
            "id": "int64",
            "area_m2": "float64",
            "n_pixels": "int64",
            "mean_score": "float64",
            "max_score": "float64",
            "mean_likelihood": "float64",
        },
    )
    scenes = [
        (None if g is None else _as_multipolygon(from_wgs84(g)), p) for g, p in _scene_rows(result)
    ]
    _write_layer(
        path,
        "scenes",
        scenes,
        SCENE_PROPERTIES,
        crs=crs,
        geometry_type="MultiPolygon",
        dtypes={"cloud_cover": "float64"},
    )
    _embed_styles(path, {layer: layer_style_qml(layer, result) for layer in GPKG_LAYERS})


# ----------------------------------------------------------------------------------------------
# Rasters and tables


def _write_change_score(out: Path, result: RunResult) -> Path:
    return write_cog(
        out / "change.tif",
        np.asarray(result.change.score, dtype=np.float32),
        result.change.grid,
        nodata=float("nan"),
        descriptions=("change score (robust z)",),
        tags={
            "threshold": str(result.change.threshold),
            "before": result.before.period.label,
            "after": result.after.period.label,
        },
        resampling="average",
    )


def _write_cogs(out: Path, result: RunResult) -> list[Path]:
    """Change mask, clear-observation counts and source dates (change.tif is always written)."""
    grid = result.change.grid
    score = np.asarray(result.change.score, dtype=np.float32)
    observed = np.isfinite(score)
    mask = np.where(observed, np.asarray(result.change.mask, dtype=np.uint8), np.uint8(255))
    clear = np.stack([result.before.count, result.after.count]).astype(np.uint16)
    source = np.stack([result.before.source_date, result.after.source_date]).astype(np.int32)
    before, after = result.before.period.label, result.after.period.label
    return [
        write_cog(
            out / "change_mask.tif",
            mask.astype(np.uint8),
            grid,
            nodata=255,
            descriptions=("change mask: 1 change, 0 no change, 255 unobserved",),
        ),
        write_cog(
            out / "clear_count.tif",
            clear,
            grid,
            descriptions=(f"clear observations {before}", f"clear observations {after}"),
        ),
        write_cog(
            out / "source_date.tif",
            source,
            grid,
            nodata=-1,
            descriptions=(
                f"source date {before} (days since 1970-01-01)",
                f"source date {after} (days since 1970-01-01)",
            ),
            tags={"units": "days since 1970-01-01"},
        ),
    ]


COUNTS_COLUMNS = (
    "period",
    "start",
    "end",
    "new_confirmed",
    "cumulative",
    "cumulative_low",
    "cumulative_high",
    "clear_fraction",
)


def _counts_csv(result: RunResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COUNTS_COLUMNS)
    for c in result.counts:
        writer.writerow(
            [
                c.period.label,
                c.period.start.isoformat(),
                c.period.end.isoformat(),
                c.new_confirmed,
                c.cumulative,
                c.cumulative_low,
                c.cumulative_high,
                f"{c.clear_fraction:.4f}",
            ]
        )
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# run.json


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"changedet": __version__, "python": platform.python_version()}
    for dist in (
        "numpy",
        "rasterio",
        "shapely",
        "pyproj",
        "pyogrio",
        "geopandas",
        "scipy",
        "scikit-image",
        "matplotlib",
        "pystac-client",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    try:
        import rasterio

        out["gdal"] = rasterio.__gdal_version__
    except ImportError:  # pragma: no cover - rasterio is a hard dependency
        out["gdal"] = None
    try:
        import pyogrio

        out["gdal_pyogrio"] = pyogrio.__gdal_version_string__
    except ImportError:  # pragma: no cover
        out["gdal_pyogrio"] = None
    return out


DETECTION_NOTES = (
    "A 10 m Sentinel-2 pixel covers 100 m²: a 20 × 40 m hall is about 8 pixels.",
    "Berms (a few metres wide) are sub-pixel: only their disturbed-soil apron, 1–2 pixels wide, is "
    "seen, so berm lines and the 'bermed' flag are indications, not measurements.",
    "Counts are estimates: cumulative_low/high bound what the clear observations can support.",
)

_PROTECTED_KEYS = frozenset({"schema_version", "versions", "scenes", "config_fingerprint", "files"})


def _period_dict(comp: Any) -> dict[str, Any]:
    return {
        "label": comp.period.label,
        "start": comp.period.start.isoformat(),
        "end": comp.period.end.isoformat(),
        "scene_ids": list(comp.scene_ids),
    }


def run_manifest(result: RunResult) -> dict[str, Any]:
    """The run.json dict: what was used, what came out, and with which software.

    Keys from `result.provenance` are merged in at the top level (nested dicts key by key;
    `time_range` [start, end] sets the requested range, a `catalog` string sets catalog.source).
    A key that would replace schema_version, versions, scenes, config_fingerprint or files, or
    change the type of a documented key, goes under "provenance" instead.
    """
    grid = result.grid
    aoi = result.aoi
    aoi_utm = _from_wgs84(grid.crs)(aoi.geometry)
    change = result.change
    res = grid.res
    n_confirmed = sum(1 for s in result.structures if s.confirmed)
    last = result.counts[-1] if result.counts else None
    dates = sorted(s.datetime for s in result.scenes_used)
    provenance = _jsonable(dict(result.provenance))
    manifest: dict[str, Any] = {
        "schema_version": RUN_SCHEMA_VERSION,
        "created": _iso(datetime.now(UTC).replace(microsecond=0)),
        "synthetic": bool(result.provenance.get("synthetic", False)),
        "aoi": {
            "id": aoi.id,
            "name": aoi.name,
            "bbox": [round(v, GEOJSON_DECIMALS) for v in aoi.geometry.bounds],
            "area_km2": round(aoi_utm.area / 1e6, 4),
            "geometry": _round_coords(mapping(_right_hand(aoi.geometry))),
            "properties": _jsonable(dict(aoi.properties)),
        },
        "grid": {
            "crs": grid.crs,
            "transform": [
                grid.transform.a,
                grid.transform.b,
                grid.transform.c,
                grid.transform.d,
                grid.transform.e,
                grid.transform.f,
            ],
            "width": grid.width,
            "height": grid.height,
            "resolution_m": res,
            "bounds": list(grid.bounds),
        },
        "time_range": {
            "start": result.before.period.start.isoformat(),
            # Periods are half-open [start, end): the last day covered is the day before `end`.
            "end": (result.after.period.end - timedelta(days=1)).isoformat(),
            "first_scene": _iso(dates[0]) if dates else None,
            "last_scene": _iso(dates[-1]) if dates else None,
        },
        "periods": {"before": _period_dict(result.before), "after": _period_dict(result.after)},
        "catalog": {"collections": sorted({s.collection for s in result.scenes_used})},
        "config_fingerprint": result.config_fingerprint,
        "scenes": {
            "used": [
                {
                    "id": s.id,
                    "datetime": _iso(s.datetime),
                    "collection": s.collection,
                    "tile": s.tile,
                    "platform": s.platform,
                    "cloud_cover": _num(s.cloud_cover, 2),
                    "processing_baseline": s.processing_baseline,
                }
                for s in result.scenes_used
            ],
            "skipped": [{"id": s.scene_id, "reason": s.reason} for s in result.scenes_skipped],
        },
        "n_scenes_used": len(result.scenes_used),
        "n_scenes_skipped": len(result.scenes_skipped),
        "coregistration": {
            "shift_px": [round(float(v), 3) for v in change.shift_px],
            "shift_m": [round(float(v) * res, 2) for v in change.shift_px],
            "corrected": bool(change.shift_corrected),
        },
        "detection_limits": {
            "pixel_size_m": res,
            "pixel_area_m2": grid.pixel_area_m2,
            "min_mapping_unit_m2": result.min_mapping_unit_m2,
            "min_mapping_unit_px": round(result.min_mapping_unit_m2 / grid.pixel_area_m2, 2),
            "change_threshold": _num(change.threshold, 4),
            "notes": list(DETECTION_NOTES),
        },
        "results": {
            "n_structures": len(result.structures),
            "n_confirmed": n_confirmed,
            "n_unconfirmed": len(result.structures) - n_confirmed,
            "n_bermed": sum(1 for s in result.structures if s.bermed),
            "n_berm_lines": len(result.berms),
            "n_change_pixels": int(np.count_nonzero(change.mask)),
            "cumulative_confirmed": None if last is None else last.cumulative,
            "cumulative_range": None
            if last is None
            else [last.cumulative_low, last.cumulative_high],
        },
        "timings_s": {k: _num(v, 3) for k, v in result.timings.items()},
        "versions": _versions(),
    }
    # Two pipeline keys have a known shape: the requested [start, end] and the catalog source.
    requested = provenance.pop("time_range", None)
    if isinstance(requested, list) and len(requested) == 2:
        manifest["time_range"].update(start=requested[0], end=requested[1])
    elif requested is not None:
        provenance["time_range"] = requested
    source = provenance.pop("catalog", None)
    if isinstance(source, str):
        manifest["catalog"]["source"] = source
    elif source is not None:
        provenance["catalog"] = source
    for key, value in provenance.items():
        mine = manifest.get(key)
        if isinstance(value, dict) and isinstance(mine, dict) and key not in _PROTECTED_KEYS:
            manifest[key] = {**mine, **value}
        elif key in _PROTECTED_KEYS or (mine is not None and type(mine) is not type(value)):
            # Never let a pipeline key change the documented shape of run.json.
            manifest.setdefault("provenance", {})[key] = value
        else:
            manifest[key] = value
    return manifest


# ----------------------------------------------------------------------------------------------
# Orchestration


def _apply_umask(folder: Path) -> None:
    """Temporary files and folders are created private (0600/0700); the finished outputs get the
    ordinary permissions of the user's umask, so they can be shared like any other file."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_run_outputs(
    result: RunResult,
    out_dir: Path,
    *,
    config: OutputConfig,
    progress: Progress = no_progress,
) -> list[Path]:
    """Write every output of one AOI run into `out_dir` (out/<aoi_id>/) and return their paths.

    Everything is built in a temporary folder beside `out_dir` that replaces it only when complete,
    so a failed run leaves the previous outputs (or nothing) rather than a half-written folder.
    """
    out_dir = Path(out_dir)
    if result.change.score.shape != result.grid.shape:
        raise OutputError(
            f"change score shape {result.change.score.shape} does not match the grid "
            f"{result.grid.shape}; the pipeline handed over inconsistent arrays"
        )
    for comp in (result.before, result.after):
        missing = [b for b in ("red", "green", "blue") if b not in comp.bands]
        if missing:
            raise OutputError(
                f"composite {comp.period.label} lacks band(s) {', '.join(missing)} needed for the "
                "true-colour quicklooks; keep blue, green and red in [read] bands"
            )
    steps = ["vectors", "geopackage", "rasters", "counts", "images", "report", "manifest"]
    total = len(steps)

    def step(i: int) -> None:
        progress("outputs", i, total)

    try:
        with atomic_dir(out_dir) as tmp:
            step(0)
            fc = structures_feature_collection(result)
            write_text(tmp / "structures.geojson", _geojson_text(fc))
            write_text(tmp / "structures.qml", layer_style_qml("structures", result))
            write_text(tmp / "berms.geojson", _geojson_text(berms_feature_collection(result)))
            write_text(tmp / "berms.qml", layer_style_qml("berms"))
            areas = change_areas(result.change)
            step(1)
            if config.geopackage:
                _write_geopackage(tmp / GPKG_NAME, result, areas)
            step(2)
            _write_change_score(tmp, result)
            if config.cogs:
                _write_cogs(tmp, result)
            step(3)
            write_text(tmp / "counts.csv", _counts_csv(result))
            step(4)
            manifest = run_manifest(result)
            planned = ["run.json"] + (["report.html"] if config.report else [])
            write_report_files(
                result,
                tmp,
                manifest=manifest,
                config=config,
                extra_files=planned,
                progress=progress,
            )
            step(6)
            files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
            manifest["files"] = sorted({*files, "run.json"})
            write_json(tmp / "run.json", manifest)
            _apply_umask(tmp)
            step(total)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot write outputs to {out_dir}: {exc}") from None
    return sorted(p for p in out_dir.rglob("*") if p.is_file())
