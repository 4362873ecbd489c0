"""Synthetic sample generator: determinism, DN convention, truth, SCL, STAC catalog, grid."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from shapely.geometry import box

from changedet.aoi import grid_for, load_aois
from changedet.errors import OutputError
from changedet.lab.sample import (
    PRESETS,
    mgrs_tile,
    rebase_items,
    sample_scene,
    write_sample,
)
from changedet.lab.scene import (
    PAD,
    AcquisitionPlan,
    SynthScene,
    block_mean,
    build_scene,
    coverage_rect,
    plan_acquisitions,
    render,
    sun_position,
    to_dn,
)
from changedet.models import AOI

FLAT = (1.0,) * 6
ZERO = (0.0,) * 6


def _plan(day: date, **kw: object) -> AcquisitionPlan:
    base: dict[str, object] = {
        "when": datetime(day.year, day.month, day.day, 7, 5, 30, tzinfo=UTC),
        "platform": "sentinel-2a",
        "cloud_cover": 0.0,
        "cloud_height_m": 800.0,
        "cirrus": False,
        "shift_px": (0.0, 0.0),
        "gain": FLAT,
        "offset": ZERO,
        "wetness": 0.0,
    }
    base.update(kw)
    return AcquisitionPlan(**base)  # type: ignore[arg-type]


PLANS = (
    _plan(date(2023, 6, 10)),
    _plan(date(2023, 8, 9), cloud_cover=0.35),
    _plan(date(2023, 10, 8), shift_px=(0.4, -0.3)),
    _plan(date(2023, 12, 7), nodata_edge=True),
)


def _tiny_scene(seed: int = 3) -> SynthScene:
    return build_scene(
        shape=(96, 96),
        plans=PLANS,
        seed=seed,
        lon=51.67,
        lat=35.62,
        n_new=4,
        n_existing=2,
        n_compounds=1,
        expansion=(date(2023, 8, 1), date(2023, 10, 31)),
    )


@pytest.fixture(scope="module")
def tiny() -> tuple[SynthScene, list]:
    scene = _tiny_scene()
    return scene, [render(scene, t) for t in range(len(PLANS))]


def _roof(scene: SynthScene, b) -> np.ndarray:  # type: ignore[no-untyped-def]
    """(H, W) fractional roof coverage of building b on the window."""
    full = np.zeros(scene.canvas_shape)
    r0, c0, patch = b.roof_patch
    full[r0 : r0 + patch.shape[0], c0 : c0 + patch.shape[1]] = patch
    H, W = scene.shape
    return full[PAD : PAD + H, PAD : PAD + W]


# ----------------------------------------------------------------------------- pure scene model


def test_scene_and_render_are_deterministic(tiny: tuple[SynthScene, list]) -> None:
    scene, rendered = tiny
    again = _tiny_scene()
    assert [b.id for b in again.buildings] == [b.id for b in scene.buildings]
    for t in range(len(PLANS)):
        r = render(again, t)
        assert np.array_equal(r.refl10, rendered[t].refl10)
        assert np.array_equal(r.refl20, rendered[t].refl20)
        assert np.array_equal(r.scl, rendered[t].scl)
    other = render(_tiny_scene(seed=4), 0)
    assert not np.array_equal(other.refl10, rendered[0].refl10)


def test_dn_convention_known_answers() -> None:
    refl = np.array([[0.0, 0.1234, -0.2, 0.5]])
    valid = np.array([[True, True, True, False]])
    dn = to_dn(refl, valid)
    assert dn.dtype == np.uint16
    assert dn.tolist() == [[1000, 2234, 1, 0]]  # +1000 offset; clipped to 1; nodata 0
    back = dn[0, :2] * 0.0001 - 0.1  # raster:bands scale/offset
    assert np.allclose(back, refl[0, :2], atol=0.5e-4)
    # Earth Search's harmonised files: the offset already shifted back, negatives lost.
    assert to_dn(refl, valid, add_offset=False).tolist() == [[1, 1234, 1, 0]]


def test_new_structures_appear_at_their_dates(tiny: tuple[SynthScene, list]) -> None:
    scene, rendered = tiny
    new = scene.new_buildings
    assert len(new) >= 3
    for b in new:
        assert b.appear_index in (1, 2)  # the plan dates inside the expansion window
        core = _roof(scene, b) >= 0.8
        assert core.sum() >= 2, "structures must be bigger than a pixel"
        before, after = rendered[0], rendered[2]  # both cloud-free
        clear = (before.cloud < 0.05) & (after.cloud < 0.05) & (after.shadow < 0.05)
        px = core & clear
        gain = after.refl10[:, px].mean(axis=1) - before.refl10[:, px].mean(axis=1)
        assert np.all(gain[:3] > 0.04), f"{b.id} not brighter in the visible bands: {gain}"
        ndvi = [
            ((r.refl10[3] - r.refl10[2]) / (r.refl10[3] + r.refl10[2]))[px].mean()
            for r in (before, after)
        ]
        assert ndvi[1] < ndvi[0], "roofs have a lower NDVI than the soil they replace"
    # Existing buildings are there from the start: no such jump.
    for b in scene.buildings:
        if b.kind == "existing" and not b.scl_misfire:
            core = _roof(scene, b) >= 0.8
            diff = rendered[2].refl10[2][core].mean() - rendered[0].refl10[2][core].mean()
            assert abs(diff) < 0.03


def test_scl_follows_the_cloud_mask(tiny: tuple[SynthScene, list]) -> None:
    scene, rendered = tiny
    r = rendered[1]
    a20 = block_mean(r.cloud.astype(np.float64))
    misfire = np.zeros_like(a20, dtype=bool)
    for b in scene.buildings:
        if b.scl_misfire:
            misfire |= block_mean(_roof(scene, b)) >= 0.5
    thick = (a20 >= 0.5) & ~misfire
    assert thick.sum() > 20
    assert np.all(r.scl[thick] == 9)
    assert np.all(r.scl[(a20 >= 0.2) & (a20 < 0.5) & ~misfire] == 8)
    s20 = block_mean(r.shadow.astype(np.float64) * (1 - r.cloud))
    free = (a20 < 0.02) & (s20 < 0.05) & ~misfire
    assert free.sum() > 100
    assert not np.isin(r.scl[free], (3, 8, 9)).any()
    # Shadows are displaced from the clouds, not under them.
    shadowed = (s20 >= 0.25) & (a20 < 0.2)
    assert shadowed.sum() > 5 and np.all(r.scl[shadowed] == 3)
    # Clear dates: no cloud classes except the misfiring roof; the no-data wedge is 0 everywhere.
    assert not np.isin(rendered[0].scl[~misfire], (8, 9)).any()
    edge = rendered[3]
    assert (edge.scl[~edge.valid20] == 0).all() and (~edge.valid20).sum() > 20
    assert (edge.scl[edge.valid20] != 0).all()


def test_bright_roof_is_called_cloud_on_every_date(tiny: tuple[SynthScene, list]) -> None:
    scene, rendered = tiny
    misfires = [b for b in scene.buildings if b.scl_misfire]
    assert len(misfires) == 1 and misfires[0].kind == "existing"
    roof20 = block_mean(_roof(scene, misfires[0])) >= 0.5
    assert roof20.sum() >= 2
    for r in rendered:
        valid = roof20 & r.valid20
        assert valid.any()
        assert np.isin(r.scl[valid], (8, 9)).all()


def test_misregistration_shift_is_applied() -> None:
    from skimage.registration import phase_cross_correlation

    scene = _tiny_scene()
    plans = (_plan(date(2023, 6, 10)), _plan(date(2023, 6, 20), shift_px=(0.5, -0.75)))
    shifted = SynthScene(**{**scene.__dict__, "plans": plans})
    a, b = render(shifted, 0).refl10[2], render(shifted, 1).refl10[2]
    found, _, _ = phase_cross_correlation(a, b, upsample_factor=20)
    assert found == pytest.approx((-0.5, 0.75), abs=0.15)


def test_plan_acquisitions_shape() -> None:
    plans = plan_acquisitions(
        np.random.default_rng(5), start=date(2023, 6, 1), end=date(2024, 6, 30)
    )
    months = {(p.day.year, p.day.month) for p in plans}
    assert len(months) == 13 and len(plans) == 16  # one a month + 3 winter re-takes
    assert all((p.day - date(2023, 6, 2)).days % 5 == 0 for p in plans)  # 5-day revisit grid
    assert sum(p.duplicate for p in plans) == 1 and sum(p.nodata_edge for p in plans) == 1
    assert sum(p.offset_applied for p in plans) == 3
    assert not any(p.offset_applied and p.duplicate for p in plans)
    mags = sorted(math.hypot(*p.shift_px) for p in plans)
    assert 0.85 <= mags[-1] <= 1.15 and mags[-2] <= 0.5
    assert sum(p.cloud_cover > 0.4 for p in plans) == 3


def test_coverage_rect_area_is_exact() -> None:
    _, _, patch = coverage_rect((20.0, 20.0), (3.0, 2.0), 30.0)
    assert patch.sum() == pytest.approx(6.0 * 4.0, rel=0.02)


def test_sun_position_matches_a_real_item() -> None:
    # S2A_13TDE_20231008_0_L2A (Earth Search): view:sun_azimuth 164.12, view:sun_elevation 42.62
    az, el = sun_position(datetime(2023, 10, 8, 18, 2, 55, tzinfo=UTC), -105.53, 40.15)
    assert az == pytest.approx(164.12, abs=1.5)
    assert el == pytest.approx(42.62, abs=1.0)


def test_mgrs_tile_known_answers() -> None:
    assert mgrs_tile(51.67, 35.62) == "39SWV"
    assert mgrs_tile(50.875, 35.625) == "39SVV"
    assert mgrs_tile(-105.53, 40.15) == "13TDE"


def test_rebase_items() -> None:
    fc = {"features": [{"assets": {"a": {"href": "./x/B02.tif"}}, "links": []}]}
    out = rebase_items(fc, "http://127.0.0.1:9/s")
    assert out["features"][0]["assets"]["a"]["href"] == "http://127.0.0.1:9/s/x/B02.tif"
    assert fc["features"][0]["assets"]["a"]["href"] == "./x/B02.tif"  # input untouched
    local = rebase_items(fc, "/data/khojir")
    assert local["features"][0]["assets"]["a"]["href"] == "/data/khojir/x/B02.tif"


# ----------------------------------------------------------------------------- written sample


SMALL = AOI(id="tiny", name="tiny", geometry=box(51.663, 35.614, 51.673, 35.623))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return write_sample(SMALL, out, seed=1), out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_written_sample_is_bit_identical(written, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    summary, out = written
    again = write_sample(SMALL, tmp_path / "again", seed=1)
    assert _files(out) == _files(tmp_path / "again")
    assert again.bytes_written == summary.bytes_written == sum(len(b) for b in _files(out).values())
    # Rewriting into the same folder replaces it as a whole (no stale files).
    write_sample(SMALL, tmp_path / "again", seed=2)
    assert _files(out) != _files(tmp_path / "again")


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        write_sample(SMALL, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_refuses_to_replace_an_earlier_sample_holding_a_runs_outputs_or_notes(
    written,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A run's outputs written into the sample's folder (`--out` the sample root) and an
    analyst's notes there were deleted with the sample it replaced."""
    _, out = written
    import shutil

    copy = tmp_path / "sample"
    shutil.copytree(out, copy)
    (copy / "NOTES.txt").write_text("mine")
    with pytest.raises(OutputError, match="more than an earlier synthetic sample"):
        write_sample(SMALL, copy, seed=2)
    assert (copy / "NOTES.txt").read_text() == "mine"


