"""Every file a run hands to the analyst, written into out/<aoi_id>/ in one atomic swap.

One responsibility: writing the outputs (the only writer of run outputs). `write_run_outputs`
builds everything in a temporary folder beside out/<aoi_id>/ that replaces it only when
complete (`changedet.outputs.runfolder`: the previous run moves to previous/, the analyst's own
files stay): GeoJSON (RFC 7946, content from `changedet.outputs.vectors`) with a QGIS `.qml`
sidecar of the same name (`changedet.outputs.styles`), so QGIS opens each file styled;
structures.csv and structures.kml (GDAL's KML driver, for Google Earth); one GeoPackage
(`changedet.gpkg`, layers in the run's UTM grid CRS so areas and lengths read in metres) with
the same styles embedded; styled COGs of the change evidence and the true-colour imagery
(`changedet.outputs.imagery`); `counts.csv`; the QGIS project `changedet.qgz`
(`changedet.outputs.project`); the PNG quicklooks, evidence chips and `report.html` (drawn by
`changedet.outputs.report`); and last `run.json` (`changedet.outputs.manifest`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from shapely.geometry.base import BaseGeometry

from changedet.aoi import split_at_antimeridian
from changedet.config import OutputConfig
from changedet.errors import OutputError
from changedet.models import Progress, RunResult, no_progress
from changedet.outputs.drawn import Drawings
from changedet.outputs.earlier import STRUCTURES_FILE
from changedet.outputs.fsio import apply_umask, atomic_path, write_json, write_text
from changedet.outputs.imagery import (
    RasterOutput,
    display_stretch,
    write_evidence_rasters,
    write_imagery,
)
from changedet.outputs.kml import (
    STYLE_FIELD,
    document_text,
    finish_kml,
    not_counted,
    placemark_style,
    style_classes,
)
from changedet.outputs.manifest import run_manifest
from changedet.outputs.project import PROJECT_NAME, ProjectLayer, project_qgz
from changedet.outputs.report import Pictures, write_pictures, write_report_html
from changedet.outputs.runfolder import run_folder
from changedet.outputs.styles import embed_styles, layer_style_qml
from changedet.outputs.tables import counts_csv, structures_csv
from changedet.outputs.vectors import (
    ANALYSED_AREA_PROPERTIES,
    BERM_PROPERTIES,
    CHANGE_AREA_PROPERTIES,
    SCENE_PROPERTIES,
    STRUCTURE_PROPERTIES,
    all_to_wgs84,
    analysed_area,
    analysed_area_feature_collection,
    aoi_feature_collection,
    as_multilinestring,
    as_multipolygon,
    berm_properties,
    berms_feature_collection,
    change_areas,
    from_wgs84,
    geojson_text,
    right_hand,
    scene_rows,
    structure_properties,
    structures_feature_collection,
)

__all__ = ["GPKG_LAYERS", "write_run_outputs"]

GPKG_NAME = "changedet.gpkg"
GPKG_LAYERS = ("aoi", "analysed_area", "structures", "berms", "change_areas", "scenes")
# The layers the project takes from <layer>.geojson when there is no GeoPackage (EPSG:4326).
GEOJSON_LAYERS = ("structures", "berms", "aoi", "analysed_area")
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
    description: str = "",
) -> None:
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    data: dict[str, Any] = {}
    for col in columns:
        values = [props.get(col) for _, props in rows]
        data[col] = pd.Series(values, dtype=dtypes.get(col, "object"))
    frame = gpd.GeoDataFrame(data, geometry=[g for g, _ in rows], crs=crs)
    kml = path.suffix == ".kml"
    layer_options = {} if kml else {"IDENTIFIER": layer}
    if description and not kml:
        layer_options["DESCRIPTION"] = description
    try:
        pyogrio.write_dataframe(
            frame,
            path,
            layer=layer,
            driver="KML" if kml else "GPKG",
            geometry_type=geometry_type,
            promote_to_multi=geometry_type.startswith("Multi"),
            layer_options=layer_options,
            # GeoPackage 1.2 rather than GDAL's newest 1.4: older GDAL builds (QGIS 3.22 ships
            # GDAL 3.6) warn that 1.4 files are "only partially supported".
            dataset_options={} if kml else {"VERSION": "1.2"},
        )
    except Exception as exc:  # pyogrio raises several GDAL-derived types; one line for the user
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "disk is full" in detail or "No space left" in detail:  # SQLite's words, GDAL's
            detail = "the disk is full; free some space there or pass another --out, then rerun"
        elif len(detail) > 200:  # GDAL quotes whole SQL scripts
            detail = detail[:200] + " ..."
        raise OutputError(f"cannot write layer '{layer}' to {path.name}: {detail}") from None


# gpkg_contents.description of every layer of a run on generated data (QGIS shows it)
_SYNTHETIC_LAYER = (
    "SYNTHETIC data: generated acquisitions, not a real Sentinel-2 series of this site"
)


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
            description=_SYNTHETIC_LAYER if result.synthetic else "",
        )
    embed_styles(path, {layer: layer_style_qml(layer, result) for layer in GPKG_LAYERS})


# ----------------------------------------------------------------------------------------------
# KML (Google Earth)

_KML_COLUMNS = ("Name", "Description", *STRUCTURE_PROPERTIES[1:], STYLE_FIELD)


def _kml_description(props: Mapping[str, Any], confidence: float) -> str:
    """One line; `confidence` unrounded, formatted as the report does (0.895 in the GeoJSON is
    0.89 there, and was 0.90 here)."""
    seen = f"{props['first_seen_start'] or '?'} – {props['first_seen_end'] or '?'}"
    bermed = {True: "yes", False: "no", None: "not assessed"}[props["bermed"]]
    return (
        f"{props['kind']}, first seen {seen}, {props['area_m2']:.0f} m², confidence "
        f"{confidence:.2f}, {'confirmed' if props['confirmed'] else 'unconfirmed'}, "
        f"{props['status']}{_since(props)}, bermed {bermed}; {props['lat']}, {props['lon']}"
    )


def _since(props: Mapping[str, Any]) -> str:
    """When it went, as the report's status says it."""
    if props["vanished_after"]:
        return f" after {props['vanished_after']}"
    if props["absent_since"]:
        return f", absent since {props['absent_since']} (not yet vanished)"
    return ""


