"""The semi-real OSCD series generator and the object/first-seen scoring."""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import shapely

from changedet.aoi import grid_for, load_aois
from changedet.core.track import footprint_geometry
from changedet.errors import OutputError
from changedet.lab.score import score_structures
from changedet.lab.series import (
    TruthRegion,
    _ground,
    acquisition_dn,
    load_truth,
    make_oscd_series,
    render_acquisition,
    series_stack,
    truth_labels,
    write_oscd_series,
)
from changedet.models import Grid, Structure

CITY = "paris"  # the smallest labelled city


@pytest.fixture(scope="module")
def city(oscd_root: Path):  # type: ignore[no-untyped-def]
    from changedet.lab.oscd import load_city

    return load_city(oscd_root, CITY, with_label=True)


@pytest.fixture(scope="module")
def series(city):  # type: ignore[no-untyped-def]
    return make_oscd_series(city, seed=3, months=6, scenes_per_month=2)


def test_the_series_grid_of_bands_in_degrees_or_in_metres() -> None:
    """OSCD ships EPSG:4326 bands; a copy reprojected to UTM crashed (its metres were read as
    degrees to choose the zone)."""
    from changedet.lab.series import _utm_grid

    degrees = Grid.from_origin("EPSG:4326", 2.30, 48.85, 1e-4, 400, 400)
    metres = Grid.from_origin("EPSG:32631", 450_003.0, 5_411_007.0, 10.0, 300, 280)
    for src in (degrees, metres):
        grid = _utm_grid(src)
        assert grid.crs == "EPSG:32631" and grid.res == 10.0
    inside = _utm_grid(metres)
    assert inside.bounds == (450_010.0, 5_408_210.0, 453_000.0, 5_411_000.0)  # snapped inward


def test_series_scenes_are_named_by_their_mgrs_tile() -> None:
    from changedet.lab.series import mgrs_tile

    # Real tiles: the upper-left corner of each tile's 10 m grid (proj:transform) in the Earth
    # Search and Planetary Computer items of ../shared/data/stac-samples (all 45 there agree),
    # north and south of the equator, odd and even zones.
    for epsg, left, top, tile in (
        (32613, 399_960, 4_500_000, "13TDE"),
        (32720, 600_000, 3_300_040, "20EPT"),
        (32724, 300_000, 9_600_040, "24MUA"),
        (32658, 600_000, 6_000_000, "58UFE"),
        (32659, 300_000, 6_300_000, "59VLC"),
    ):
        grid = Grid.from_origin(f"EPSG:{epsg}", left + 54_000, top - 54_000, 10.0, 100, 100)
        assert mgrs_tile(grid) == tile


def test_series_plan_regions_dates_and_switch(series) -> None:  # type: ignore[no-untyped-def]
    assert series.grid.is_projected_metres and series.grid.res == 10.0
    assert series.grid.transform.c % 10 == 0 and series.grid.transform.f % 10 == 0
    assert len(series.truth) >= 10  # paris has 14 components of >= 10 px
    assert all(r.n_pixels >= 10 for r in series.truth)
    # Every region appears after the two baseline months and before the last month.
    assert all(date(2023, 3, 1) <= r.appeared < date(2023, 6, 1) for r in series.truth)
    assert series.switch_date == date(2023, 4, 1)
    assert {a.baseline for a in series.acquisitions if a.when.date() < series.switch_date} == {
        "03.01"
    }
    assert {a.baseline for a in series.acquisitions if a.when.date() >= series.switch_date} == {
        "04.00"
    }
    # The region raster agrees with the truth list.
    ids, counts = np.unique(series.regions[series.regions > 0], return_counts=True)
    assert ids.tolist() == [r.region_id for r in series.truth]
    assert counts.tolist() == [r.n_pixels for r in series.truth]


