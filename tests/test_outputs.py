"""Every run output: GeoJSON against RFC 7946, the GeoPackage and its QGIS styles through OGR,
COGs, counts.csv and run.json, and the atomic swap of the output folder."""

from __future__ import annotations

import csv
import errno
import io
import json
import sqlite3
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
from pyproj import Transformer
from shapely.geometry import shape

from changedet.aoi import to_grid_crs
from changedet.config import OutputConfig
from changedet.errors import OutputError
from changedet.models import (
    FALSE_POSITIVE,
    ChangeMap,
    Composite,
    Grid,
    Period,
    PeriodCount,
    RunResult,
    Structure,
)
from changedet.outputs.chips import SYNTHETIC_RGB
from changedet.outputs.manifest import run_manifest
from changedet.outputs.vectors import (
    BERM_PROPERTIES,
    STRUCTURE_PROPERTIES,
    change_areas,
    structure_properties,
    structures_feature_collection,
)
from changedet.outputs.write import GPKG_LAYERS, write_run_outputs

EXPECTED_FILES = {
    "changedet.qgz",
    "structures.geojson",
    "structures.qml",
    "structures.csv",
    "structures.kml",
    "berms.geojson",
    "berms.qml",
    "changedet.gpkg",
    "change.tif",
    "change.qml",
    "change_mask.tif",
    "change_mask.qml",
    "clear_count.tif",
    "clear_count.qml",
    "imagery/latest.tif",
    "imagery/latest.qml",
    "imagery/baseline.tif",
    "imagery/baseline.qml",
    "imagery/latest_date.tif",
    "imagery/latest_date.qml",
    "imagery/baseline_date.tif",
    "imagery/baseline_date.qml",
    "counts.csv",
    "counts.png",
    "coverage.png",
    "before.png",
    "after.png",
    "overlay.png",
    "report.html",
    "run.json",
}


def reproject(geom: Any, src: str, dst: str) -> Any:
    transformer = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(geom, transformer.transform, interleaved=False)


@pytest.fixture(scope="module")
def run_result(make_run_result: Callable[..., RunResult]) -> RunResult:
    return make_run_result()


