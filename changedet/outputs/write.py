"""Every file a run hands to the analyst, written into out/<aoi_id>/ in one atomic swap.

One responsibility: writing the outputs (the only writer of run outputs). `write_run_outputs`
builds everything in a temporary folder beside out/<aoi_id>/ that replaces it only when
complete: GeoJSON (RFC 7946, content from `changedet.outputs.vectors`) with a QGIS `.qml`
sidecar of the same name (`changedet.outputs.styles`), so QGIS opens each file styled; one
GeoPackage (`changedet.gpkg`, layers in the run's UTM grid CRS so areas and lengths read in
metres) with the same styles embedded; COGs of the change evidence (via
`changedet.outputs.fsio.write_cog`); `counts.csv`; the PNG quicklooks, evidence chips and
`report.html` (drawn by `changedet.outputs.report`); and last `run.json`
(`changedet.outputs.manifest`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry.base import BaseGeometry

from changedet.config import OutputConfig
from changedet.errors import OutputError
from changedet.models import Progress, RunResult, no_progress
from changedet.outputs.fsio import apply_umask, atomic_dir, write_cog, write_json, write_text
from changedet.outputs.manifest import run_manifest
from changedet.outputs.report import write_report_files
from changedet.outputs.styles import embed_styles, layer_style_qml
from changedet.outputs.vectors import (
    BERM_PROPERTIES,
    CHANGE_AREA_PROPERTIES,
    SCENE_PROPERTIES,
    STRUCTURE_PROPERTIES,
    as_multilinestring,
    as_multipolygon,
    berm_properties,
    berms_feature_collection,
    change_areas,
    from_wgs84,
    geojson_text,
    scene_rows,
    structure_properties,
    structures_feature_collection,
)

__all__ = ["GPKG_LAYERS", "write_run_outputs"]

GPKG_NAME = "changedet.gpkg"
GPKG_LAYERS = ("aoi", "structures", "berms", "change_areas", "scenes")
_Row = tuple[BaseGeometry | None, dict[str, Any]]  # one feature: geometry, properties


# ----------------------------------------------------------------------------------------------
# GeoPackage


def _write_layer(
    path: Path,
    layer: str,
    rows: Sequence[_Row],
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
    for layer, rows in _layer_rows(result, areas).items():
        columns, geometry_type, dtypes = _LAYER_SCHEMAS[layer]
        _write_layer(
            path,
            layer,
            rows,
            columns,
            crs=result.grid.crs,
            geometry_type=geometry_type,
            dtypes=dtypes,
        )
    embed_styles(path, {layer: layer_style_qml(layer, result) for layer in GPKG_LAYERS})


# Per layer: its columns in order, its geometry type and the pandas dtypes of the columns that
# are not text.
_LAYER_SCHEMAS: dict[str, tuple[Sequence[str], str, Mapping[str, str]]] = {
    "aoi": (("id", "name"), "MultiPolygon", {}),
    "structures": (
        STRUCTURE_PROPERTIES,
        "MultiPolygon",
        {
            "area_m2": "float64",
            "confidence": "float64",
            "confirmed": "bool",
            "n_clear_obs": "int64",
            "bermed": "boolean",
            "berm_score": "float64",
        },
    ),
    "berms": (BERM_PROPERTIES, "MultiLineString", {"length_m": "float64", "score": "float64"}),
    "change_areas": (
        CHANGE_AREA_PROPERTIES,
        "MultiPolygon",
        {
            "id": "int64",
            "area_m2": "float64",
            "n_pixels": "int64",
            "mean_score": "float64",
            "max_score": "float64",
            "mean_likelihood": "float64",
        },
    ),
    "scenes": (SCENE_PROPERTIES, "MultiPolygon", {"cloud_cover": "float64"}),
}


def _layer_rows(result: RunResult, areas: Sequence[Any]) -> dict[str, list[_Row]]:
    """The rows of every GeoPackage layer, in GPKG_LAYERS order, geometries in the grid CRS."""
    to_grid = from_wgs84(result.grid.crs)
    structures: list[_Row] = []
    for s in result.structures:
        props = structure_properties(s)
        # GeoPackage has no list type: the scene ids travel as a JSON array in text.
        props["source_scenes"] = json.dumps(props["source_scenes"])
        structures.append((as_multipolygon(s.geometry), props))
    aoi_geom = as_multipolygon(to_grid(result.aoi.geometry))
    return {
        "aoi": [(aoi_geom, {"id": result.aoi.id, "name": result.aoi.name})],
        "structures": structures,
        "berms": [(as_multilinestring(b.geometry), berm_properties(b)) for b in result.berms],
        "change_areas": [(as_multipolygon(g), p) for g, p in areas],
        "scenes": [
            (None if g is None else as_multipolygon(to_grid(g)), p) for g, p in scene_rows(result)
        ],
    }


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
# Orchestration


def _check_writable(result: RunResult) -> None:
    """Refuse, before anything is written, a result whose outputs could not all be made."""
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
    _check_writable(result)
    steps = ["vectors", "geopackage", "rasters", "counts", "images", "report", "manifest"]
    total = len(steps)

    def step(i: int) -> None:
        progress("outputs", i, total)

    try:
        with atomic_dir(out_dir) as tmp:
            step(0)
            fc = structures_feature_collection(result)
            write_text(tmp / "structures.geojson", geojson_text(fc))
            write_text(tmp / "structures.qml", layer_style_qml("structures", result))
            write_text(tmp / "berms.geojson", geojson_text(berms_feature_collection(result)))
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
            apply_umask(tmp)
            step(total)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot write outputs to {out_dir}: {exc}") from None
    return sorted(p for p in out_dir.rglob("*") if p.is_file())
