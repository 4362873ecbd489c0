"""Across the antimeridian: an AOI there gets the UTM zone of its centroid (60, not 1, 30 or 31),
its run writes RFC 7946 output split at ±180° (no polygon spanning the globe), and the sample
generator works there too."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import shape

from changedet.aoi import grid_for, load_aois, split_at_antimeridian
from changedet.config import load_config
from changedet.lab.fakes import scenes_for_stack
from changedet.models import Stack
from changedet.outputs.write import write_run_outputs
from changedet.pipeline import PipelineIO, run_aoi

# A small AOI on Taveuni (Fiji), written as GIS tools often do: one ring jumping from +179.99
# to -179.995. Its centroid is at 179.9975° E, in UTM zone 60 south.
W, E, S, N = 179.99, -179.995, -16.805, -16.795
RING = [[W, S], [E, S], [E, N], [W, N], [W, S]]


def _aoi_file(path: Path) -> Path:
    feature = {
        "type": "Feature",
        "properties": {"id": "taveuni"},
        "geometry": {"type": "Polygon", "coordinates": [RING]},
    }
    path.write_text(json.dumps(feature))
    return path


def _assert_rfc7946_lonlat(geometry: dict[str, Any]) -> None:
    """Every part inside ±180°, none wider than a few hundredths of a degree (a part that
    jumps across the antimeridian would span ~360°), valid, exterior counterclockwise."""
    geom = shape(geometry)
    assert geom.is_valid, shapely.is_valid_reason(geom)
    for part in getattr(geom, "geoms", [geom]):
        xmin, ymin, xmax, ymax = part.bounds
        assert -180.0 <= xmin <= xmax <= 180.0 and xmax - xmin < 0.05, part.bounds
        assert S - 0.01 < ymin <= ymax < N + 0.01
        if part.geom_type == "Polygon":
            assert part.exterior.is_ccw


def test_an_antimeridian_run_is_on_zone_60_and_writes_rfc7946_split_geometry(
    tmp_path: Path,
    make_stack: Callable[..., Stack],
    fake_io: Callable[..., PipelineIO],
) -> None:
    (aoi,) = load_aois(_aoi_file(tmp_path / "taveuni.geojson"))
    grid = grid_for(aoi)
    assert grid.crs == "EPSG:32760"
    # A roof built in April right on the antimeridian: the column where 180° runs mid-AOI.
    x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(180.0, -16.8)
    col = round((x - grid.transform.c) / grid.res)
    row = round((grid.transform.f - y) / grid.res)
    roof = (date(2023, 4, 1), (row - 3, col - 4, 6, 8))
    dates = [date(2023, m, d) for m in range(1, 9) for d in (3, 18)]
    stack = make_stack(grid, dates=dates, squares=[roof])
    # Catalogs give such scenes' footprints split at 180° (as the AOI): so does this fake one.
    scenes = [
        replace(scene, footprint=split_at_antimeridian(scene.footprint))
        for scene in scenes_for_stack(stack)
    ]
    io = replace(fake_io(stack, scenes=scenes), write=write_run_outputs)
    base = load_config(None)
    config = replace(
        base,
        time=replace(base.time, start=date(2023, 1, 1), end=date(2023, 7, 31)),
        change=replace(base.change, coregister=False),
    )
    summary = run_aoi(aoi, config, out_root=tmp_path / "out", io=io)
    assert summary.n_confirmed == 1

    folder = tmp_path / "out" / "taveuni"
    structures = json.loads((folder / "structures.geojson").read_text())
    (feature,) = structures["features"]
    assert feature["geometry"]["type"] == "MultiPolygon"  # cut in two at 180°
    _assert_rfc7946_lonlat(feature["geometry"])
    lons = {xy[0] for poly in feature["geometry"]["coordinates"] for xy in poly[0]}
    assert {180.0, -180.0} <= lons  # the cut runs along the antimeridian itself
    # The two parts cover the roof: 48 px of 100 m².
    area_m2 = shapely.area(
        shapely.transform(
            shape(feature["geometry"]),
            lambda xy: np.column_stack(
                Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(
                    np.where(xy[:, 0] < 0, xy[:, 0] + 360.0, xy[:, 0]), xy[:, 1]
                )
            ),
        )
    )
    assert area_m2 == pytest.approx(4800.0, rel=1e-3)
    berms = json.loads((folder / "berms.geojson").read_text())
    for berm in berms["features"]:
        _assert_rfc7946_lonlat(berm["geometry"])
    run = json.loads((folder / "run.json").read_text())
    assert run["grid"]["crs"] == "EPSG:32760"
    _assert_rfc7946_lonlat(run["aoi"]["geometry"])
    west, south, east, north = run["aoi"]["bbox"]  # RFC 7946 §5.2: across 180°, west > east
    assert 179.0 < west <= 180.0 and -180.0 <= east < -179.0 and south < north


def test_synth_sample_works_across_the_antimeridian(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from changedet.cli import main

    aoi_path = _aoi_file(tmp_path / "taveuni.geojson")
    out = tmp_path / "tiles"
    result = CliRunner().invoke(
        main, ["synth", "sample", "--aoi", str(aoi_path), "--out", str(out), "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    items = sorted(out.rglob("S2*_L2A.json"))
    assert items
    for path in items[:3]:
        item = json.loads(path.read_text())
        assert item["properties"]["proj:epsg"] == 32760
        _assert_rfc7946_lonlat_loose(item["geometry"])
        west, _, east, _ = item["bbox"]
        assert 179.0 < west <= 180.0 and -180.0 <= east < -179.0  # RFC 7946 §5.2


def _assert_rfc7946_lonlat_loose(geometry: dict[str, Any]) -> None:
    geom = shape(geometry)
    for part in getattr(geom, "geoms", [geom]):
        xmin, _, xmax, _ = part.bounds
        assert -180.0 <= xmin <= xmax <= 180.0 and xmax - xmin < 1.0, part.bounds