def test_catalog_loads_with_pystac_and_has_earth_search_metadata(written) -> None:  # type: ignore[no-untyped-def]
    summary, out = written
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    assert len(items) == summary.n_items >= 14
    required = {
        "eo:cloud_cover", "s2:processing_baseline", "earthsearch:boa_offset_applied", "grid:code",
        "platform", "created", "updated", "changedet:synthetic", "s2:sequence",
    }  # fmt: skip
    for item in items:
        assert required <= set(item.properties)
        # pystac >= 1.12 migrates projection v1.1 `proj:epsg` (as Earth Search writes it) to `proj:code`
        assert (
            item.properties.get("proj:epsg") == 32639
            or item.properties.get("proj:code") == "EPSG:32639"
        )
        assert item.properties["grid:code"] == "MGRS-39SWV"
        assert item.properties["changedet:synthetic"] is True
        assert set(item.assets) == {"blue", "green", "red", "nir", "swir16", "swir22", "scl"}
        for key in ("blue", "nir", "swir16"):
            rb = item.assets[key].extra_fields["raster:bands"][0]
            assert (rb["scale"], rb["offset"], rb["nodata"]) == (0.0001, -0.1, 0)
        with rasterio.open(item.assets["scl"].get_absolute_href()) as src:
            scl = src.read(1)
        valid = scl != 0
        cover = 100.0 * np.isin(scl, (8, 9, 10)).sum() / valid.sum()
        assert item.properties["eo:cloud_cover"] == pytest.approx(cover, abs=1e-4)
    # Exactly one reprocessed duplicate: same datetime, _0_ vs _1_, newer `updated`.
    by_time: dict[str, list[pystac.Item]] = {}
    for item in items:
        by_time.setdefault(item.properties["datetime"], []).append(item)
    dups = [v for v in by_time.values() if len(v) > 1]
    assert len(dups) == 1
    first, second = sorted(dups[0], key=lambda i: i.id)
    assert first.id.endswith("_0_L2A") and second.id.endswith("_1_L2A")
    assert second.properties["updated"] > first.properties["updated"]
    # The first delivery has a lost-lines stripe (DN 0) that the reprocessing does not.
    with rasterio.open(first.assets["red"].get_absolute_href()) as a:
        zeros_first = int((a.read(1) == 0).sum())
    with rasterio.open(second.assets["red"].get_absolute_href()) as b:
        zeros_second = int((b.read(1) == 0).sum())
    assert zeros_first > zeros_second
    # items.json holds the same items for a STAC API server, hrefs relative to the sample folder.
    served = json.loads((out / "items.json").read_text())
    assert sorted(f["id"] for f in served["features"]) == sorted(i.id for i in items)
    href = served["features"][0]["assets"]["blue"]["href"]
    assert (out / href).is_file()


