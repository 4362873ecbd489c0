"""run.json: what a run used, what came out of it, and with which software.

One responsibility: the provenance record of one AOI run as a JSON-safe dict (`run_manifest`):
AOI, grid, requested and covered time range, periods, catalog, the effective config and its
fingerprint, scenes used and skipped with why, co-registration, detection limits, result
counts, the headline, the analysed area against the AOI's, timings and the versions of
changedet, Python, GDAL and the libraries that shaped the result. Keys the pipeline
adds through `RunResult.provenance` are merged in without ever changing the documented shape.
`changedet.outputs.write` writes it (with the list of files) as the last file of a run.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from changedet import __version__
from changedet.aoi import lonlat_bbox
from changedet.models import FALSE_POSITIVE, RunResult, Scene
from changedet.outputs.headline import berms_assessed, headline
from changedet.outputs.vectors import (
    GEOJSON_DECIMALS,
    finite_round,
    from_wgs84,
    iso_text,
    right_hand,
    round_coords,
)

__all__ = ["DETECTION_NOTES", "RUN_SCHEMA_VERSION", "run_manifest", "software_versions"]

RUN_SCHEMA_VERSION = 1


def _jsonable(obj: Any) -> Any:
    """Make provenance values JSON-safe (dates, numpy scalars, tuples, NaN → null)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, date | datetime):
        return iso_text(obj)
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


def software_versions() -> dict[str, str | None]:
    """The versions of changedet, Python, GDAL and the libraries that shape a result (None for
    one that is not installed): run.json's `versions`, and the pipeline's provenance."""
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
    "Counts are estimates: cumulative_low/high bound what the clear observations can support, "
    "not the detector's own errors. On semi-real series from nine real OSCD cities the default "
    "settings found 81 % of the labelled changes (51–92 % per city) and 85 % of what they "
    "reported was one (78–91 %); the final count was within 15 % of the truth in eight cities, "
    "−34 % at worst.",
    "The latest months' counts are provisional: a structure first seen in the last month cannot "
    "be confirmed yet, and later months can show a confirmed one to be a transient or date it "
    "otherwise. On the same nine series, runs ending in September to November against the run "
    "to December: the last month's count rose by a median 14 % (up to 36 %; its range held the "
    "later count in 25 of 27 runs), earlier months moved by 5–9 % on average (9 → 6 at worst).",
    "Faint and small changes are missed more often: in the same evaluation a change whose "
    "reflectance moved by less than 0.02 on average (10 m and 20 m bands) was found 19 % of the "
    "time, 0.02–0.04: 76 %, more: 88 %; a change under 20 pixels (2,000 m²) 64 %, over 50 "
    "pixels 91 %.",
    "Where nothing changed, series of the real spectra of 24 OSCD cities gave 0.04 false "
    "structures per km², but 0.19 per km² on bright desert sand (Dubai), many of them faint "
    "'ground works': on desert AOIs read a lone new 'ground works' structure with that in mind.",
    "Kind is read from spectra and shape: on real Sentinel-2 series most new structures come out "
    "'other' (59 % of matched real changes in the semi-real OSCD evaluation, 11 % 'building'), so "
    "the building count is a lower bound and the count of all new structures the reliable figure; "
    "'building' means a roof-like new structure.",
    "'Vanished' means the place looks again as it did before the structure appeared (64 of 67 "
    "such razed changes in the semi-real OSCD evaluation): a building razed to rubble, burnt, or "
    "cleared to a new slab that stays different from the old ground is still reported standing.",
)

_PROTECTED_KEYS = frozenset(
    {
        "schema_version",
        "versions",
        "scenes",
        "config_fingerprint",
        "config",
        "files",
        "companions",
        "drawn",
    }
)


def run_manifest(result: RunResult) -> dict[str, Any]:
    """The run.json dict: what was used, what came out, and with which software.

    Keys from `result.provenance` are merged in at the top level (nested dicts key by key;
    `time_range` [start, end] sets the requested range, a `catalog` string sets catalog.source).
    A key that would replace schema_version, versions, scenes, config_fingerprint or files, or
    change the type of a documented key, goes under "provenance" instead.
    """
    grid = result.grid
    manifest: dict[str, Any] = {
        "schema_version": RUN_SCHEMA_VERSION,
        "created": iso_text(datetime.now(UTC).replace(microsecond=0)),
        "synthetic": result.synthetic,
        "aoi": _aoi_section(result),
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
            "resolution_m": grid.res,
            "bounds": list(grid.bounds),
        },
        "time_range": _time_range_section(result),
        "periods": {"before": _period_dict(result.before), "after": _period_dict(result.after)},
        "catalog": {"collections": sorted({s.collection for s in result.scenes_used})},
        "config_fingerprint": result.config_fingerprint,
        "scenes": {
            "used": [_scene_dict(s) for s in result.scenes_used],
            "skipped": [{"id": s.scene_id, "reason": s.reason} for s in result.scenes_skipped],
        },
        "n_scenes_used": len(result.scenes_used),
        "n_scenes_skipped": len(result.scenes_skipped),
        "coregistration": {
            "shift_px": [round(float(v), 3) for v in result.change.shift_px],
            "shift_m": [round(float(v) * grid.res, 2) for v in result.change.shift_px],
            "corrected": bool(result.change.shift_corrected),
        },
        "detection_limits": {
            "pixel_size_m": grid.res,
            "pixel_area_m2": grid.pixel_area_m2,
            "min_mapping_unit_m2": result.min_mapping_unit_m2,
            "min_mapping_unit_px": round(result.min_mapping_unit_m2 / grid.pixel_area_m2, 2),
            "change_threshold": finite_round(result.change.threshold, 4),
            "structure_threshold": finite_round(result.change.structure_threshold, 4),
            "notes": [*DETECTION_NOTES, *_run_notes(result)],
        },
        "results": _results_section(result),
        "headline": headline(result).as_dict(),
        "coverage": _coverage_section(result),
        "timings_s": {k: finite_round(v, 3) for k, v in result.timings.items()},
        "versions": software_versions(),
        "config": _jsonable(dict(result.config)),
    }
    _merge_provenance(manifest, _jsonable(dict(result.provenance)))
    return manifest