@pytest.fixture(scope="module")
def out_dir(run_result: RunResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "khojir-test"
    write_run_outputs(run_result, out, config=OutputConfig())
    return out


# ---------------------------------------------------------------------------------------------


def test_every_output_file_is_written(out_dir: Path, run_result: RunResult) -> None:
    names = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    chips = {f"chips/{s.id}.png" for s in run_result.structures}
    assert names == EXPECTED_FILES | chips
    # No temporary folders left beside the output.
    assert [p.name for p in out_dir.parent.iterdir()] == ["khojir-test"]


def test_progress_reports_and_returned_paths(run_result: RunResult, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    paths = write_run_outputs(
        run_result, tmp_path / "a", config=OutputConfig(), progress=lambda *a: seen.append(a)
    )
    assert {p.name for p in paths} >= {"run.json", "report.html", "changedet.gpkg"}
    assert all(p.is_file() and p.is_relative_to(tmp_path / "a") for p in paths)
    outputs = [s for s in seen if s[0] == "outputs"]
    assert outputs[0][1] == 0 and outputs[-1][1] == outputs[-1][2]


def _ring_is_ccw(coords: list[list[float]]) -> bool:
    return shapely.LinearRing(coords).is_ccw


def test_structures_geojson_is_rfc7946(out_dir: Path, run_result: RunResult) -> None:
    text = (out_dir / "structures.geojson").read_text(encoding="utf-8")
    fc = json.loads(text)
    assert fc["type"] == "FeatureCollection"
    assert "crs" not in fc  # RFC 7946 §4: no crs member
    assert len(fc["features"]) == len(run_result.structures)
    for feature, s in zip(fc["features"], run_result.structures, strict=True):
        assert feature["type"] == "Feature"
        geom = feature["geometry"]
        assert geom["type"] in ("Polygon", "MultiPolygon")
        polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        for rings in polys:
            assert _ring_is_ccw(rings[0]), "exterior ring must be counterclockwise"
            for hole in rings[1:]:
                assert not _ring_is_ccw(hole), "holes must be clockwise"
            for lon, lat in rings[0]:
                assert 51.6 < lon < 51.8 and 35.5 < lat < 35.7  # lon, lat order
                assert lon == round(lon, 7) and lat == round(lat, 7)
        g = shape(geom)
        assert g.is_valid
        # Known answer: back in UTM the polygon is the structure (1 cm coordinate rounding).
        back = reproject(g, "EPSG:4326", "EPSG:32639")
        assert back.symmetric_difference(s.geometry).area < 1.0
        assert list(feature["properties"]) == list(STRUCTURE_PROPERTIES)
        props = feature["properties"]
        assert props["id"] == feature["id"] == s.id
        assert props["kind"] == s.kind
        # The published point lies inside the published polygon.
        assert g.contains(shapely.Point(props["lon"], props["lat"]))
        assert props["area_m2"] == pytest.approx(s.area_m2)
        assert props["confirmed"] is s.confirmed
        assert props["first_seen_end"] == s.first_seen_end.isoformat()
        assert props["source_scenes"] == list(s.source_scenes)
    assert fc["features"][2]["properties"]["bermed"] is None
    assert fc == structures_feature_collection(run_result)


def test_geojson_opens_with_ogr_in_epsg4326(out_dir: Path) -> None:
    for name, props in (("structures", STRUCTURE_PROPERTIES), ("berms", BERM_PROPERTIES)):
        info = pyogrio.read_info(out_dir / f"{name}.geojson")
        assert info["crs"] == "EPSG:4326"
        assert set(props) <= set(info["fields"])
        frame = pyogrio.read_dataframe(out_dir / f"{name}.geojson")
        assert frame.geometry.is_valid.all()
    berms = json.loads((out_dir / "berms.geojson").read_text())
    (feature,) = berms["features"]
    assert feature["geometry"]["type"] == "LineString"
    assert list(feature["properties"]) == list(BERM_PROPERTIES)
    assert feature["properties"]["length_m"] == pytest.approx(240.0)
    assert feature["properties"]["structure_id"] == "s-0002"


def test_geopackage_layers_read_back_through_ogr(out_dir: Path, run_result: RunResult) -> None:
    gpkg = out_dir / "changedet.gpkg"
    layers = dict(pyogrio.list_layers(gpkg))
    assert set(GPKG_LAYERS) <= set(layers)
    assert layers["structures"] == "MultiPolygon"
    assert layers["berms"] == "MultiLineString"
    for layer in GPKG_LAYERS:
        assert pyogrio.read_info(gpkg, layer=layer)["crs"] == "EPSG:32639"
    structures = pyogrio.read_dataframe(gpkg, layer="structures")
    assert list(structures.columns[:-1]) == list(STRUCTURE_PROPERTIES)
    assert structures.geometry.is_valid.all()
    for row, s in zip(structures.itertuples(), run_result.structures, strict=True):
        assert row.id == s.id
        assert row.geometry.area == pytest.approx(s.area_m2)  # UTM: area in m²
        assert bool(row.confirmed) is s.confirmed
        assert json.loads(row.source_scenes) == list(s.source_scenes)
    berms = pyogrio.read_dataframe(gpkg, layer="berms")
    assert berms.geometry.length.iloc[0] == pytest.approx(240.0)
    aoi = pyogrio.read_dataframe(gpkg, layer="aoi")
    assert aoi.id.tolist() == ["khojir-test"]
    (analysed,) = pyogrio.read_dataframe(gpkg, layer="analysed_area").itertuples()
    coverage = run_result.coverage
    assert coverage is not None
    # Known answer: the layer is the analysed pixels cut along the AOI's edge, and says how
    # much of the AOI they are: pixels whose centre the AOI holds, which along its edge differ
    # from the polygon by part of a pixel.
    from rasterio.features import shapes

    mask = coverage.analysed.astype("uint8")
    found = shapes(mask, mask=mask > 0, transform=coverage.grid.transform)
    pixels = shapely.union_all([shape(part) for part, _ in found])
    aoi_utm = to_grid_crs(run_result.aoi.geometry, coverage.grid.crs)
    assert analysed.geometry.area == pytest.approx(pixels.intersection(aoi_utm).area)
    assert analysed.geometry.difference(aoi_utm).area < 1e-6  # nothing outside the AOI
    assert pixels.difference(aoi_utm).area > 1000  # which the pixels reached
    assert analysed.geometry.area / 1e6 == pytest.approx(coverage.analysed_km2, rel=1e-2)
    assert analysed.aoi_km2 == pytest.approx(coverage.aoi_km2)
    assert analysed.analysed_share == pytest.approx(coverage.share, abs=1e-4)

    scenes = pyogrio.read_dataframe(gpkg, layer="scenes")
    used = scenes[scenes.status == "used"]
    skipped = scenes[scenes.status == "skipped"]
    assert sorted(used.scene_id) == sorted(s.id for s in run_result.scenes_used)
    assert used.geometry.notna().all() and used.reason.isna().all()
    assert dict(zip(skipped.scene_id, skipped.reason, strict=True)) == {
        s.scene_id: s.reason for s in run_result.scenes_skipped
    }
    assert set(skipped.date) == {"2023-06-20", "2024-05-16"}  # parsed from the scene ids
    assert set(used.composites) == {"2023-06..07", "2024-04..06"}


def test_change_areas_match_the_mask(out_dir: Path, run_result: RunResult) -> None:
    areas = pyogrio.read_dataframe(out_dir / "changedet.gpkg", layer="change_areas")
    assert len(areas) == 3  # three separate bright roofs
    assert areas.geometry.is_valid.all()
    assert areas.n_pixels.sum() == int(run_result.change.mask.sum())
    assert sorted(areas.area_m2) == pytest.approx(sorted([800.0, 6000.0, 900.0]))
    assert areas.geometry.area.sum() == pytest.approx(7700.0)
    assert areas.mean_score.tolist() == pytest.approx([8.0, 8.0, 8.0])


def test_change_areas_of_pixels_meeting_at_corners_are_valid() -> None:
    grid = Grid.from_origin("EPSG:32639", 500_000.0, 3_950_000.0, 10.0, 12, 12)
    mask = np.zeros(grid.shape, bool)
    mask[1:4, 1:4] = mask[4:6, 4:6] = True  # a block and a smaller one on its corner
    mask[7:11, 2:6] = True
    mask[8, 3] = mask[9, 4] = False  # a hole of two pixels meeting at a corner
    mask[1, 8] = mask[2, 9] = mask[3, 8] = True  # a zigzag
    score = np.where(mask, 5.0, 0.0).astype(np.float32)
    areas = change_areas(ChangeMap(grid, score, score / 10, mask, 3.0))
    assert len(areas) == 3
    assert all(g.is_valid for g, _ in areas)
    assert sum(g.area for g, _ in areas) == pytest.approx(mask.sum() * 100.0)
    assert [p["n_pixels"] for _, p in areas] == [13, 3, 14]  # in raster order


def test_layer_styles_table_follows_qgis_and_geopackage_rules(
    out_dir: Path, run_result: RunResult
) -> None:
    con = sqlite3.connect(out_dir / "changedet.gpkg")
    try:
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
        assert app_id == 0x47504B47  # 'GPKG'
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        cols = {r[1]: (r[2], r[5]) for r in con.execute("PRAGMA table_info(layer_styles)")}
        assert list(cols) == [
            "id",
            "f_table_catalog",
            "f_table_schema",
            "f_table_name",
            "f_geometry_column",
            "styleName",
            "styleQML",
            "styleSLD",
            "useAsDefault",
            "description",
            "owner",
            "ui",
            "update_time",
        ]
        assert cols["id"] == ("INTEGER", 1)  # integer primary key (GeoPackage attributes rule)
        allowed = {"INTEGER", "TEXT", "BOOLEAN", "DATETIME"}
        assert {t.split("(")[0] for t, _ in cols.values()} <= allowed
        # Registered as a GeoPackage attributes table.
        row = con.execute(
            "SELECT data_type, srs_id FROM gpkg_contents WHERE table_name = 'layer_styles'"
        ).fetchone()
        assert row == ("attributes", None)
        geom_cols = dict(con.execute("SELECT table_name, column_name FROM gpkg_geometry_columns"))
        styles = con.execute(
            "SELECT f_table_name, f_geometry_column, styleQML, useAsDefault,"
            " update_time FROM layer_styles"
        ).fetchall()
    finally:
        con.close()
    assert sorted(s[0] for s in styles) == sorted(GPKG_LAYERS)
    for table, geom_col, qml, default, updated in styles:
        assert geom_col == geom_cols[table]
        assert default == 1
        assert datetime.fromisoformat(updated.replace("Z", "+00:00"))
        root = ET.fromstring(qml)
        assert root.tag == "qgis"
        assert root.find("renderer-v2") is not None
    qml = {s[0]: s[2] for s in styles}
    structures_style = ET.fromstring(qml["structures"])
    renderer = structures_style.find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "categorizedSymbol"
    assert '"first_seen_end"' in (renderer.get("attr") or "")
    values = [c.get("value") for c in renderer.iter("category")]
    # First present in Oct 2023, Dec 2023 and May 2024 (the month before first_seen_end).
    # Then: date unknown, another month, dropped candidates, reviewed false positives.
    assert values == [
        "2023-10..2023-10",
        "2023-12..2023-12",
        "2024-05..2024-05",
        "",
        "other",
        "dropped",
        "false-positive",
    ]
    colours = [p.get("v") for p in renderer.iter("prop") if p.get("k") == "outline_color"]
    # one colour per first-seen class, grey for unknown and other, faint grey for dropped,
    # light grey for false positives
    assert len(set(colours)) == 6
    exprs = {o.get("value") for o in renderer.iter("Option") if o.get("name") == "expression"}
    assert any("'dash'" in e and '"confirmed"' in e for e in exprs)
    assert any("'b_diagonal'" in e and '"kind"' in e for e in exprs)
    labels = structures_style.find("labeling/settings/text-style")
    assert structures_style.get("labelsEnabled") == "1"
    assert labels is not None and labels.get("fieldName") == "id"
    assert ET.fromstring(qml["berms"]).find(".//symbol").get("type") == "line"
    # The sidecars are the same styles QGIS finds by file name.
    assert (out_dir / "structures.qml").read_text(encoding="utf-8") == qml["structures"]
    assert (out_dir / "berms.qml").read_text(encoding="utf-8") == qml["berms"]


def _raster(path: Path) -> tuple[Any, np.ndarray]:
    import rasterio

    with rasterio.open(path) as src:
        return src.profile | {"tags": src.tags(), "colorinterp": src.colorinterp}, src.read()


def test_cogs_hold_the_change_evidence(out_dir: Path, run_result: RunResult) -> None:
    grid = run_result.grid
    expected = {
        "change.tif": ("float32", 1, "singlebandpseudocolor"),
        "change_mask.tif": ("uint8", 1, "paletted"),
        "clear_count.tif": ("uint16", 1, "singlebandpseudocolor"),
        "imagery/latest.tif": ("uint8", 3, "multibandcolor"),
        "imagery/baseline.tif": ("uint8", 3, "multibandcolor"),
        "imagery/latest_date.tif": ("int32", 1, "paletted"),
        "imagery/baseline_date.tif": ("int32", 1, "paletted"),
    }
    for name, (dtype, count, renderer) in expected.items():
        profile, _ = _raster(out_dir / name)
        assert profile["crs"].to_epsg() == 32639
        assert profile["transform"] == grid.transform
        assert (profile["height"], profile["width"]) == grid.shape
        assert profile["dtype"] == dtype and profile["count"] == count, name
        # Every raster has its style beside it, with the renderer that fits what it holds.
        style = ET.parse((out_dir / name).with_suffix(".qml")).getroot()
        assert style.find("pipe/rasterrenderer").get("type") == renderer, name
    _, score = _raster(out_dir / "change.tif")
    np.testing.assert_array_equal(score[0], run_result.change.score)
    profile, mask = _raster(out_dir / "change_mask.tif")
    assert profile["nodata"] == 255
    assert (mask[0][:5, :8] == 255).all()  # unobserved corner
    assert int((mask[0] == 1).sum()) == int(run_result.change.mask.sum())
    # How to read it beside change.tif: grown below the seed threshold, down to the low one.
    change = run_result.change
    tags = profile["tags"]
    assert (float(tags["threshold"]), float(tags["low_threshold"])) == (
        change.threshold,
        change.low_threshold,
    )
    assert tags["grown"].endswith("holes filled")
    _, clear = _raster(out_dir / "clear_count.tif")
    np.testing.assert_array_equal(clear[0], run_result.before.count + run_result.after.count)


def test_acquisition_days_read_as_dates() -> None:
    from changedet.outputs.imagery import yyyymmdd

    days = np.array([[-1, 0, 19850], [19850, 19881, -1]], dtype=np.int32)  # 19881: 2024-06-07
    values, present = yyyymmdd(days)
    assert values.tolist() == [[0, 19700101, 20240507], [20240507, 20240607, 0]]
    assert present == [19700101, 20240507, 20240607]
    none, nothing = yyyymmdd(np.full((2, 2), -1, dtype=np.int32))
    assert not none.any() and nothing == []


def test_imagery_is_true_colour_with_dates(out_dir: Path, run_result: RunResult) -> None:
    from changedet.outputs.imagery import display_rgb, display_stretch, shared_stretch

    lo, hi = display_stretch(run_result.before, run_result.after)
    # The baseline's stretch: it stays while the baseline does, so monitoring runs keep colours.
    np.testing.assert_array_equal(np.stack([lo, hi]), np.stack(shared_stretch(run_result.before)))
    for name, comp in (("latest", run_result.after), ("baseline", run_result.before)):
        profile, rgb = _raster(out_dir / "imagery" / f"{name}.tif")
        assert profile["nodata"] == 0
        assert [c.name for c in profile["colorinterp"]] == ["red", "green", "blue"]
        assert profile["tags"]["period"] == comp.period.label
        want = display_rgb(np.stack([comp.band(b) for b in ("red", "green", "blue")]), lo, hi)
        np.testing.assert_array_equal(rgb, want)
        assert (rgb[:, :5, :8] == 0).all() and (rgb[:, 5:, 8:] > 0).all()  # 0 only where unseen
        # Acquisition dates read as dates: day 19850 after 1970-01-01 is 2024-05-07.
        profile, dates = _raster(out_dir / "imagery" / f"{name}_date.tif")
        assert profile["nodata"] == 0 and (dates[0][:5, :8] == 0).all()
        day = {"latest": 20240507, "baseline": 20230702}[name]
        assert set(np.unique(dates[0][5:, 8:])) == {day}
        style = ET.parse(out_dir / "imagery" / f"{name}_date.qml").getroot()
        entries = [(e.get("value"), e.get("label")) for e in style.iter("paletteEntry")]
        assert entries == [(str(day), f"{str(day)[:4]}-{str(day)[4:6]}-{str(day)[6:]}")]
    # The latest composite shows the new roofs brighter than the baseline does.
    _, after = _raster(out_dir / "imagery" / "latest.tif")
    _, before = _raster(out_dir / "imagery" / "baseline.tif")
    r0, c0, r1, c1 = 40, 30, 42, 34
    assert after[:, r0:r1, c0:c1].mean() > before[:, r0:r1, c0:c1].mean() + 50


def test_period_imagery_has_overviews(
    tmp_path: Path, make_run_result: Callable[..., RunResult]
) -> None:
    """Every period's composite becomes a COG under imagery/periods/, with overviews once the
    image is larger than one tile."""
    import rasterio

    from changedet.outputs.imagery import write_imagery

    base = make_run_result()
    big = Grid(base.grid.crs, base.grid.transform, 1100, 600)
    rng = np.random.default_rng(1)
    comps = tuple(
        Composite(
            big,
            base.after.bands,
            p.period,
            rng.uniform(0.05, 0.4, (len(base.after.bands), 600, 1100)).astype(np.float32),
            np.ones((600, 1100), np.uint16),
            np.full((600, 1100), 19600 + i, np.int32),
        )
        for i, p in enumerate(base.counts)
    )
    result = RunResult(
        **{
            **base.__dict__,
            "grid": big,
            "before": comps[0],
            "after": comps[-1],
            "composites": comps,
        }
    )
    lo, hi = np.full(3, 0.05), np.full(3, 0.4)
    written = write_imagery(tmp_path, result, lo, hi)
    periods = [r.path for r in written if r.group == "Imagery/Periods"]
    assert periods == [f"imagery/periods/{c.period.label}.tif" for c in comps]
    for rel in periods:
        with rasterio.open(tmp_path / rel) as src:
            assert src.overviews(1) == [2, 4]
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert (tmp_path / rel).with_suffix(".qml").is_file()


def test_counts_csv_adds_up(out_dir: Path, run_result: RunResult) -> None:
    with (out_dir / "counts.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["period"] for r in rows] == [c.period.label for c in run_result.counts]
    for row, c in zip(rows, run_result.counts, strict=True):
        assert int(row["cumulative"]) == c.cumulative
        assert int(row["first_seen"]) == c.new_confirmed
        assert int(row["cumulative_low"]) <= int(row["cumulative"]) <= int(row["cumulative_high"])
        assert row["start"] == c.period.start.isoformat()
        assert float(row["clear_fraction"]) == pytest.approx(c.clear_fraction)
    # The per-period column adds up to the cumulative count, period by period.
    running = 0
    for row in rows:
        running += int(row["new"])
        assert running == int(row["cumulative"])


def test_counts_csv_marks_the_baseline_periods(make_run_result: Callable[..., RunResult]) -> None:
    """A baseline month read "0 new" at full clear view, though what was built in it is in no
    count (it is the baseline)."""
    from changedet.outputs.tables import counts_csv

    result = make_run_result()
    labels = [c.period.label for c in result.counts]
    # The baseline's clear periods are the 2nd and the 4th: the 3rd, cloudy, lies in its
    # composite, and what the 1st held counts as there already.
    comparison = {"baseline": [labels[1], labels[3]]}
    result = replace(result, provenance={**result.provenance, "comparison": comparison})
    rows = list(csv.DictReader(io.StringIO(counts_csv(result))))
    assert [r["baseline"] for r in rows] == ["true"] * 4 + ["false"] * (len(rows) - 4)


def test_structures_csv_has_a_point_inside_each_structure(
    out_dir: Path, run_result: RunResult
) -> None:
    from changedet.outputs.tables import STRUCTURES_CSV_COLUMNS

    with (out_dir / "structures.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert run_result.synthetic  # hence the last column
    assert tuple(reader.fieldnames or ()) == (*STRUCTURES_CSV_COLUMNS, "data")
    assert set(STRUCTURE_PROPERTIES) == set(STRUCTURES_CSV_COLUMNS)
    assert [r["id"] for r in rows] == [s.id for s in run_result.structures]
    for row, s in zip(rows, run_result.structures, strict=True):
        point = reproject(
            shapely.Point(float(row["lon"]), float(row["lat"])), "EPSG:4326", "EPSG:32639"
        )
        assert s.geometry.contains(point), s.id
        assert row["kind"] == s.kind and row["confirmed"] == str(s.confirmed).lower()
        assert json.loads(row["source_scenes"]) == list(s.source_scenes)
    assert rows[2]["bermed"] == ""  # null stays empty


def test_an_l_shaped_structure_gets_a_point_inside_it() -> None:
    from changedet.models import Structure
    from changedet.outputs.vectors import structure_point

    # An L whose centroid falls in the notch, outside the footprint.
    ell = shapely.Polygon([(0, 0), (100, 0), (100, 10), (10, 10), (10, 100), (0, 100)])
    ell = shapely.affinity.translate(ell, 560000, 3941000)
    assert not ell.contains(ell.centroid)
    lat, lon = structure_point(Structure("l", ell, ell.area, 0.9), "EPSG:32639")
    assert ell.contains(reproject(shapely.Point(lon, lat), "EPSG:4326", "EPSG:32639"))


def test_kml_opens_with_ogr_one_placemark_per_structure(
    out_dir: Path, run_result: RunResult
) -> None:
    info = pyogrio.read_info(out_dir / "structures.kml")
    assert info["crs"] == "EPSG:4326" and info["features"] == len(run_result.structures)
    frame = pyogrio.read_dataframe(out_dir / "structures.kml")
    assert frame["Name"].tolist() == [s.id for s in run_result.structures]
    for row, s in zip(frame.itertuples(), run_result.structures, strict=True):
        back = reproject(row.geometry, "EPSG:4326", "EPSG:32639")
        assert back.symmetric_difference(s.geometry).area < 1.0
        assert s.kind in row.description and "first seen" in row.description
    text = (out_dir / "structures.kml").read_text(encoding="utf-8")
    assert text.count("<Placemark") == len(run_result.structures)
    assert '<SimpleData name="first_seen_end">2023-11-01</SimpleData>' in text


def _project_title(folder: Path) -> str:
    with zipfile.ZipFile(folder / "changedet.qgz") as qgz:
        text = qgz.read("changedet.qgs").decode()
    return text.split("<title>", 1)[1].split("</title>", 1)[0]


def test_outputs_opened_alone_say_they_are_of_synthetic_data(
    out_dir: Path, run_result: RunResult, make_run_result: Callable[..., RunResult], tmp_path: Path
) -> None:
    """The GeoJSON, KML and QGIS project reach analysts without the report: from generated
    data, each says so; from real data, none does."""
    assert run_result.synthetic
    for name in ("structures.geojson", "berms.geojson"):
        assert json.loads((out_dir / name).read_text())["synthetic"] is True
    frame = pyogrio.read_dataframe(out_dir / "structures.kml")
    assert all(d.startswith("SYNTHETIC data: ") for d in frame["description"])
    assert _project_title(out_dir).endswith("[SYNTHETIC data]")
    with sqlite3.connect(out_dir / "changedet.gpkg") as db:
        said = dict(
            db.execute(
                "SELECT table_name, description FROM gpkg_contents WHERE data_type = 'features'"
            )
        )
    assert said and all(d.startswith("SYNTHETIC data:") for d in said.values()), said
    real = tmp_path / "real"
    write_run_outputs(make_run_result(synthetic=False), real, config=OutputConfig())
    assert "synthetic" not in json.loads((real / "structures.geojson").read_text())
    assert "SYNTHETIC" not in (real / "structures.kml").read_text(encoding="utf-8")
    assert "SYNTHETIC" not in _project_title(real)
    with sqlite3.connect(real / "changedet.gpkg") as db:
        assert not any(
            "SYNTHETIC" in d for (d,) in db.execute("SELECT description FROM gpkg_contents")
        )


def _stamped(png: Path) -> int:
    """Pixels of the red "SYNTHETIC" stamp in a picture (the map's drawn by matplotlib)."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    red = np.abs(rgb - np.array(SYNTHETIC_RGB)).max(axis=-1) <= 3
    return int(red.sum())


def test_tables_rasters_pictures_and_an_empty_kml_say_they_are_of_synthetic_data(
    tmp_path: Path, make_run_result: Callable[..., RunResult]
) -> None:
    """structures.csv, counts.csv, the COGs, the PNGs and an empty KML reach analysts without
    the report, and said nothing of generated data; from real data they still say nothing."""
    synthetic, real = tmp_path / "synthetic", tmp_path / "real"
    write_run_outputs(make_run_result(synthetic=True), synthetic, config=OutputConfig())
    write_run_outputs(make_run_result(synthetic=False), real, config=OutputConfig())
    for name in ("structures.csv", "counts.csv"):
        frame = pd.read_csv(synthetic / name)
        assert list(frame["data"].unique()) == ["synthetic"], name
        assert "data" not in pd.read_csv(real / name).columns, name
    tifs = sorted(p.relative_to(synthetic) for p in synthetic.rglob("*.tif"))
    assert tifs
    for rel in tifs:
        with rasterio.open(synthetic / rel) as src:
            assert src.tags().get("CHANGEDET_DATA") == "synthetic", rel
        with rasterio.open(real / rel) as src:
            assert "CHANGEDET_DATA" not in src.tags(), rel
    pictures = ["before.png", "after.png", "overlay.png", "counts.png", "coverage.png"]
    pictures += [p.relative_to(synthetic).as_posix() for p in (synthetic / "chips").glob("*.png")]
    assert len(pictures) > 3
    for name in pictures:
        assert _stamped(synthetic / name) > 100, name
        assert _stamped(real / name) == 0, name
    # A KML with no placemark has no description to carry it: its document says it.
    empty = tmp_path / "empty"
    write_run_outputs(
        replace(make_run_result(synthetic=True), structures=()),
        empty,
        config=OutputConfig(report=False, chips=False),
    )
    document = ET.parse(empty / "structures.kml").getroot()[0]
    said = document.findtext("{http://www.opengis.net/kml/2.2}description") or ""
    assert said.startswith("SYNTHETIC data"), ET.tostring(document)[:300]
    real_doc = ET.parse(real / "structures.kml").getroot()[0]
    said = real_doc.findtext("{http://www.opengis.net/kml/2.2}description") or ""
    assert said.startswith("changedet run of AOI") and "SYNTHETIC" not in said


def test_run_json(out_dir: Path, run_result: RunResult) -> None:
    text = (out_dir / "run.json").read_text()
    manifest: dict[str, Any] = json.loads(text, parse_constant=lambda c: pytest.fail(c))
    assert manifest["schema_version"] == 1
    assert manifest["synthetic"] is True
    assert manifest["config_fingerprint"] == "0123456789abcdef"
    assert [s["id"] for s in manifest["scenes"]["used"]] == [s.id for s in run_result.scenes_used]
    assert manifest["scenes"]["skipped"][0] == {
        "id": "S2B_39SWV_20230620_0_L2A",
        "reason": "AOI clear fraction 0.05 < 0.2",
    }
    limits = manifest["detection_limits"]
    assert limits["min_mapping_unit_m2"] == 400.0 and limits["min_mapping_unit_px"] == 4.0
    assert limits["pixel_size_m"] == 10.0
    assert any("rubble" in note for note in limits["notes"])  # what 'vanished' cannot see
    assert manifest["coregistration"] == {
        "shift_px": [0.12, -0.31],
        "shift_m": [1.2, -3.1],
        "corrected": False,
    }
    for key in ("numpy", "rasterio", "gdal", "changedet", "python"):
        assert manifest["versions"][key]
    assert manifest["timings_s"] == {"search": 0.5, "read": 2.25}
    # Provenance merged in: nested dicts key by key, new keys at top level.
    assert manifest["catalog"] == {
        "collections": ["sentinel-2-l2a"],
        "url": "sample_tiles/catalog.json",
    }
    assert manifest["pipeline_note"] == "test"
    assert manifest["results"]["n_confirmed"] == 2
    assert manifest["results"]["cumulative_range"] == [1, 3]
    assert manifest["grid"]["crs"] == "EPSG:32639"
    on_disk = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk
    assert manifest["time_range"]["start"] == "2023-06-01"
    # The effective config itself, not only its fingerprint.
    assert manifest["config"] == json.loads(json.dumps(run_result.config))
    assert manifest["config"]["track"]["min_persistence"] == 2
    cov = run_result.coverage
    assert cov is not None
    assert manifest["coverage"]["aoi_km2"] == cov.aoi_km2
    assert manifest["coverage"]["analysed_km2"] == cov.analysed_km2
    assert [p["label"] for p in manifest["coverage"]["periods"]] == ["2023-06..07", "2024-04..06"]
    assert manifest["headline"]["new_buildings"] == 2
    assert manifest["headline"]["unconfirmed"] == 1


def test_provenance_cannot_overwrite_the_scene_record(
    make_run_result: Callable[..., RunResult],
) -> None:
    base = make_run_result()
    provenance = {
        "scenes": "bogus",
        "synthetic": False,
        "time_range": ["2023-06-01", "2024-06-30"],  # the requested range, as the pipeline gives
        "catalog": "https://earth-search.aws.element84.com/v1",
        "coregistration": "not a dict",
    }
    manifest = run_manifest(RunResult(**{**base.__dict__, "provenance": provenance}))
    assert manifest["scenes"]["used"][0]["id"] == base.scenes_used[0].id
    assert manifest["provenance"] == {"scenes": "bogus", "coregistration": "not a dict"}
    assert manifest["synthetic"] is False
    assert manifest["time_range"]["start"] == "2023-06-01"
    assert manifest["time_range"]["end"] == "2024-06-30"
    assert manifest["catalog"]["source"] == "https://earth-search.aws.element84.com/v1"
    assert manifest["coregistration"]["shift_px"] == [0.12, -0.31]
    json.dumps(manifest, allow_nan=False)


def test_empty_run_still_writes_valid_outputs(
    tmp_path: Path, make_run_result: Callable[..., RunResult]
) -> None:
    result = make_run_result(empty=True, synthetic=False)
    out = tmp_path / "empty"
    write_run_outputs(result, out, config=OutputConfig())
    fc = json.loads((out / "structures.geojson").read_text())
    assert fc["features"] == []
    assert pyogrio.read_info(out / "structures.geojson")["features"] == 0
    for layer in ("structures", "berms", "change_areas"):
        assert pyogrio.read_info(out / "changedet.gpkg", layer=layer)["features"] == 0
    assert not list((out / "chips").glob("*")) if (out / "chips").exists() else True
    html = (out / "report.html").read_text()
    assert "No new structure" in html and "SYNTHETIC" not in html


def test_options_switch_outputs_off(
    tmp_path: Path, make_run_result: Callable[..., RunResult]
) -> None:
    out = tmp_path / "min"
    config = OutputConfig(geopackage=False, cogs=False, report=False, chips=False)
    write_run_outputs(make_run_result(), out, config=config)
    names = {p.name for p in out.rglob("*") if p.is_file()}
    # The basic outputs of every run stay; the optional ones go.
    assert {
        "structures.geojson",
        "berms.geojson",
        "change.tif",
        "counts.csv",
        "counts.png",
        "run.json",
    } <= names
    assert not names & {"changedet.gpkg", "change_mask.tif", "report.html"}
    assert not (out / "chips").exists()
    write_run_outputs(make_run_result(), out, config=OutputConfig(imagery=False))
    assert not (out / "imagery").exists()


def _project_layers(folder: Path) -> dict[str, tuple[str, str]]:
    """layer name → (datasource, declared CRS authid) of every layer of the run's project."""
    with zipfile.ZipFile(folder / "changedet.qgz") as qgz:
        root = ET.fromstring(qgz.read("changedet.qgs").decode().split("\n", 1)[1])
    return {
        str(el.findtext("layername")): (
            str(el.findtext("datasource")),
            str(el.findtext("srs/spatialrefsys/authid")),
        )
        for el in root.iter("maplayer")
    }


def test_without_geopackage_the_project_declares_each_layers_own_crs(
    tmp_path: Path, make_run_result: Callable[..., RunResult]
) -> None:
    """GeoJSON is EPSG:4326: declared in the grid's UTM CRS, QGIS drew it ~560 km off. Without
    the GeoPackage the AOI and the analysed area come as GeoJSON, so the project still has them."""
    result = make_run_result()
    out = tmp_path / "nogpkg"
    write_run_outputs(result, out, config=OutputConfig(geopackage=False, chips=False))
    layers = _project_layers(out)
    vectors = {n: v for n, v in layers.items() if "geojson" in v[0] or "gpkg" in v[0]}
    assert vectors == {
        "structures": ("./structures.geojson", "EPSG:4326"),
        "berms": ("./berms.geojson", "EPSG:4326"),
        "aoi": ("./aoi.geojson", "EPSG:4326"),
        "analysed area": ("./analysed_area.geojson", "EPSG:4326"),
    }
    assert all(crs == "EPSG:32639" for n, (_, crs) in layers.items() if n not in vectors)
    aoi = pyogrio.read_dataframe(out / "aoi.geojson")
    assert list(aoi["id"]) == [result.aoi.id] and aoi.crs.to_epsg() == 4326
    assert aoi.geometry[0].hausdorff_distance(result.aoi.geometry) < 1e-6
    analysed = pyogrio.read_dataframe(out / "analysed_area.geojson")
    assert analysed.crs.to_epsg() == 4326 and len(analysed) == 1
    assert (out / "aoi.qml").is_file() and (out / "analysed_area.qml").is_file()
    # With the GeoPackage, its layers are in the grid's CRS and no extra GeoJSON is written.
    out2 = tmp_path / "gpkg"
    write_run_outputs(result, out2, config=OutputConfig(chips=False))
    layers = _project_layers(out2)
    assert layers["aoi"] == ("./changedet.gpkg|layername=aoi", "EPSG:32639")
    assert layers["structures"][1] == "EPSG:32639"
    assert not (out2 / "aoi.geojson").exists()


def test_a_reviewed_false_positive_stays_visible_in_no_count_and_drawn_apart(
    tmp_path: Path, make_run_result: Callable[..., RunResult]
) -> None:
    """README: a false positive is "kept visible, left out of every count". run.json counted it
    among the confirmed, and the QGIS style drew it (and a dropped candidate) like any other."""
    result = make_run_result()
    s1, s2, s3 = result.structures
    assert s1.confirmed and s2.confirmed and not s3.confirmed
    result = replace(
        result,
        structures=(replace(s1, review=FALSE_POSITIVE), s2, replace(s3, status="dropped")),
    )
    out = tmp_path / "reviewed"
    write_run_outputs(result, out, config=OutputConfig(report=False, chips=False))
    res = json.loads((out / "run.json").read_text())["results"]
    assert (res["n_structures"], res["n_confirmed"], res["n_unconfirmed"]) == (2, 1, 1)
    assert res["n_false_positive"] == 1
    assert res["n_bermed"] == sum(1 for s in (s2, s3) if s.bermed)
    # Still in the outputs, with its verdict.
    features = json.loads((out / "structures.geojson").read_text())["features"]
    assert {f["id"]: f["properties"]["review"] for f in features}[s1.id] == FALSE_POSITIVE
    # Its own category in the style, as are dropped candidates.
    renderer = ET.fromstring((out / "structures.qml").read_text()).find("renderer-v2")
    assert renderer is not None
    assert '"review"' in renderer.get("attr", "") and '"status"' in renderer.get("attr", "")
    labels = {c.get("value"): c.get("label") for c in renderer.iter("category")}
    assert labels["false-positive"] == "reviewed false positive, not counted"
    assert labels["dropped"] == "dropped candidate (did not persist), not counted"
    # One class: s2's month (s1 reviewed out, s3 dropped); plus unknown, other, dropped, FP.
    assert len(labels) == 5


def test_the_kml_tells_what_is_counted_and_what_the_run_saw(
    tmp_path: Path, make_run_result: Callable[..., RunResult]
) -> None:
    """Google Earth drew every placemark alike (24 dropped candidates read as 24 more
    buildings) and nothing in the file said how much of the AOI was seen."""
    result = make_run_result()
    hall, depot, shed = result.structures
    assert hall.confirmed and depot.confirmed and not shed.confirmed
    result = replace(result, structures=(hall, replace(depot, status="dropped"), shed))
    out = tmp_path / "kml"
    write_run_outputs(result, out, config=OutputConfig(report=False, chips=False))
    ns = {"k": "http://www.opengis.net/kml/2.2"}
    document = ET.parse(out / "structures.kml").getroot()[0]
    marks = {
        p.findtext("k:name", namespaces=ns): p for p in document.iter(f"{{{ns['k']}}}Placemark")
    }

    def line(s: Structure) -> tuple[str, str]:
        style = marks[s.id].find("k:Style/k:LineStyle", ns)
        assert style is not None
        return style.findtext("k:color", namespaces=ns) or "", style.findtext(
            "k:width", namespaces=ns
        ) or ""

    def said(s: Structure) -> str:
        return marks[s.id].findtext("k:description", namespaces=ns) or ""

    assert line(hall)[1] == "3" and "NOT COUNTED" not in said(hall)
    assert line(depot) == ("FFBFBFBF", "1")  # grey, thin
    assert "NOT COUNTED, dropped candidate (did not persist): " in said(depot)
    assert line(shed)[1] == "1" and "NOT COUNTED, unconfirmed candidate: " in said(shed)
    assert line(shed)[0] != "FFBFBFBF"  # a live candidate keeps its first-seen colour
    # The style string is the placemark's <Style>, not a property of it.
    assert "OGR_STYLE" not in (out / "structures.kml").read_text(encoding="utf-8")
    about = document.findtext("k:description", namespaces=ns) or ""
    assert "1 new structure in all" in about  # the dropped one is in no count
    assert "Analysed " in about and "of the " in about


def test_failed_run_keeps_previous_outputs(run_result: RunResult, tmp_path: Path) -> None:
    out = tmp_path / "aoi"
    write_run_outputs(run_result, out, config=OutputConfig(report=False, chips=False))
    before = sorted(p.name for p in out.iterdir())
    grid = run_result.grid
    bad_grid = Grid(grid.crs, grid.transform, grid.width + 1, grid.height)
    bad_change = ChangeMap(
        bad_grid,
        np.zeros((grid.height, grid.width + 1), np.float32),
        np.zeros((grid.height, grid.width + 1), np.float32),
        np.zeros((grid.height, grid.width + 1), bool),
        3.0,
    )
    broken = RunResult(**{**run_result.__dict__, "change": bad_change})
    with pytest.raises(OutputError):
        write_run_outputs(broken, out, config=OutputConfig())
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["aoi"]  # no half-written temp folder


def test_a_run_started_earlier_does_not_replace_a_later_runs_outputs(
    run_result: RunResult, tmp_path: Path
) -> None:
    """A Dask worker stalled past the scheduler's timeout, its AOI done again elsewhere and the
    monitor's next run written, woke and wrote its year-old answer over them. The outputs of a
    run that started later stand; the earlier one's are not written, and it says so."""
    out = tmp_path / "aoi"
    config = OutputConfig(report=False, chips=False, imagery=False)

    def started(when: str) -> RunResult:
        return replace(run_result, provenance={**run_result.provenance, "started": when})

    write_run_outputs(started("2025-03-01T10:00:00+00:00"), out, config=config)
    later = (out / "run.json").read_bytes()
    with pytest.raises(OutputError, match=r"of a run started later \(2025-03-01T10:00:00"):
        write_run_outputs(started("2025-03-01T09:00:00+00:00"), out, config=config)
    assert (out / "run.json").read_bytes() == later
    assert [p.name for p in tmp_path.iterdir()] == ["aoi"]  # no half-written temp folder
    write_run_outputs(started("2025-03-01T11:00:00+00:00"), out, config=config)  # a later one
    assert json.loads((out / "run.json").read_text())["started"] == "2025-03-01T11:00:00+00:00"
    # Outputs "started" after now came from a clock running ahead: they block nothing.
    write_run_outputs(started("2999-01-01T00:00:00+00:00"), out, config=config)
    write_run_outputs(started("2025-03-01T12:00:00+00:00"), out, config=config)
    assert json.loads((out / "run.json").read_text())["started"] == "2025-03-01T12:00:00+00:00"


def test_failure_midway_leaves_no_folder(
    run_result: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the report step fails after GeoJSON, GeoPackage and COGs were written.
    def boom(*args: Any, **kwargs: Any) -> None:
        assert (kwargs.get("manifest") is not None) and any(tmp_path.glob(".aoi.*/changedet.gpkg"))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("changedet.outputs.write.write_report_html", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_run_outputs(run_result, tmp_path / "aoi", config=OutputConfig())
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_keeps_the_previous_outputs_and_says_what_to_do(
    run_result: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "aoi"
    write_run_outputs(run_result, out, config=OutputConfig(report=False, chips=False))
    before = sorted(p.name for p in out.iterdir())

    def full(*args: Any, **kwargs: Any) -> None:  # the disk fills while the report is written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("changedet.outputs.write.write_report_html", full)
    with pytest.raises(OutputError) as info:
        write_run_outputs(run_result, out, config=OutputConfig(chips=False))
    assert str(info.value) == (
        f"cannot write outputs to {out}: the disk is full; free some space there or pass "
        "another --out, then rerun"
    )
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["aoi"]


def _empty_kml(frame: Any, path: Any, **kwargs: Any) -> None:
    Path(path).write_text("")  # GDAL's KML driver on a full disk: an empty file, no error


def _failed_commit(frame: Any, path: Any, **kwargs: Any) -> None:
    if str(path).endswith(".gpkg"):
        raise pyogrio.errors.DataSourceError("Failed to commit transaction")
    _write_dataframe(frame, path, **kwargs)


_write_dataframe = pyogrio.write_dataframe


@pytest.mark.parametrize("gdal", [_empty_kml, _failed_commit], ids=["empty-kml", "gpkg-commit"])
def test_a_full_disk_is_said_whatever_gdal_said(
    gdal: Callable[..., None],
    run_result: RunResult,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a full --out GDAL wrote an empty KML without an error, or said 'Failed to commit
    transaction' or quoted SQL: the line said that, not the full disk. The file system is asked."""
    import shutil
    from types import SimpleNamespace

    out = tmp_path / "aoi"
    monkeypatch.setattr(pyogrio, "write_dataframe", gdal)
    full = SimpleNamespace(total=8 << 20, used=8 << 20, free=4096)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: full)
    with pytest.raises(OutputError) as info:
        write_run_outputs(run_result, out, config=OutputConfig(chips=False, report=False))
    assert str(info.value) == (
        f"cannot write outputs to {out}: the disk is full; free some space there or pass "
        "another --out, then rerun"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_gdal_failure_with_room_on_the_disk_keeps_gdals_words(
    run_result: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from types import SimpleNamespace

    monkeypatch.setattr(pyogrio, "write_dataframe", _failed_commit)
    roomy = SimpleNamespace(total=1 << 40, used=0, free=1 << 39)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: roomy)
    with pytest.raises(OutputError, match="Failed to commit transaction"):
        write_run_outputs(run_result, tmp_path / "aoi", config=OutputConfig(chips=False))


def test_a_bug_on_a_nearly_full_disk_is_not_called_a_full_disk(
    run_result: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any failure with under 32 MB free was said as a full disk, hiding a bug's own words."""
    import shutil
    from types import SimpleNamespace

    def broken(result: RunResult) -> str:
        raise KeyError("a bug, not the disk")

    monkeypatch.setattr("changedet.outputs.write.structures_csv", broken)
    full = SimpleNamespace(total=8 << 20, used=8 << 20, free=4096)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: full)
    with pytest.raises(KeyError, match="a bug, not the disk"):
        write_run_outputs(run_result, tmp_path / "aoi", config=OutputConfig(chips=False))


def test_libtiff_prints_nothing_of_its_own_when_a_cog_cannot_be_written(tmp_path: Path) -> None:
    """libtiff's default handler printed '_tiffWriteProc: No space left on device.' lines on
    stderr before the CLI's one line; the failure is still raised, as an OutputError."""
    import subprocess
    import sys

    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "import numpy as np\n"
        "from affine import Affine\n"
        "from changedet.errors import OutputError\n"
        "from changedet.models import Grid\n"
        "from changedet.outputs.fsio import write_cog\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # a write past the limit: EFBIG
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))\n"
        "a = np.random.default_rng(0).random((1024, 1024)).astype('float32')\n"
        "grid = Grid('EPSG:32639', Affine(10, 0, 500000, 0, -10, 4000000), 1024, 1024)\n"
        "try:\n"
        "    write_cog(Path(sys.argv[1]) / 'big.tif', a, grid)\n"
        "except OutputError:\n"
        "    print('raised')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "raised\n", "")


def test_missing_true_colour_bands_fail_before_writing(
    run_result: RunResult, tmp_path: Path
) -> None:
    b = run_result.before
    no_red = Composite(
        b.grid, ("blue", "green", "nir", "swir16"), b.period, b.reflectance, b.count, b.source_date
    )
    broken = RunResult(**{**run_result.__dict__, "before": no_red})
    with pytest.raises(OutputError, match="red"):
        write_run_outputs(broken, tmp_path / "aoi", config=OutputConfig())
    assert list(tmp_path.iterdir()) == []


def test_the_evidence_behind_kind_is_published(make_run_result: Callable[..., RunResult]) -> None:
    result = make_run_result()
    hall = result.structures[0]
    told = replace(
        hall,
        evidence={
            "spectral_flattening": 0.31234,
            "bsi_gain": -0.2,
            "brightness_gain": 0.4,
            "width_px": 4.5,
        },
    )
    props = structure_properties(told, result.grid.crs)
    assert (props["flattening"], props["soil_gain"], props["width_px"]) == (0.312, 0.4, 4.5)
    blank = structure_properties(replace(hall, evidence={}), result.grid.crs)
    assert (blank["flattening"], blank["soil_gain"], blank["width_px"]) == (None, None, None)


def test_the_readme_states_the_detection_limits_the_outputs_state() -> None:
    """Every figure of run.json's detection notes is in the README's section that lists them, so
    the README cannot tell an analyst other limits than the outputs do."""
    import re

    from changedet.outputs.manifest import DETECTION_NOTES

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Detection limits as the outputs state them")[1].split("\n### ")[0]
    figures = {f for note in DETECTION_NOTES for f in re.findall(r"\d[\d.,]*(?: %)?", note)}
    missing = sorted(f for f in figures if f not in section)
    assert not missing, f"README's detection limits lack {missing}"


def test_no_period_is_reported_clear_over_more_than_the_aoi(make_run_result: Any) -> None:
    """Pixels whose centre the polygon holds can add up to more than its area along its edge;
    here an AOI of 0.5 km² on 0.8 km² of such pixels."""
    from changedet.core.coverage import measure_coverage

    result = make_run_result()
    cov = result.coverage
    again = measure_coverage(
        cov.analysed | ~cov.analysed, result.before, (result.before, result.after), aoi_area_m2=5e5
    )
    assert [p.clear_km2 for p in again.periods] == [0.5, 0.5]
    assert again.analysed_km2 == 0.5 and again.share == 1.0
    small = measure_coverage(
        cov.analysed, result.before, (result.before, result.after), aoi_area_m2=225.0
    )
    assert small.aoi_km2 == 0.000225  # to the m², not rounded to 200 m²


def test_a_full_disk_under_the_geopackage_is_said_in_a_few_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GDAL quotes the whole SQL script that failed (5.7 kB on one line) and ends with
    SQLite's 'database or disk is full': the line says the disk is full and what to do."""
    import pyogrio
    from shapely.geometry import box

    from changedet.errors import OutputError
    from changedet.outputs.write import _write_layer

    script = "CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL);" * 100

    def full(*args: object, **kwargs: object) -> None:
        raise pyogrio.errors.DataSourceError(
            f"sqlite3_exec({script}) failed: database or disk is full"
        )

    monkeypatch.setattr(pyogrio, "write_dataframe", full)
    rows = [(box(0, 0, 1, 1), {"id": "a"})]
    kw = {"crs": "EPSG:32639", "geometry_type": "Polygon", "dtypes": {}}
    with pytest.raises(OutputError) as info:
        _write_layer(tmp_path / "changedet.gpkg", "aoi", rows, ["id"], **kw)  # type: ignore[arg-type]
    assert str(info.value) == (
        "cannot write layer 'aoi' to changedet.gpkg: the disk is full; free some space there or "
        "pass another --out, then rerun"
    )


def test_a_file_size_limit_is_the_machines_trouble() -> None:
    """Said with what to do, not as 'unexpected OSError ... report it'."""
    import errno

    from changedet.errors import machine_trouble

    big = machine_trouble(OSError(errno.EFBIG, "File too large"))
    assert big is not None and "ulimit -f unlimited" in big


def test_counts_chart_over_years_labels_few_periods_and_its_stamp_hides_no_bar(
    make_run_result: Callable[..., RunResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five years of months labelled every period (60 overlapping labels), and the SYNTHETIC
    stamp sat on the first bars: now at most 24 labels, January's among them, and the stamp
    above the axes."""
    from changedet.outputs import figures

    months = [(2020 + k // 12, k % 12 + 1) for k in range(60)]
    counts = tuple(
        PeriodCount(
            Period(date(y, m, 1), date(y + m // 12, m % 12 + 1, 1), f"{y}-{m:02d}"),
            new_confirmed=1,
            cumulative=k + 1,
            cumulative_low=k + 1,
            cumulative_high=k + 1,
            clear_fraction=0.9,
        )
        for k, (y, m) in enumerate(months)
    )
    result = replace(make_run_result(synthetic=True), counts=counts, coverage=None)
    drawn: list[Any] = []
    monkeypatch.setattr(figures, "_fig_png", lambda fig: drawn.append(fig) or b"")
    figures.counts_chart(result)
    (fig,) = drawn
    ax, ax2 = fig.axes
    shown = [t.get_text() for t in ax2.get_xticklabels() if t.get_visible()]
    assert 5 <= len(shown) <= 24, shown
    assert {"2020-01", "2021-01", "2024-01"} <= set(shown)
    (stamp,) = [t for t in ax.texts if t.get_text() == "SYNTHETIC data"]
    assert stamp.get_position()[1] > 1.0  # above the plot area, in axes coordinates
    # 64 quarters: a label every 4, each a first quarter (every 3 fell on Q1, Q4, Q3, ...)
    starts = [date(2008 + k // 4, 3 * (k % 4) + 1, 1) for k in range(65)]
    quarters = tuple(
        PeriodCount(
            Period(starts[k], starts[k + 1], f"{starts[k].year}-Q{k % 4 + 1}"),
            new_confirmed=0,
            cumulative=0,
            cumulative_low=0,
            cumulative_high=0,
            clear_fraction=0.9,
        )
        for k in range(64)
    )
    drawn.clear()
    figures.counts_chart(replace(result, counts=quarters))
    (fig,) = drawn
    shown = [t.get_text() for t in fig.axes[1].get_xticklabels() if t.get_visible()]
    assert len(shown) == 16 and all(label.endswith("-Q1") for label in shown), shown