def test_cogs_sit_on_a_window_of_the_aoi_grid(written) -> None:  # type: ignore[no-untyped-def]
    summary, out = written
    grid = grid_for(SMALL)
    win = summary.window
    col = (win.transform.c - grid.transform.c) / grid.res
    row = (grid.transform.f - win.transform.f) / grid.res
    assert col == int(col) and row == int(row) and col >= 0 and row >= 0
    assert grid.window(int(row), int(col), win.height, win.width) == win
    assert win.transform.c % 60 == 0 and win.transform.f % 60 == 0  # Sentinel-2 60 m lattice
    item_dir = next(p for p in sorted((out / "sentinel-2-l2a").iterdir()) if p.is_dir())
    with rasterio.open(item_dir / "B04.tif") as src:
        assert src.transform == win.transform and src.shape == win.shape
        assert src.nodata == 0 and src.dtypes[0] == "uint16" and src.crs.to_epsg() == 32639
    with rasterio.open(item_dir / "B11.tif") as src:
        assert src.transform == win.scaled(2).transform and src.shape == win.scaled(2).shape
    with rasterio.open(item_dir / "SCL.tif") as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 0


def test_cog_reflectance_and_truth_match_the_scene(written) -> None:  # type: ignore[no-untyped-def]
    summary, out = written
    scene, _, _, _ = sample_scene(SMALL, seed=1)
    truth = json.loads((out / "truth.geojson").read_text())
    new = [f for f in truth["features"] if f["properties"]["kind"] == "building"]
    assert len(new) == summary.n_truth == len(scene.new_buildings) >= 2
    days = [p.day.isoformat() for p in scene.plans]
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    items = {i.id: i for i in catalog.get_items(recursive=True)}
    scenario = json.loads((out / "scenario.json").read_text())
    flags = []
    for t in range(len(days)):
        expected = render(scene, t).refl10[2]
        for item_id in scenario["dates"][t]["item_ids"]:
            item = items[item_id]
            with rasterio.open(item.assets["red"].get_absolute_href()) as src:
                dn = src.read(1)
            rb = item.assets["red"].extra_fields["raster:bands"][0]
            assert (rb["scale"], rb["offset"]) == (0.0001, -0.1)  # Earth Search's template
            # Earth Search semantics: boa_offset_applied=true means the DNs were shifted back.
            applied = item.properties["earthsearch:boa_offset_applied"]
            flags.append(applied)
            refl = dn * rb["scale"] + (0.0 if applied else rb["offset"])
            ok = (dn != 0) & (expected > 0)
            assert np.abs(refl[ok] - expected[ok]).max() <= 0.5e-4 + 1e-7, item_id
    assert flags.count(True) == 3 and flags.count(False) == len(flags) - 3
    for f, b in zip(new, scene.new_buildings, strict=True):
        assert f["properties"]["appeared"] == days[b.appear_index]
        assert f["geometry"]["type"] == "Polygon"
        assert f["properties"]["area_m2"] == pytest.approx(400 * b.half[0] * b.half[1], rel=1e-3)
        lon, lat = f["geometry"]["coordinates"][0][0]
        assert 51.6 < lon < 51.7 and 35.6 < lat < 35.63  # EPSG:4326, lon/lat order