def _aoi_section(result: RunResult) -> dict[str, Any]:
    aoi = result.aoi
    aoi_utm = from_wgs84(result.grid.crs)(aoi.geometry)
    return {
        "id": aoi.id,
        "name": aoi.name,
        "bbox": [round(v, GEOJSON_DECIMALS) for v in lonlat_bbox(aoi.geometry)],
        "area_km2": round(aoi_utm.area / 1e6, 6),
        "geometry": round_coords(mapping(right_hand(aoi.geometry))),
        "properties": _jsonable(dict(aoi.properties)),
    }


def _time_range_section(result: RunResult) -> dict[str, Any]:
    dates = sorted(s.datetime for s in result.scenes_used)
    return {
        "start": result.before.period.start.isoformat(),
        # Periods are half-open [start, end): the last day covered is the day before `end`.
        "end": (result.after.period.end - timedelta(days=1)).isoformat(),
        "first_scene": iso_text(dates[0]) if dates else None,
        "last_scene": iso_text(dates[-1]) if dates else None,
    }


def _period_dict(comp: Any) -> dict[str, Any]:
    return {
        "label": comp.period.label,
        "start": comp.period.start.isoformat(),
        "end": comp.period.end.isoformat(),
        "scene_ids": list(comp.scene_ids),
    }


def _scene_dict(s: Scene) -> dict[str, Any]:
    return {
        "id": s.id,
        "datetime": iso_text(s.datetime),
        "collection": s.collection,
        "tile": s.tile,
        "platform": s.platform,
        "cloud_cover": finite_round(s.cloud_cover, 2),
        "processing_baseline": s.processing_baseline,
    }


def _results_section(result: RunResult) -> dict[str, Any]:
    # A structure the analyst reviewed as a false positive stays in the outputs, in no count.
    counted = [s for s in result.structures if s.review != FALSE_POSITIVE]
    n_confirmed = sum(1 for s in counted if s.confirmed)
    last = result.counts[-1] if result.counts else None
    return {
        "n_structures": len(counted),
        "n_confirmed": n_confirmed,
        "n_unconfirmed": len(counted) - n_confirmed,
        "n_false_positive": len(result.structures) - len(counted),
        "n_bermed": (  # null: not assessed ([berms] enabled = false)
            sum(1 for s in counted if s.bermed) if berms_assessed(result) else None
        ),
        "n_berm_lines": len(result.berms),
        "n_change_pixels": int(np.count_nonzero(result.change.mask)),
        "cumulative_confirmed": None if last is None else last.cumulative,
        "cumulative_range": None if last is None else [last.cumulative_low, last.cumulative_high],
    }


def _coverage_section(result: RunResult) -> dict[str, Any] | None:
    cov = result.coverage
    if cov is None:
        return None
    return {
        "aoi_km2": cov.aoi_km2,
        "analysed_km2": cov.analysed_km2,
        "analysed_share": round(cov.share, 4),
        "warn_below": cov.warn_below,
        "partial": cov.is_partial,
        "periods": [
            {"label": p.label, "clear_km2": p.clear_km2, "share": p.share} for p in cov.periods
        ],
    }


def _run_notes(result: RunResult) -> list[str]:
    """The run's comparison (two dates, short series or series) as a detection limit, and how
    long its structures take to be called vanished."""
    note = result.provenance.get("comparison", {}).get("note")
    n = int(result.config.get("track", {}).get("vanish_after_absent", 3))
    vanish = (
        f"This run calls a structure vanished after {n} clear periods of absence in a row "
        "([track] vanish_after_absent): one razed in its last months is still 'active', with "
        f"absent_since set once absent in {max(n - 1, 1)} of them."
    )
    return [f"This run: {note}.", vanish] if note else [vanish]


def _merge_provenance(manifest: dict[str, Any], provenance: dict[str, Any]) -> None:
    """Merge the pipeline's keys into `manifest` without changing its documented shape."""
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