def _write_kml(path: Path, result: RunResult) -> None:
    """structures.kml through GDAL's KML driver: one placemark per structure (EPSG:4326),
    named by id, styled and described in one line (`changedet.outputs.kml`), every property
    as ExtendedData; the document described by the run's headline."""
    lonlats = all_to_wgs84(result.grid.crs, [s.geometry for s in result.structures])
    classes = style_classes(result)
    rows: list[_Row] = []
    for s, lonlat in zip(result.structures, lonlats, strict=True):
        props = structure_properties(s, result.grid.crs)
        kml = {k: v for k, v in props.items() if k != "id"}
        kml["source_scenes"] = ",".join(props["source_scenes"])
        for key in ("confirmed", "bermed"):  # KML has no booleans: say it in words
            kml[key] = None if props[key] is None else str(props[key]).lower()
        said = "SYNTHETIC data: " if result.synthetic else ""
        if why := not_counted(s):
            said += f"NOT COUNTED, {why}: "
        kml.update(Name=s.id, Description=said + _kml_description(props, s.confidence))
        kml[STYLE_FIELD] = placemark_style(s, classes)
        geometry = split_at_antimeridian(lonlat)  # as in the GeoJSON
        rows.append((right_hand(as_multipolygon(geometry)), kml))
    numbers = (
        "flattening",
        "soil_gain",
        "width_px",
        "area_m2",
        "confidence",
        "berm_score",
        "lat",
        "lon",
    )
    _write_layer(
        path,
        "structures",
        rows,
        _KML_COLUMNS,
        crs="EPSG:4326",
        geometry_type="MultiPolygon",
        dtypes={**dict.fromkeys(numbers, "float64"), "n_clear_obs": "int32"},
    )
    text = finish_kml(path.read_text(encoding="utf-8"), document_text(result, _SYNTHETIC_LAYER))
    path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# QGIS project