# ----------------------------------------------------------------------------- committed sample


@pytest.mark.parametrize(("aoi_id", "minimum"), [("khojir", 30), ("modarres", 15)])
def test_committed_sample_matches_its_brief(aoi_id: str, minimum: int, repo: Path) -> None:
    folder = repo / "sample_tiles" / aoi_id
    if not (folder / "truth.geojson").is_file():
        pytest.skip("sample_tiles not generated; run `changedet synth sample --all`")
    total = sum(p.stat().st_size for p in (repo / "sample_tiles").rglob("*") if p.is_file())
    assert total <= 15 * 1024 * 1024
    truth = json.loads((folder / "truth.geojson").read_text())
    new = [f["properties"] for f in truth["features"] if f["properties"]["kind"] == "building"]
    assert len(new) >= minimum
    assert sum(p["bermed"] for p in new) >= 0.45 * len(new)
    start, end = PRESETS[aoi_id].expansion
    assert all(start.isoformat() <= p["appeared"] <= end.isoformat() for p in new)
    assert all(200.0 <= p["area_m2"] <= 6000.0 for p in new)
    aoi = load_aois(repo / "aoi" / f"{aoi_id}.geojson")[0]
    scenario = json.loads((folder / "scenario.json").read_text())
    win = scenario["window"]
    grid = grid_for(aoi)
    assert (
        list(grid.window(win["row_off"], win["col_off"], win["height"], win["width"]).transform)[:6]
        == win["transform"]
    )


def test_all_and_aoi_together_are_a_usage_error(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--all rendered --aoi-dir and dropped --aoi without a word."""
    result = cli("synth", "sample", "--all", "--aoi", "aoi/khojir.geojson", "--out", str(tmp_path))
    assert result.exit_code == 2 and "--all and --aoi exclude each other" in result.stderr
    assert not any(tmp_path.iterdir())