def test_regions_show_after_pixels_only_once_revealed(series) -> None:  # type: ignore[no-untyped-def]
    clear = [a.index for a in series.acquisitions if a.cloud_cover == 0]
    first, last = clear[0], clear[-1]
    r = max(series.truth, key=lambda r: r.n_pixels)
    mask = series.regions == r.region_id
    b0, b1 = render_acquisition(series, first)[0], render_acquisition(series, last)[0]
    d_before = np.abs(np.nanmean(b0[:, mask], axis=1) - np.nanmean(series.before[:, mask], axis=1))
    d_after = np.abs(np.nanmean(b1[:, mask], axis=1) - np.nanmean(series.after[:, mask], axis=1))
    assert (
        series.acquisitions[first].when.date() < r.appeared <= series.acquisitions[last].when.date()
    )
    assert d_before.max() < 0.03 and d_after.max() < 0.03


def test_calm_switches_named_nuisances_off_and_keeps_every_other_draw(city, series) -> None:  # type: ignore[no-untyped-def]
    calm = make_oscd_series(city, seed=3, months=6, scenes_per_month=2, calm=("shift", "cloud"))
    assert calm.truth == series.truth and calm.switch_date == series.switch_date
    assert any(a.shift_px != (0.0, 0.0) for a in series.acquisitions)
    assert any(a.cloud_cover > 0 for a in series.acquisitions)
    for full, still in zip(series.acquisitions, calm.acquisitions, strict=True):
        assert still.shift_px == (0.0, 0.0) and still.cloud_cover == still.thin_cloud == 0.0
        assert (still.when, still.gain, still.haze) == (full.when, full.gain, full.haze)
    _, _, opacity = render_acquisition(calm, 0)
    assert not opacity.any()
    flat = make_oscd_series(city, seed=3, months=6, scenes_per_month=2, calm=("radiometry",))
    assert all(set(a.gain) == {1.0} and a.haze == 0.0 for a in flat.acquisitions)
    with pytest.raises(ValueError, match="unknown nuisances"):
        make_oscd_series(city, calm=("fog",))


def test_calm_season_keeps_the_ground_the_same_all_year(city, series) -> None:  # type: ignore[no-untyped-def]
    # Both days lie in the baseline months, before any region appears: only the season differs.
    winter, spring = date(2023, 1, 2), date(2023, 2, 27)
    assert min(t.appeared for t in series.truth) > spring
    still = make_oscd_series(city, seed=3, months=6, scenes_per_month=2, calm=("season",))
    assert np.array_equal(_ground(still, winter)[0], _ground(still, spring)[0])
    assert not np.allclose(_ground(series, winter)[0], _ground(series, spring)[0])