def _vector_layers(config: OutputConfig) -> list[ProjectLayer]:
    """The vector layers of the project, top first: from the GeoPackage (in the grid's CRS),
    else from the GeoJSON files (EPSG:4326; change areas and scenes are the GeoPackage's only)."""

    def source(layer: str) -> tuple[str, str | None] | None:
        if config.geopackage:
            return f"./{GPKG_NAME}|layername={layer}", None
        return (f"./{layer}.geojson", "EPSG:4326") if layer in GEOJSON_LAYERS else None

    shown = {"structures": True, "berms": True, "aoi": True, "analysed_area": True}
    names = {"analysed_area": "analysed area", "change_areas": "change areas"}
    layers = []
    for layer in ("structures", "berms", "aoi", "analysed_area", "change_areas", "scenes"):
        found = source(layer)
        if found is None:
            continue
        src, crs = found
        layers.append(
            ProjectLayer(
                src,
                names.get(layer, layer),
                "vector",
                "",  # filled with the layer's style by the caller
                "Detections",
                shown.get(layer, False),
                "Line" if layer == "berms" else "Polygon",
                crs,
            )
        )
    return layers


def _project(
    result: RunResult, config: OutputConfig, rasters: Sequence[RasterOutput], folder: Path
) -> bytes:
    """The project of the files written into `folder` (raster styles read from their sidecars)."""
    layers = []
    for layer in _vector_layers(config):
        key = {"analysed area": "analysed_area", "change areas": "change_areas"}.get(
            layer.name, layer.name
        )
        layers.append(replace(layer, style=layer_style_qml(key, result)))
    groups = ("Change evidence", "Imagery", "Imagery/Periods")
    for group in groups:
        for r in rasters:
            if r.group == group:
                style = (folder / r.path).with_suffix(".qml").read_text(encoding="utf-8")
                layers.append(
                    ProjectLayer(f"./{r.path}", r.title, "raster", style, group, r.visible)
                )
    title = f"changedet: {result.aoi.name} ({result.aoi.id})"
    return project_qgz(
        layers, result.grid, title + (" [SYNTHETIC data]" if result.synthetic else "")
    )


# Per layer: its columns in order, its geometry type and the pandas dtypes of the columns that
# are not text.
_LAYER_SCHEMAS: dict[str, tuple[Sequence[str], str, Mapping[str, str]]] = {
    "aoi": (("id", "name"), "MultiPolygon", {}),
    "analysed_area": (
        ANALYSED_AREA_PROPERTIES,
        "MultiPolygon",
        dict.fromkeys(ANALYSED_AREA_PROPERTIES, "float64"),
    ),
    "structures": (
        STRUCTURE_PROPERTIES,
        "MultiPolygon",
        {
            "lat": "float64",
            "lon": "float64",
            "flattening": "float64",
            "soil_gain": "float64",
            "width_px": "float64",
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
        props = structure_properties(s, result.grid.crs)
        # GeoPackage has no list type: the scene ids travel as a JSON array in text.
        props["source_scenes"] = json.dumps(props["source_scenes"])
        structures.append((as_multipolygon(s.geometry), props))
    aoi_geom = as_multipolygon(to_grid(result.aoi.geometry))
    analysed = analysed_area(result)
    return {
        "aoi": [(aoi_geom, {"id": result.aoi.id, "name": result.aoi.name})],
        "analysed_area": []
        if analysed is None
        else [(None if analysed[0] is None else as_multipolygon(analysed[0]), analysed[1])],
        "structures": structures,
        "berms": [(as_multilinestring(b.geometry), berm_properties(b)) for b in result.berms],
        "change_areas": [(as_multipolygon(g), p) for g, p in areas],
        "scenes": [
            (None if g is None else as_multipolygon(to_grid(g)), p) for g, p in scene_rows(result)
        ],
    }


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


class _Writer:
    """The steps of one run's outputs, into the temporary folder `tmp`."""

    def __init__(
        self, result: RunResult, tmp: Path, config: OutputConfig, drawings: Drawings
    ) -> None:
        self.result, self.tmp, self.config, self.drawings = result, tmp, config, drawings
        self.rasters: list[RasterOutput] = []
        # One stretch for the imagery COGs and the pictures, which are drawn on two threads.
        self.stretch = display_stretch(result.before, result.after)

    def vectors(self) -> None:
        result, tmp = self.result, self.tmp
        write_text(tmp / STRUCTURES_FILE, geojson_text(structures_feature_collection(result)))
        write_text(tmp / "structures.qml", layer_style_qml("structures", result))
        write_text(tmp / "berms.geojson", geojson_text(berms_feature_collection(result)))
        write_text(tmp / "berms.qml", layer_style_qml("berms"))
        write_text(tmp / "structures.csv", structures_csv(result))
        _write_kml(tmp / "structures.kml", result)

    def geopackage(self) -> None:
        """changedet.gpkg; without it, the AOI and the analysed area as GeoJSON (with their
        .qml), so the project still draws them."""
        result, tmp = self.result, self.tmp
        if self.config.geopackage:
            _write_geopackage(tmp / GPKG_NAME, result, change_areas(result.change))
            return
        for layer, fc in (
            ("aoi", aoi_feature_collection(result)),
            ("analysed_area", analysed_area_feature_collection(result)),
        ):
            write_text(tmp / f"{layer}.geojson", geojson_text(fc))
            write_text(tmp / f"{layer}.qml", layer_style_qml(layer))

    def rasters_and_tables(self) -> None:
        self.rasters = write_evidence_rasters(self.tmp, self.result, all_layers=self.config.cogs)
        if self.config.imagery:
            lo, hi = self.stretch
            self.rasters += write_imagery(self.tmp, self.result, lo, hi, self.drawings)
        write_text(self.tmp / "counts.csv", counts_csv(self.result))

    def project(self) -> None:
        qgz = _project(self.result, self.config, self.rasters, self.tmp)
        with atomic_path(self.tmp / PROJECT_NAME) as part:
            part.write_bytes(qgz)

    def pictures(self, progress: Progress) -> Pictures:
        return write_pictures(
            self.result,
            self.tmp,
            config=self.config,
            stretch=self.stretch,
            progress=progress,
            drawings=self.drawings,
        )

    def report_and_manifest(self, pictures: Pictures, companions: Sequence[str]) -> list[str]:
        """report.html and run.json, last: they list every file of the run (the report also
        its `companions`)."""
        manifest = run_manifest(self.result)
        manifest["drawn"] = self.drawings.manifest()
        if self.config.report:
            write_report_html(
                self.result,
                self.tmp,
                pictures,
                manifest=manifest,
                extra_files=["run.json", "report.html", *companions],
            )
        files = sorted(
            p.relative_to(self.tmp).as_posix() for p in self.tmp.rglob("*") if p.is_file()
        )
        manifest["files"] = sorted({*files, "run.json"})
        # Kept beside this run by another part of changedet: the next run that does not keep
        # them moves them to previous/ with this run (`runfolder`).
        manifest["companions"] = sorted(companions)
        write_json(self.tmp / "run.json", manifest)
        return list(manifest["files"])


def write_run_outputs(
    result: RunResult,
    out_dir: Path,
    *,
    config: OutputConfig,
    progress: Progress = no_progress,
    companions: Sequence[str] = (),
) -> list[Path]:
    """Write every output of one AOI run into `out_dir` (out/<aoi_id>/) and return their paths.

    Everything is built in a temporary folder beside `out_dir` that replaces it only when
    complete, so a failed run leaves the previous outputs (or nothing) rather than a half-written
    folder. The previous run's files move to `out_dir/previous/`; files changedet did not write
    stay where they are. `companions` are files that another part of changedet keeps there
    (the monitor's alerts.geojson): the report lists them, run.json names them apart from its
    files, and a later run that does not keep them moves them to previous/.
    """
    out_dir = Path(out_dir)
    _check_writable(result)
    total = 6
    try:
        later = partial(_later_run, started=result.provenance.get("started"))
        with (
            run_folder(out_dir, superseded=later, companions=companions) as tmp,
            _full_disk_said(tmp, out_dir),
        ):
            # The folder still holds the previous run: its unchanged drawings are taken again.
            writer = _Writer(result, tmp, config, Drawings(out_dir if out_dir.is_dir() else None))
            progress("outputs", 0, total)
            # The COGs (GDAL, which releases the GIL) are written on a thread while the vectors,
            # the GeoPackage and the pictures are made.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="changedet-rasters") as pool:
                rasters = pool.submit(writer.rasters_and_tables)
                writer.vectors()
                progress("outputs", 1, total)
                writer.geopackage()
                progress("outputs", 2, total)
                pictures = writer.pictures(progress)
                rasters.result()
            progress("outputs", 3, total)
            writer.project()
            progress("outputs", 4, total)
            files = writer.report_and_manifest(pictures, companions)
            progress("outputs", 5, total)
            apply_umask(tmp)
            progress("outputs", total, total)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        if exc.errno in _FULL:
            raise OutputError(_full_disk(out_dir)) from None
        raise OutputError(f"cannot write outputs to {out_dir}: {exc}{_advice(exc)}") from None
    return [out_dir / name for name in files]


_FULL = (errno.ENOSPC, errno.EDQUOT)
# Free bytes under which a failed write is taken for a full disk whatever the library said: a
# run's next file (a COG, a GeoPackage transaction) commonly needs this much.
NEARLY_FULL_BYTES = 32 << 20


def _full_disk(out_dir: Path) -> str:
    return (
        f"cannot write outputs to {out_dir}: the disk is full; free some space there or pass "
        "another --out, then rerun"
    )


def _out_of_space(folder: Path, exc: BaseException) -> bool:
    """Whether `exc` came of a full disk under `folder`. GDAL says so in many words or none (an
    empty KML without an error, "Failed to commit transaction", raw SQL), so the errno along the
    chain is asked first, then the file system itself, after the failure; a failure that is no
    write's (a bug: TypeError, KeyError ...) keeps its own words on a nearly full disk too."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(e, OSError) and e.errno in _FULL for e in chain):
        return True
    if not any(_a_write_failure(e) for e in chain):
        return False
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def _a_write_failure(exc: BaseException) -> bool:
    """An error of writing a file: the OS's, ours, or GDAL's through rasterio or pyogrio."""
    library = type(exc).__module__.split(".", 1)[0]
    return isinstance(exc, OSError | OutputError) or library in ("rasterio", "pyogrio")


@contextlib.contextmanager
def _full_disk_said(tmp: Path, out_dir: Path) -> Iterator[None]:
    """A failure while the outputs are written into `tmp` said as a full disk when it is one
    (asked before `run_folder` removes `tmp`, which frees the space again)."""
    try:
        yield
    except Exception as exc:
        if _out_of_space(tmp, exc):
            raise OutputError(_full_disk(out_dir)) from None
        raise


def _later_run(target: Path, *, started: str | None) -> str | None:
    """Why the outputs of a run started at `started` must not replace `target`'s: a run that
    started later wrote them (a Dask worker that stalled past the scheduler's timeout, its AOI
    done again elsewhere, then woke to write a year-old answer over the monitor's newer one)."""
    try:
        theirs = json.loads((target / "run.json").read_text())["started"]
        when, ours = datetime.fromisoformat(theirs), datetime.fromisoformat(str(started))
        # One started "after now" came from a clock running ahead: not to be trusted over this.
        later = ours < when <= datetime.now(UTC)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none there, or an older changedet's: nothing to compare
    if not later:
        return None
    return (
        f"the outputs in {target} are of a run started later ({theirs}) than this one "
        f"({started}): left as they are, these were not written"
    )


def _advice(exc: OSError) -> str:
    """What to do about a failed write (the previous outputs stand: see `run_folder`)."""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "; pass an --out folder you can write to, then rerun"
    if exc.errno == errno.EFBIG:
        return "; lift the file-size limit (ulimit -f) or pass another --out, then rerun"
    return ""