def test_rendering_is_deterministic(series) -> None:  # type: ignore[no-untyped-def]
    a, b = acquisition_dn(series, 1), acquisition_dn(series, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["blue"].shape == series.grid.shape and a["swir16"].shape == series.grid.scaled(2).shape


def test_baseline_switch_offsets_dn_and_harmonises_back(series) -> None:  # type: ignore[no-untyped-def]
    old = next(a.index for a in series.acquisitions if a.baseline == "03.01" and a.cloud_cover == 0)
    new = next(a.index for a in series.acquisitions if a.baseline == "04.00" and a.cloud_cover == 0)
    dn_old, dn_new = acquisition_dn(series, old)["red"], acquisition_dn(series, new)["red"]
    far = series.regions == 0
    # Same ground, ~1000 DN apart: the fake jump a reader must remove.
    assert np.median(dn_new[far].astype(float) - dn_old[far]) == pytest.approx(1000, abs=60)
    stack = series_stack(series, [old, new])
    red = stack.band("red")
    assert abs(float(np.nanmedian(red[1][far] - red[0][far]))) < 0.006
    assert stack.scene_ids[0] == (series.acquisitions[old].scene_id,)


def test_write_series_catalog_cogs_truth_and_aoi(  # type: ignore[no-untyped-def]
    city, tmp_path: Path, oscd_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pystac
    import rasterio

    # A relative folder, as `synth oscd-series --out series` gives it: the catalog and every
    # item's JSON were laid out from the working folder, not in it.
    monkeypatch.chdir(tmp_path)
    summary = write_oscd_series(
        oscd_root, CITY, Path("series"), seed=1, months=4, scenes_per_month=1
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]
    out = tmp_path / "series"
    assert (out / "catalog.json").is_file() and (
        out / "sentinel-2-l2a" / "collection.json"
    ).is_file()
    assert summary.n_acquisitions == 4 and summary.n_regions >= 10
    assert "SYNTHETIC" in str(summary) and f"{summary.n_regions} labelled" in str(summary)
    assert "razed" not in str(summary)  # none asked for
    # The run to make of it spans the series, not the run's default window.
    assert f"--start {summary.start} --end {summary.end}" in str(summary)
    assert (summary.start, summary.end) == (date(2023, 1, 1), date(2023, 4, 30))
    cat = pystac.Catalog.from_file(str(summary.catalog))
    items = sorted(cat.get_items(recursive=True), key=lambda i: i.datetime)
    assert len(items) == 4
    # generated acquisitions say so: a run on them is tagged SYNTHETIC (catalog.items)
    assert all(i.properties["changedet:synthetic"] is True for i in items)
    keys = set(items[0].assets)
    assert keys == {"blue", "green", "red", "nir", "swir16", "swir22", "scl"}
    offsets = [i.assets["red"].extra_fields["raster:bands"][0]["offset"] for i in items]
    assert offsets == [0.0, 0.0, -0.1, -0.1]  # switch at month 2 of 4
    assert [i.properties["s2:processing_baseline"] for i in items] == [
        "03.01",
        "03.01",
        "04.00",
        "04.00",
    ]
    with rasterio.open(items[-1].assets["swir16"].get_absolute_href()) as src:
        assert src.crs.to_epsg() == summary.grid.epsg and src.res == (20.0, 20.0)
        assert src.nodata == 0 and src.dtypes[0] == "uint16"
    # AOI round trip reproduces the series grid exactly (no second resampling in `run`).
    (aoi,) = load_aois(summary.aoi)
    assert grid_for(aoi) == summary.grid
    truth = load_truth(summary.truth, summary.grid)
    assert len(truth) == summary.n_regions
    raster = truth_labels(truth, summary.grid)
    written = json.loads(summary.truth.read_text())
    assert sum(f["properties"]["n_pixels"] for f in written["features"]) == int((raster > 0).sum())
    # An earlier series is replaced; a folder holding anything else is not (it was emptied).
    again = write_oscd_series(oscd_root, CITY, out, seed=2, months=4, scenes_per_month=1)
    assert again.n_acquisitions == 4
    (out / "thesis.txt").write_text("mine")
    with pytest.raises(OutputError, match="more than an earlier synthetic series"):
        write_oscd_series(oscd_root, CITY, out, seed=3, months=4, scenes_per_month=1)
    assert (out / "thesis.txt").read_text() == "mine"


@pytest.mark.parametrize("name", [CITY, "rennes"])  # rennes: an odd number of 10 m rows
def test_in_memory_stack_is_what_the_reader_reads(
    name: str, tmp_path: Path, oscd_root: Path
) -> None:
    """series_stack (used by the series benchmark) equals the real COG reader on the written series:
    the same resampling, harmonisation, roof rule, dilated masks and dropped cloudy dates."""
    from changedet.catalog.search import search_scenes
    from changedet.config import Config
    from changedet.lab.oscd import load_city
    from changedet.read.stack import read_stack

    summary = write_oscd_series(oscd_root, name, tmp_path / "s", seed=2, months=4)
    assert name == CITY or summary.grid.height % 2 == 1
    (aoi,) = load_aois(summary.aoi)
    config = Config()
    catalog = dataclasses.replace(config.catalog, url=str(summary.catalog))
    found = search_scenes(
        aoi, catalog, start=summary.start, end=summary.end, bands=(*config.read.bands, "scl")
    )
    assert found.scenes and all(scene.synthetic for scene in found.scenes)
    read = read_stack(
        found.scenes,
        summary.grid,
        bands=config.read.bands,
        aoi_mask=np.ones(summary.grid.shape, bool),
        read_config=dataclasses.replace(config.read, cache_dir=""),
        mask_config=config.mask,
    )
    series = make_oscd_series(load_city(oscd_root, name, with_label=True), seed=2, months=4)
    mine = series_stack(series, [a.index for a in series.acquisitions], config=config)
    assert mine.times == read.stack.times and mine.bands == read.stack.bands
    assert any(a.cloud_cover > 0.5 for a in series.acquisitions)  # some dates are dropped
    assert np.array_equal(mine.clear, read.stack.clear)
    both = np.isfinite(mine.reflectance) & np.isfinite(read.stack.reflectance)
    assert np.array_equal(both, np.isfinite(read.stack.reflectance))
    # The reader resamples DNs as integers: within one DN (1e-4) of resampling reflectance.
    assert np.abs(mine.reflectance[both] - read.stack.reflectance[both]).max() <= 1e-4


GRID = Grid.from_origin("EPSG:32631", 400_000.0, 5_000_000.0, 10.0, 30, 30)


def _mask(r0: int, c0: int, h: int, w: int) -> np.ndarray:
    m = np.zeros(GRID.shape, bool)
    m[r0 : r0 + h, c0 : c0 + w] = True
    return m


def test_score_structures_known_answer() -> None:
    t1, t2, t3 = _mask(2, 2, 4, 4), _mask(10, 10, 4, 4), _mask(20, 20, 3, 3)
    truth = [
        TruthRegion(i + 1, d, int(m.sum()), m.sum() * 100.0, footprint_geometry(m, GRID))
        for i, (m, d) in enumerate(
            [(t1, date(2023, 3, 10)), (t2, date(2023, 5, 2)), (t3, date(2023, 6, 1))]
        )
    ]
    s1 = _mask(2, 3, 4, 4)  # IoU 12/20 = 0.6 with t1
    s2 = _mask(10, 13, 4, 4)  # IoU 4/28 = 0.14 with t2: no match
    s3 = _mask(25, 2, 2, 2)  # nothing there
    structures = [
        Structure(
            "a", footprint_geometry(s1, GRID), 1600, 0.9, date(2023, 3, 1), date(2023, 5, 1), True
        ),
        Structure(
            "b", footprint_geometry(s2, GRID), 1600, 0.9, date(2023, 4, 1), date(2023, 6, 1), True
        ),
        Structure(
            "c", footprint_geometry(s3, GRID), 400, 0.9, date(2023, 4, 1), date(2023, 6, 1), True
        ),
        Structure(
            "d", footprint_geometry(t3, GRID), 900, 0.2, date(2023, 5, 1), date(2023, 6, 1), False
        ),
    ]
    labels = np.zeros(GRID.shape, np.int32)
    for i, m in enumerate([s1, s2, s3, t3]):
        labels[m] = i + 1
    raster = truth_labels(truth, GRID)
    assert (raster > 0).sum() == 16 + 16 + 9
    score = score_structures(structures, labels, truth, raster, city="x")
    assert (score.tp, score.fp, score.fn, score.first_seen_hits) == (1, 2, 2, 1)
    assert score.f1 == pytest.approx(2 * (1 / 3) * (1 / 3) / (2 / 3))
    # Counting the unconfirmed candidate too adds a match whose interval misses its date.
    loose = score_structures(structures, labels, truth, raster, confirmed_only=False)
    assert (loose.tp, loose.first_seen_hits) == (2, 1) and loose.first_seen_accuracy == 0.5
    # Interval widths: a 2023-03-01 .. 05-01 (61 days); d 2023-05-01 .. 06-01 (31 days).
    assert (score.mean_interval_days, loose.mean_interval_days) == (61.0, 46.0)
    pooled = score + loose
    assert (pooled.tp, pooled.matched, pooled.city) == (3, 3, "pooled")
    assert (pooled.interval_days, pooled.bounded) == (153, 3)
    assert shapely.box(*GRID.bounds).contains(truth[0].geometry)
