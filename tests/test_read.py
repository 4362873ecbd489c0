"""Reader: windowed reads onto the grid, harmonisation, masks, mosaics, cache, failures.

All on small local COGs written by the tests (the loopback HTTP path is in
test_fetch_loopback.py).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from loopback import CRS, TILE_PX, TILE_X0, TILE_Y0, dn_pattern, local_scene, make_scene
from rasterio.warp import Resampling, reproject

from changedet.config import MaskConfig, ReadConfig
from changedet.errors import ConfigError, NoScenesError, ReadError
from changedet.models import Grid, SkippedScene
from changedet.read.cog import reproject_array
from changedet.read.probe import probe_details
from changedet.read.stack import read_stack

BANDS = ("red", "nir", "swir16")
# A 100 x 100 px grid 400 m inside the tile: 10 m and 20 m aligned.
GRID = Grid.from_origin(CRS, TILE_X0 + 400, TILE_Y0 - 400, 10.0, 100, 100)
ALL = np.ones(GRID.shape, bool)
CLEAR_SCL = np.full((TILE_PX // 2, TILE_PX // 2), 4, np.uint8)
NO_DILATION = MaskConfig(dilate_px=0)


def _reference_warp(path: Path, grid: Grid, resampling: Resampling) -> np.ndarray:
    """DN of one COG warped onto `grid` by plain rasterio: what our reader must reproduce."""
    out = np.zeros(grid.shape, np.uint16)
    with rasterio.open(path) as src:
        reproject(
            rasterio.band(src, 1),
            out,
            src_nodata=0,
            dst_transform=grid.transform,
            dst_crs=grid.crs,
            dst_nodata=0,
            resampling=resampling,
        )
    return out


def rc(tmp_path: Path | None = None, **kw: Any) -> ReadConfig:
    base: dict[str, Any] = {"cache_dir": "", "max_workers": 2, "retries": 1, "backoff_s": 0.01}
    base.update(kw)
    return ReadConfig(**base)


def when(day: int) -> datetime:
    return datetime(2023, 8, day, 7, 5, tzinfo=UTC)


def refl(dn: np.ndarray, offset: float = -0.1) -> np.ndarray:
    """The reflectance formula, written out independently of the reader."""
    out = dn.astype(np.float32) * np.float32(1e-4) + np.float32(offset)
    return np.where(dn == 0, np.float32(np.nan), out)


def up2(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)


def test_aligned_read_is_the_exact_window_and_formula(tmp_path: Path) -> None:
    s = make_scene(tmp_path, "S2A_39SVV_20230801_0_L2A", when(1), scl=CLEAR_SCL, seed=1)
    result = read_stack(
        [local_scene(s, tmp_path)],
        GRID,
        bands=BANDS,
        aoi_mask=ALL,
        read_config=rc(resampling="nearest"),
        mask_config=NO_DILATION,
    )
    stack = result.stack
    assert stack.reflectance.shape == (1, 3, 100, 100)
    assert stack.reflectance.dtype == np.float32
    assert stack.times == (when(1),) and stack.times[0].tzinfo is not None
    assert stack.scene_ids == (("S2A_39SVV_20230801_0_L2A",),)
    np.testing.assert_array_equal(stack.band("red")[0], refl(s.dn["red"][40:140, 40:140]))
    np.testing.assert_array_equal(stack.band("nir")[0], refl(s.dn["nir"][40:140, 40:140]))
    # 20 m band, nearest: each source pixel becomes 2 x 2 grid pixels
    np.testing.assert_array_equal(stack.band("swir16")[0], refl(up2(s.dn["swir16"][20:70, 20:70])))
    assert stack.clear.all()
    assert stack.scl is not None and (stack.scl == 4).all()
    assert result.probes == {"S2A_39SVV_20230801_0_L2A": 1.0}
    assert result.coverage == {"S2A_39SVV_20230801_0_L2A": 1.0}
    assert result.skipped == ()
    assert result.bytes_fetched == 0  # local files: nothing over the network


def test_bilinear_20m_band_stays_between_neighbours(tmp_path: Path) -> None:
    s = make_scene(tmp_path, "S2A_39SVV_20230801_0_L2A", when(1), scl=CLEAR_SCL, seed=1)
    grid = Grid.from_origin(
        CRS, TILE_X0 + 410, TILE_Y0 - 410, 10.0, 60, 60
    )  # half a 20 m pixel off
    result = read_stack(
        [local_scene(s, tmp_path)],
        grid,
        bands=("swir16",),
        aoi_mask=np.ones(grid.shape, bool),
        read_config=rc(),  # bilinear by default
        mask_config=NO_DILATION,
    )
    got = result.stack.band("swir16")[0]
    src = refl(s.dn["swir16"])
    window = src[19:52, 19:52]
    assert np.isfinite(got).all()
    assert window.min() - 1e-6 <= got.min() and got.max() <= window.max() + 1e-6
    # a grid pixel centre at x = 415 m sits a quarter of the way between source centres 410/430
    expected = 0.75 * src[20, 20] + 0.25 * src[20, 21]  # row: y centre -415 → between rows too
    expected = 0.75 * (0.75 * src[20, 20] + 0.25 * src[20, 21]) + 0.25 * (
        0.75 * src[21, 20] + 0.25 * src[21, 21]
    )
    assert got[0, 0] == pytest.approx(expected, abs=2e-4)
    assert result.stack.scl is not None and set(np.unique(result.stack.scl)) == {4}


def _scene_with_nodata(tmp_path: Path, cols: slice) -> Any:
    """One clear scene whose 10 m columns `cols` are nodata in every band."""
    return make_scene(
        tmp_path, "S2A_39SVV_20230801_0_L2A", when(1), scl=CLEAR_SCL, seed=3, nodata_cols=cols
    )


def test_20m_bilinear_never_blends_nodata_into_values(tmp_path: Path) -> None:
    """At a data edge the fast resampled read must not invent half-nodata values: it agrees
    with GDAL's warper wherever both have data, and is nodata wherever the warper is."""
    s = _scene_with_nodata(tmp_path, slice(100, None))
    grid = Grid.from_origin(CRS, TILE_X0 + 410, TILE_Y0 - 410, 10.0, 120, 120)  # straddles col 100
    result = read_stack(
        [local_scene(s, tmp_path)],
        grid,
        bands=("swir16",),
        aoi_mask=np.ones(grid.shape, bool),
        read_config=rc(),
        mask_config=NO_DILATION,
    )
    warped = _reference_warp(tmp_path / s.id / "swir16.tif", grid, Resampling.bilinear)
    got = result.stack.band("swir16")[0]
    ours_valid = np.isfinite(got)
    assert not (ours_valid & (warped == 0)).any()
    both = ours_valid & (warped > 0)
    np.testing.assert_allclose(got[both], refl(warped)[both], atol=1.5e-4)  # 1 DN rounding
    assert 0 < (warped > 0).sum() - ours_valid.sum() <= grid.height  # at most one edge column


def _gdal_onto(src: Any, grid: Grid, resampling: Resampling) -> np.ndarray:
    """What GDAL gives `grid` (the reader before `read.upsample`): its resampled window read
    inside the tile, its warper along the edge and past it, its warper alone where the window
    read does not apply."""
    import changedet.read.cog as cog

    crs = rasterio.crs.CRS.from_user_input(CRS)
    got = cog._resampled_window(src, grid, resampling=resampling, fill=0)
    if got is None:
        got = cog._split_at_edges(src, grid, crs, resampling=resampling, fill=0)
    if got is None:
        got = cog._warped_window(src, grid, crs, resampling=resampling, fill=0)
    return got


@pytest.mark.parametrize("band", ["swir16", "scl"])
def test_a_grid_over_the_tile_edge_gets_gdals_values_without_its_warper(
    tmp_path: Path, band: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AOI's context window running over a tile's edge: inside the tile each pixel gets
    exactly what GDAL's resampled window read gives, along the edge what its warper gives, past
    the edge nodata; computed in numpy (`read.upsample`), the warper never set up. (With
    nodata by the edge the warper is still used: the next test.)"""
    import changedet.read.cog as cog

    s = make_scene(tmp_path, "S2A_39SVV_20230801_0_L2A", when(1), scl=CLEAR_SCL, seed=3)
    path = str(tmp_path / s.id / f"{band}.tif")
    resampling = Resampling.nearest if band == "scl" else Resampling.bilinear
    # 200 x 180 px from 1 km inside the tile past its east and its south edge.
    grid = Grid.from_origin(CRS, TILE_X0 + 1000, TILE_Y0 - 1200, 10.0, 200, 180)
    warped_px: list[int] = []
    warp = cog._warp

    def counted(source: Any, src_georef: Any, destination: np.ndarray, *a: Any, **k: Any) -> Any:
        warped_px.append(destination.size)
        return warp(source, src_georef, destination, *a, **k)

    monkeypatch.setattr(cog, "_warp", counted)
    got = cog._read_onto_grid(path, grid, resampling=resampling, nodata=None)
    assert not warped_px
    east, south = (TILE_PX * 10 - 1000) // 10, (TILE_PX * 10 - 1200) // 10
    with rasterio.open(path) as src:
        r0, r1, c0, c1 = cog._inner_rect(src, grid)
        # Inside: up to one 20 m source pixel (2 grid pixels) from the tile's east and south.
        assert (r0, r1, c0, c1) == (0, south - 2, 0, east - 2)
        inner = cog._part(grid, (r0, r1), (c0, c1))
        gdal_inside = cog._resampled_window(src, inner, resampling=resampling, fill=0)
        assert gdal_inside is not None
        np.testing.assert_array_equal(got[r0:r1, c0:c1], gdal_inside)
        full = cog._warped_window(
            src, grid, rasterio.crs.CRS.from_user_input(CRS), resampling=resampling, fill=0
        )
    edge = np.ones(grid.shape, bool)
    edge[r0:r1, c0:c1] = False
    np.testing.assert_array_equal(got[edge], full[edge])
    assert (got[:, east:] == 0).all() and (got[south:] == 0).all()


@pytest.mark.parametrize("band", ["swir16", "scl"])
def test_20m_bands_onto_any_10m_grid_on_their_lattice_are_gdals_to_the_bit(
    tmp_path: Path, band: str
) -> None:
    """Random grids on the 10 m lattice, inside the tile, across any of its edges or past them,
    over a scene with nodata columns inside and along its west edge: the numpy path gives
    GDAL's values everywhere, or leaves the grid to the warper (nodata by an edge pixel)."""
    import changedet.read.cog as cog

    s = make_scene(
        tmp_path,
        "S2A_39SVV_20230801_0_L2A",
        when(1),
        scl=CLEAR_SCL,
        seed=5,
        nodata_cols=slice(0, 7),
    )
    rng = np.random.default_rng(7)
    resampling = Resampling.nearest if band == "scl" else Resampling.bilinear
    computed = left = 0
    with rasterio.open(tmp_path / s.id / f"{band}.tif") as src:
        for _ in range(40):
            ox, oy = (int(v) for v in rng.integers(-40, TILE_PX + 20, 2))
            w, h = (int(v) for v in rng.integers(5, 160, 2))
            grid = Grid.from_origin(CRS, TILE_X0 + 10 * ox, TILE_Y0 - 10 * oy, 10.0, w, h)
            got = cog._upsampled_window(src, grid, resampling=resampling, fill=0)
            if got is None:
                left += 1
                continue
            computed += 1
            np.testing.assert_array_equal(got, _gdal_onto(src, grid, resampling))
    assert computed >= 30
    assert band == "swir16" or not left  # nearest never needs the warper


def test_a_grid_off_the_20m_lattice_is_left_to_gdal(tmp_path: Path) -> None:
    import changedet.read.cog as cog

    s = _scene_with_nodata(tmp_path, slice(100, 140))
    shifted = Grid.from_origin(CRS, TILE_X0 + 405, TILE_Y0 - 400, 10.0, 50, 50)
    coarse = Grid.from_origin(CRS, TILE_X0 + 400, TILE_Y0 - 400, 20.0, 50, 50)
    with rasterio.open(tmp_path / s.id / "swir16.tif") as src:
        for grid in (shifted, coarse):
            assert cog._upsampled_window(src, grid, resampling=Resampling.bilinear, fill=0) is None
        assert cog._upsampled_window(src, GRID, resampling=Resampling.cubic, fill=0) is None


def test_harmonisation_removes_the_baseline_jump(tmp_path: Path) -> None:
    """Same surface, two DN conventions: no fake 0.1 step between the dates."""
    new = make_scene(tmp_path, "S2A_39SVV_20230801_0_L2A", when(1), scl=CLEAR_SCL, seed=7)
    old = make_scene(
        tmp_path,
        "S2A_39SVV_20230806_0_L2A",
        when(6),
        scl=CLEAR_SCL,
        seed=7,
        baseline="03.01",  # pre-04.00: no offset in the DNs, whatever raster:bands says
    )
    # Rewrite both: one surface, DN = 10000 x reflectance (+ 1000 from baseline 04.00 on).
    from loopback import write_cog

    for band in BANDS:
        res = 20.0 if band == "swir16" else 10.0
        surface = np.maximum(new.dn[band], 1001) - 1000
        write_cog(
            tmp_path / new.id / f"{band}.tif", surface + 1000, x0=TILE_X0, y0=TILE_Y0, res=res
        )
        write_cog(tmp_path / old.id / f"{band}.tif", surface, x0=TILE_X0, y0=TILE_Y0, res=res)
    result = read_stack(
        [local_scene(old, tmp_path), local_scene(new, tmp_path)],
        GRID,
        bands=BANDS,
        aoi_mask=ALL,
        read_config=rc(),
        mask_config=NO_DILATION,
    )
    r = result.stack.reflectance
    assert r.shape[0] == 2
    np.testing.assert_allclose(r[0], r[1], atol=1e-6)
    assert abs(float(np.nanmean(r[1] - r[0]))) < 1e-6


def test_one_date_on_two_tiles_is_mosaicked_first_clear_wins(tmp_path: Path) -> None:
    scl_a = CLEAR_SCL.copy()
    scl_a[20:45, 20:45] = 9  # a cloud over part of the grid on tile A
    a = make_scene(
        tmp_path,
        "S2A_39SVV_20230801_0_L2A",
        when(1),
        scl=scl_a,
        seed=1,
        nodata_cols=slice(90, None),
    )
    b = make_scene(
        tmp_path, "S2A_39SWV_20230801_0_L2A", when(1), tile="39SWV", scl=CLEAR_SCL, seed=2
    )
    result = read_stack(
        [local_scene(b, tmp_path), local_scene(a, tmp_path)],
        GRID,
        bands=("red",),
        aoi_mask=ALL,
        read_config=rc(resampling="nearest"),
        mask_config=NO_DILATION,
    )
    stack = result.stack
    assert stack.reflectance.shape[0] == 1  # one acquisition date
    # B is clear everywhere (probe 1.0) so it goes first; A is only partly clear/covered.
    assert stack.scene_ids == (("S2A_39SWV_20230801_0_L2A", "S2A_39SVV_20230801_0_L2A"),)
    np.testing.assert_array_equal(stack.band("red")[0], refl(b.dn["red"][40:140, 40:140]))
    assert stack.clear.all()
    assert result.coverage["S2A_39SVV_20230801_0_L2A"] == pytest.approx(0.5)  # cols 90.. nodata
    # Now A first (B cloudy where A is clear): each pixel comes from the first clear scene.
    scl_b = CLEAR_SCL.copy()
    scl_b[:, :45] = 9
    b2 = make_scene(tmp_path, "S2A_39SWV_20230801_1_L2A", when(1), tile="39SWV", scl=scl_b, seed=2)
    result = read_stack(
        [local_scene(a, tmp_path), local_scene(b2, tmp_path)],
        GRID,
        bands=("red",),
        aoi_mask=ALL,
        read_config=rc(resampling="nearest"),
        mask_config=NO_DILATION,
    )
    red = result.stack.band("red")[0]
    a_clear = np.ones(GRID.shape, bool)
    a_clear[:, 50:] = False  # nodata from tile column 90 = grid column 50
    a_clear[0:50, 0:50] &= ~up2(scl_a[20:45, 20:45] == 9)
    order = result.stack.scene_ids[0]
    first, second = (a, b2) if order[0] == a.id else (b2, a)
    first_clear = a_clear if first is a else up2(scl_b[20:70, 20:70] != 9)
    np.testing.assert_array_equal(
        red[first_clear], refl(first.dn["red"][40:140, 40:140])[first_clear]
    )
    rest = ~first_clear & (a_clear if second is a else up2(scl_b[20:70, 20:70] != 9))
    assert rest.any()
    np.testing.assert_array_equal(red[rest], refl(second.dn["red"][40:140, 40:140])[rest])
    neither = ~first_clear & ~rest
    assert np.isnan(red[neither]).all() and not result.stack.clear[0][neither].any()


def _three_kinds_of_date(tmp_path: Path) -> list[Any]:
    """Three dates of two tiles each: one of shared scales (mosaicked as DNs), one of two
    processing baselines, and one whose second scene's red is float32 DNs (both mosaicked as
    reflectance, and kept as DNs after a check)."""
    from loopback import write_cog

    cloud = CLEAR_SCL.copy()
    cloud[20:45, 20:45] = 9
    partial = {"nodata_cols": slice(90, None), "scl": cloud}
    other_tile = {"tile": "39SWV", "scl": CLEAR_SCL}
    scenes = [
        make_scene(tmp_path, "S2A_39SVV_20230801_0_L2A", when(1), seed=1, **partial),
        make_scene(tmp_path, "S2A_39SWV_20230801_0_L2A", when(1), seed=2, **other_tile),
        make_scene(tmp_path, "S2A_39SVV_20230806_0_L2A", when(6), seed=3, **partial),
        make_scene(
            tmp_path, "S2A_39SWV_20230806_0_L2A", when(6), seed=4, baseline="03.01", **other_tile
        ),
        make_scene(tmp_path, "S2A_39SVV_20230811_0_L2A", when(11), seed=5, **partial),
        make_scene(tmp_path, "S2A_39SWV_20230811_0_L2A", when(11), seed=6, **other_tile),
    ]
    # The partial scene of the third date is mosaicked second: its red is float32 DNs.
    late = scenes[4]
    red = late.dn["red"].astype(np.float32)
    write_cog(tmp_path / late.id / "red.tif", red, x0=TILE_X0, y0=TILE_Y0, res=10.0)
    late.item["assets"]["red"]["raster:bands"][0]["data_type"] = "float32"  # and says so
    return [local_scene(s, tmp_path) for s in scenes]


def test_streamed_dates_are_kept_as_dns_and_read_back_to_the_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`read_series` mosaics a date straight into uint16 DNs when its scenes share each band's
    scale and offset (no float32 round trip, no check of one), and into reflectance when they do
    not (two processing baselines on one day) or when a band is not uint16 (switching halfway
    through the date); every way gives back `read_stack`'s pixels and masks to the bit."""
    import changedet.read.store as store_module
    from changedet.read.stack import read_series

    local = _three_kinds_of_date(tmp_path)
    args: dict[str, Any] = {
        "bands": BANDS,
        "aoi_mask": ALL,
        "read_config": rc(),
        "mask_config": NO_DILATION,
    }
    expected = read_stack(local, GRID, **args).stack
    checked: list[int] = []  # dates the store had to turn back into DNs
    as_dn = store_module._as_dn

    def spy(values: np.ndarray, *rest: Any) -> Any:
        checked.append(len(checked))
        return as_dn(values, *rest)

    monkeypatch.setattr(store_module, "_as_dn", spy)
    streamed = read_series(local, GRID, **args).stack
    assert isinstance(streamed, store_module.DateStore)
    with streamed:
        assert streamed.times == expected.times and len(expected.times) == 3
        assert all(len(ids) == 2 for ids in streamed.scene_ids)  # every date is a mosaic
        everything, dates, bands = slice(0, GRID.height), range(3), range(len(BANDS))
        np.testing.assert_array_equal(
            streamed.pixels(dates, everything, bands), expected.reflectance
        )
        np.testing.assert_array_equal(streamed.clear_rows(dates, everything), expected.clear)
        # The first date went in as DNs; the other two as reflectance, checked back into DNs.
        assert len(checked) == 2
        pixels = GRID.height * GRID.width
        assert streamed.bytes_written == 3 * pixels + 3 * len(BANDS) * pixels * 2


def test_dates_kept_by_an_earlier_read_are_taken_not_read(tmp_path: Path) -> None:
    """With a `keep` (the monitor's period cache), `read_series` keeps every date it reads and,
    next time, takes the dates whose scenes and clear masks are unchanged from where they lie
    instead of reading their bands (nor their SCL: the probe's verdicts are kept): the same
    pixels, masks, times, ids and fingerprints as a read without it. A damaged entry, or one of
    another shape, is read again (SCL and bands); a changed clear mask is another key."""
    from changedet.monitor.memo import DiskMemo
    from changedet.read.stack import read_series

    # The three kinds of date, and one whose scenes' offsets leave it float32 reflectance: the
    # clearer scene (offset -0.10005, cloudy in a corner) first, the other fills its cloud.
    cloud = CLEAR_SCL.copy()
    cloud[20:45, 20:45] = 9
    odd = [
        make_scene(
            tmp_path,
            "S2A_39SVV_20230816_0_L2A",
            when(16),
            seed=7,
            scl=CLEAR_SCL,
            nodata_cols=slice(90, None),
        ),
        make_scene(
            tmp_path,
            "S2A_39SWV_20230816_0_L2A",
            when(16),
            seed=8,
            tile="39SWV",
            scl=cloud,
            offset=-0.10005,
        ),
    ]
    local = _three_kinds_of_date(tmp_path) + [local_scene(s, tmp_path) for s in odd]
    args: dict[str, Any] = {"bands": BANDS, "aoi_mask": ALL, "read_config": rc()}
    n_reads = len(local) * (1 + len(BANDS))  # SCL and bands of every scene
    folder = tmp_path / "kept"

    def read(keep: DiskMemo | None, mask: MaskConfig = NO_DILATION) -> tuple[Any, Any]:
        result = read_series(local, GRID, mask_config=mask, keep=keep, **args)
        everything, dates = slice(0, GRID.height), range(len(result.stack.times))
        with result.stack as stack:
            seen = (
                stack.times,
                stack.scene_ids,
                stack.pixels(dates, everything, range(len(BANDS))),
                stack.clear_rows(dates, everything),
                stack.fingerprints(),
            )
        return result, seen

    def same(got: Any, expected: Any) -> None:
        assert got[:2] == expected[:2] and got[4] == expected[4]
        np.testing.assert_array_equal(got[2], expected[2])
        np.testing.assert_array_equal(got[3], expected[3])

    _, expected = read(None)
    first, seen = read(DiskMemo(folder))
    entries = sorted(folder.glob("date-*.arrays"))
    assert len(entries) == 4 and first.assets_read == n_reads
    stored = [DiskMemo(folder).get_arrays(p.stem) for p in entries]
    kinds = {arrays["data"].dtype for arrays in stored if arrays is not None}
    assert kinds == {np.dtype(np.uint16), np.dtype(np.float32)}
    keep = DiskMemo(folder)
    second, again = read(keep)
    assert keep.array_hits["date"] == 4 and second.assets_read == 0  # SCL verdicts kept too
    assert "4 date(s) taken as kept" in " ".join(second.notes)
    same(seen, expected)
    same(again, expected)
    # One entry damaged (a flipped bit), another of another shape: both dates are read again.
    blob = bytearray(entries[0].read_bytes())
    blob[-100] ^= 0x10
    entries[0].write_bytes(bytes(blob))
    shape_key = entries[1].name.removesuffix(".arrays")
    wrong = {"data": np.zeros((1, 2, 2), np.uint16), "clear": np.zeros((2, 2), bool)}
    DiskMemo(folder).put_arrays(shape_key, {**wrong, "fingerprint": np.zeros(32, np.uint8)})
    keep = DiskMemo(folder)
    third, damaged = read(keep)
    assert keep.array_hits["date"] == 3 and keep.array_misses["date"] == 1
    assert third.assets_read == 4 * (1 + len(BANDS))  # the two dates' scenes, SCL and bands
    same(damaged, expected)
    # Other clear masks (a dilated cloud): other keys, every date read and kept again.
    read(DiskMemo(folder), MaskConfig(dilate_px=2))
    assert len(list(folder.glob("date-*.arrays"))) == 8


def test_a_monitoring_read_looks_at_the_scl_of_new_scenes_only(tmp_path: Path) -> None:
    """The probe's verdicts and bright-roof counts are kept with the dates (`read.verdicts`):
    a read with one scene more reads that scene's SCL and bands only, while the roof pixels
    stay; when the new scene makes a pixel a roof, when a known scene is gone, or when the kept
    verdicts are damaged, every SCL is looked at again. Each read gives what a read without
    anything kept gives: pixels, masks, ids, probes and coverage."""
    from changedet.monitor.memo import DiskMemo
    from changedet.read.stack import read_series

    roofed = CLEAR_SCL.copy()
    roofed[30:35, 30:35] = 9  # 20 m pixels inside the grid; a roof where >= 60 % of dates
    mask = MaskConfig(dilate_px=0, persistent_min_dates=2)
    synth = [
        make_scene(tmp_path, f"S2A_39SVV_202308{day:02d}_0_L2A", when(day), seed=day, scl=scl)
        for day, scl in ((1, roofed), (6, CLEAR_SCL), (11, CLEAR_SCL), (16, roofed), (21, roofed))
    ]
    scenes = [local_scene(s, tmp_path) for s in synth]
    args: dict[str, Any] = {"bands": BANDS, "aoi_mask": ALL, "read_config": rc()}
    folder = tmp_path / "kept"

    def read(chosen: list[Any], keep: DiskMemo | None) -> tuple[Any, Any]:
        result = read_series(chosen, GRID, mask_config=mask, keep=keep, **args)
        everything, dates = slice(0, GRID.height), range(len(result.stack.times))
        with result.stack as stack:
            seen = (
                stack.scene_ids,
                stack.pixels(dates, everything, range(len(BANDS))),
                stack.clear_rows(dates, everything),
                result.probes,
                result.coverage,
            )
        return result, seen

    def same(got: Any, expected: Any) -> None:
        assert got[0] == expected[0] and got[3:] == expected[3:]
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[2], expected[2])

    one_read = 1 + len(BANDS)
    first, _ = read(scenes[:3], DiskMemo(folder))
    assert first.assets_read == 3 * one_read
    # A fourth scene, cloudy in the corner: 2 of 4 dates, no roof; only the new scene is read.
    second, seen = read(scenes[:4], DiskMemo(folder))
    assert second.assets_read == one_read
    same(seen, read(scenes[:4], None)[1])
    # The fifth makes the corner a roof (3 of 5): clear now on the first and fourth dates too.
    third, seen = read(scenes, DiskMemo(folder))
    _, expected = read(scenes, None)
    same(seen, expected)
    assert expected[2][0, 20:30, 20:30].all()  # the roof rule did change the first date's mask
    assert third.assets_read == 5 + 3 * len(BANDS)  # every SCL; the first, fourth, new date
    # Nothing new: nothing read. A known scene gone, or the verdicts damaged: every SCL looked at.
    assert read(scenes, DiskMemo(folder))[0].assets_read == 0
    gone, seen = read(scenes[1:], DiskMemo(folder))
    same(seen, read(scenes[1:], None)[1])
    # every SCL; no roof again (2 of 4): the fourth date as the second read kept it, the last
    # date never kept with its corner cloudy
    assert gone.assets_read == 4 + len(BANDS)
    entry = next(folder.glob("verdicts-*.arrays"))
    entry.write_bytes(entry.read_bytes()[:-10])
    damaged, seen = read(scenes[1:], DiskMemo(folder))
    same(seen, read(scenes[1:], None)[1])
    assert damaged.assets_read == 4  # every SCL, no band


def _series_seen(scenes: list[Any], keep: Any) -> tuple[Any, Any]:
    """A monitoring read (`read_series` with `keep`) and what it gives: ids, pixels, masks."""
    from changedet.read.stack import read_series

    args: dict[str, Any] = {"bands": BANDS, "aoi_mask": ALL, "read_config": rc()}
    result = read_series(scenes, GRID, mask_config=NO_DILATION, keep=keep, **args)
    everything, dates = slice(0, GRID.height), range(len(result.stack.times))
    with result.stack as stack:
        return result, (
            stack.scene_ids,
            stack.pixels(dates, everything, range(len(BANDS))),
            stack.clear_rows(dates, everything),
        )


def test_a_monitoring_read_reads_a_scene_reprocessed_in_place_again(tmp_path: Path) -> None:
    """Same id and hrefs, new pixels and SCL, a later `updated`: its kept date and verdict are
    the old version's, so they are not taken."""
    from changedet.monitor.memo import DiskMemo

    def publish(day: int, seed: int, scl: np.ndarray, updated: str | None = None) -> Any:
        made = make_scene(
            tmp_path, f"S2A_39SVV_202308{day:02d}_0_L2A", when(day), seed=seed, scl=scl,
            updated=updated,
        )  # fmt: skip
        return local_scene(made, tmp_path)

    cloudy = CLEAR_SCL.copy()
    cloudy[:, :40] = 9
    scenes = [publish(day, day, CLEAR_SCL) for day in (1, 6, 11)]
    _series_seen(scenes, DiskMemo(tmp_path / "kept"))
    scenes[1] = publish(6, 60, cloudy, updated="2023-10-01T00:00:00Z")
    again, seen = _series_seen(scenes, DiskMemo(tmp_path / "kept"))
    _, expected = _series_seen(scenes, None)
    # every SCL looked at again (a known scene changed), the bands of that scene only
    assert again.assets_read == 3 + len(BANDS)
    assert seen[0] == expected[0]
    np.testing.assert_array_equal(seen[1], expected[1])
    np.testing.assert_array_equal(seen[2], expected[2])
    assert not expected[2][1].all()  # the new SCL's cloud is in its mask


def test_a_known_scene_whose_scl_cannot_be_read_now_is_skipped_as_unreadable(
    tmp_path: Path,
) -> None:
    """Its verdict kept, its date not (keep_dates = false, or a damaged entry): its SCL is read
    again, fails, and the scene is left out as unreadable, as a read with nothing kept leaves it
    (it was used with no clear pixel, and said nothing)."""
    from changedet.monitor.memo import DiskMemo

    synth = [
        make_scene(tmp_path, f"S2A_39SVV_202308{day:02d}_0_L2A", when(day), seed=day, scl=CLEAR_SCL)
        for day in (1, 6, 11, 16)
    ]
    scenes = [local_scene(s, tmp_path) for s in synth]
    folder = tmp_path / "kept"
    _series_seen(scenes[:3], DiskMemo(folder))
    for entry in folder.glob("date-*"):
        entry.unlink()
    (tmp_path / synth[0].item["id"] / "scl.tif").unlink()
    kept, seen = _series_seen(scenes, DiskMemo(folder))
    fresh, expected = _series_seen(scenes, None)
    assert seen[0] == expected[0] and synth[0].item["id"] not in {i for d in seen[0] for i in d}
    [(scene_id, reason, unreadable)] = [(s.scene_id, s.reason, s.unreadable) for s in kept.skipped]
    assert (scene_id, unreadable) == (synth[0].item["id"], True)
    assert reason.startswith("SCL unreadable") and fresh.skipped == kept.skipped


def test_the_bright_roof_rule_counts_dates_not_the_tiles_of_a_date(tmp_path: Path) -> None:
    """Two tiles of each of 3 dates overlap; a cloud over the same pixels on 2 dates. Counted by
    scene, the overlap saw it 6 times (>= persistent_min_dates, 5) and kept the cloud as a
    roof there; counted by date, it is 3 dates, and the cloud is masked on both tiles alike."""
    grid = Grid.from_origin(CRS, TILE_X0 + 1000, TILE_Y0 - 400, 10.0, 200, 100)
    scenes = []
    for day in (1, 6, 11):
        scl = CLEAR_SCL.copy()
        if day != 11:
            scl[30:50, :] = 9  # 20 m rows 30..50: grid rows 20..60
        for tile, x0 in (("39SVV", TILE_X0), ("39SWV", TILE_X0 + 1280)):
            made = make_scene(
                tmp_path, f"S2A_{tile}_202308{day:02d}_0_L2A", when(day), tile=tile, scl=scl,
                seed=day, x0=x0,
            )  # fmt: skip
            scenes.append(local_scene(made, tmp_path))
    result = read_stack(
        scenes,
        grid,
        bands=BANDS,
        aoi_mask=np.ones(grid.shape, bool),
        read_config=rc(),
        mask_config=NO_DILATION,
    )
    assert len(result.stack.times) == 3
    assert not result.stack.clear[:2, 25:55].any()  # the cloud, overlap (cols 28..155) included
    assert result.stack.clear[2, 25:55].all() and not result.notes


def test_kept_dates_opened_ahead_are_closed_unless_taken(tmp_path: Path) -> None:
    """The read opens kept dates on two threads ahead of the mosaic: the file of every entry
    the mosaic does not take (a later date's, when a read fails) is closed on the way out, and
    an entry that is not there stays a miss."""
    import os

    from changedet.monitor.memo import DiskMemo
    from changedet.read.stack import _opened_ahead

    keep = DiskMemo(tmp_path / "kept")
    for key in ("date-a", "date-b", "date-c"):
        keep.put_arrays(key, {"clear": np.ones((3, 4), bool)})

    def is_open(fd: int) -> bool:
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True

    with (
        pytest.raises(RuntimeError, match="mosaic failed"),
        _opened_ahead(keep, ["date-a", "date-b", "date-c", "date-absent"]) as opened,
    ):
        taken = opened.pop("date-a").result()
        assert taken is not None and opened.pop("date-absent").result() is None
        left = [f.result() for f in opened.values()]
        raise RuntimeError("mosaic failed")
    assert is_open(taken[0])  # the mosaic's to close (the date store does)
    assert all(found is not None and not is_open(found[0]) for found in left)
    os.close(taken[0])
    assert (keep.array_hits["date"], keep.array_misses["date"]) == (3, 1)
    with _opened_ahead(None, ["date-a"]) as nothing:
        assert nothing == {}


def test_cloudy_scene_skipped_and_roofs_kept(tmp_path: Path) -> None:
    grid = Grid.from_origin(CRS, TILE_X0 + 400, TILE_Y0 - 400, 10.0, 20, 20)
    aoi = np.ones(grid.shape, bool)
    scenes = []
    for day in range(1, 6):  # five dates; SCL calls the same 16 x 16 px block "cloud" on each
        scl = CLEAR_SCL.copy()
        scl[20:28, 20:28] = 9
        s = make_scene(tmp_path, f"S2A_39SVV_202308{day:02d}_0_L2A", when(day), scl=scl, seed=day)
        scenes.append(local_scene(s, tmp_path))
    cloudy_scl = np.full_like(CLEAR_SCL, 8)
    cloudy = make_scene(
        tmp_path, "S2A_39SVV_20230810_0_L2A", when(10), scl=cloudy_scl, cloud_cover=3.0
    )
    scenes.append(local_scene(cloudy, tmp_path))
    config = rc(min_aoi_clear_fraction=0.5)
    # Without the roof rule the block (64 % of the AOI) is cloud: every scene is too cloudy.
    no_rule = MaskConfig(dilate_px=0, persistent_min_dates=1000)
    with pytest.raises(NoScenesError, match="cloudy around the AOI"):
        read_stack(
            scenes, grid, bands=("red",), aoi_mask=aoi, read_config=config, mask_config=no_rule
        )
    # With it (5 of 6 dates cloudy there >= 0.6): a roof, clear, the five scenes are used.
    result = read_stack(
        scenes,
        grid,
        bands=("red",),
        aoi_mask=aoi,
        read_config=config,
        mask_config=MaskConfig(dilate_px=1, persistent_min_dates=5),
    )
    assert len(result.stack.times) == 5
    assert result.stack.clear.all()  # the roof is clear and grows no dilation halo
    assert [(s.scene_id, s.reason.split(":")[0]) for s in result.skipped] == [
        ("S2A_39SVV_20230810_0_L2A", "cloudy around the AOI")
    ]
    assert "scene cloud 3%" in result.skipped[0].reason
    assert result.probes["S2A_39SVV_20230810_0_L2A"] == 0.0
    assert any("bright roofs" in n for n in result.notes)


def test_the_window_not_the_polygon_decides_how_clear_a_scene_is(tmp_path: Path) -> None:
    """A polygon drawn tighter inside another must see the same dates: the clear fraction is
    measured over the whole window read (the context window), coverage over the polygon."""
    scl = CLEAR_SCL.copy()
    scl[20:70, 20:45] = 9  # the grid's left half (its 20 m pixels 20..69 x 20..69)
    s = make_scene(tmp_path, "S2A_39SVV_20230801_0_L2A", when(1), scl=scl)
    under_cloud = np.zeros(GRID.shape, bool)
    under_cloud[:, 10:40] = True  # a polygon wholly under the cloud
    straddling = np.zeros(GRID.shape, bool)
    straddling[:, 30:70] = True  # one that straddles it: 20 of its 40 columns cloudy
    probes = [
        probe_details(
            [local_scene(s, tmp_path)], GRID, aoi_mask=m, read_config=rc(), mask_config=NO_DILATION
        )["S2A_39SVV_20230801_0_L2A"]
        for m in (under_cloud, straddling, ALL)
    ]
    assert [p.clear_fraction for p in probes] == [0.5, 0.5, 0.5]
    assert all(p.skip_reason is None and p.coverage == 1.0 for p in probes)
    details = probe_details(
        [local_scene(s, tmp_path)],
        GRID,
        aoi_mask=straddling,
        read_config=rc(min_aoi_clear_fraction=0.6),
        mask_config=NO_DILATION,
    )
    probe = details["S2A_39SVV_20230801_0_L2A"]
    assert probe.coverage == 1.0 and probe.has_scl
    assert probe.skip_reason == (
        "cloudy around the AOI: 50% of the window read clear < 60% required; scene cloud 5%"
    )


def test_no_scl_falls_back_to_valid_data(tmp_path: Path) -> None:
    s = make_scene(
        tmp_path, "S2A_39SVV_20230801_0_L2A", when(1), scl=None, nodata_cols=slice(0, 60)
    )
    result = read_stack(
        [local_scene(s, tmp_path)],
        GRID,
        bands=("red", "nir"),
        aoi_mask=ALL,
        read_config=rc(),
        mask_config=NO_DILATION,
    )
    stack = result.stack
    assert stack.scl is None
    expected_clear = np.ones(GRID.shape, bool)
    expected_clear[:, :20] = False  # tile columns 40..59 are nodata
    np.testing.assert_array_equal(stack.clear[0], expected_clear)
    assert result.coverage[s.id] == pytest.approx(0.8)
    assert result.probes[s.id] == 1.0
    assert any("fallback" in n and s.id in n for n in result.notes)
    probe = probe_details(
        [local_scene(s, tmp_path)], GRID, aoi_mask=ALL, read_config=rc(), mask_config=NO_DILATION
    )[s.id]
    assert not probe.has_scl and math.isnan(probe.clear_fraction)


def _rewrite(path: Path, array: np.ndarray, *, crs: str = CRS) -> None:
    """`path` written again as `array` ((H, W) or (B, H, W)) on its own transform, in `crs`."""
    with rasterio.open(path) as src:
        transform = src.transform
    bands = array if array.ndim == 3 else array[None]
    profile = {"driver": "GTiff", "width": bands.shape[2], "height": bands.shape[1],
               "count": bands.shape[0], "dtype": bands.dtype.name, "crs": crs,
               "transform": transform, "nodata": 0}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)


def test_files_that_disagree_with_their_item_skip_their_scene(tmp_path: Path) -> None:
    """Each was read without a word and changed the counts: float reflectance scaled as DNs,
    band 1 of three, a file in the next zone placed as the item's, an SCL of uint16 x 100."""
    made = [
        make_scene(tmp_path, f"S2A_39SVV_202308{day:02d}_0_L2A", when(day), scl=CLEAR_SCL, seed=day)
        for day in (1, 6, 11, 16, 21)
    ]
    good, floats, three, zone, scl = made
    _rewrite(tmp_path / floats.id / "red.tif", (floats.dn["red"] / 10000).astype(np.float32))
    _rewrite(tmp_path / three.id / "nir.tif", np.stack([three.dn["nir"]] * 3))
    _rewrite(tmp_path / zone.id / "red.tif", zone.dn["red"], crs="EPSG:32638")
    _rewrite(tmp_path / scl.id / "scl.tif", CLEAR_SCL.astype(np.uint16) * 100)
    result = read_stack(
        [local_scene(x, tmp_path) for x in made],
        GRID,
        bands=("red", "nir"),
        aoi_mask=ALL,
        read_config=rc(),
        mask_config=NO_DILATION,
    )
    assert result.stack.scene_ids == ((good.id,),)
    reasons = {s.scene_id: s.reason for s in result.skipped if s.unreadable}
    said = "disagrees with its item"
    assert reasons[floats.id] == (
        f"unreadable asset: red: {said}: red.tif is float32, its raster:bands data_type says uint16"
    )
    assert (
        reasons[three.id] == f"unreadable asset: nir: {said}: nir.tif holds 3 bands, one expected"
    )
    assert reasons[zone.id] == (
        f"unreadable asset: red: {said}: red.tif is in EPSG:32638, its proj:epsg says 32639"
    )
    assert (
        f"scl: {said}: scl.tif is uint16, its raster:bands data_type says uint8" in reasons[scl.id]
    )


def test_outside_aoi_corrupt_and_missing_assets_skip_their_scene(tmp_path: Path) -> None:
    good = make_scene(tmp_path, "S2A_39SVV_20230801_0_L2A", when(1), scl=CLEAR_SCL, seed=1)
    far = make_scene(
        tmp_path,
        "S2A_39SWV_20230806_0_L2A",
        when(6),
        scl=CLEAR_SCL,
        x0=TILE_X0 + 50_000,
        tile="39SWV",
    )
    corrupt = make_scene(tmp_path, "S2A_39SVV_20230811_0_L2A", when(11), scl=CLEAR_SCL, seed=3)
    data = (tmp_path / corrupt.id / "nir.tif").read_bytes()
    (tmp_path / corrupt.id / "nir.tif").write_bytes(data[: len(data) // 2])  # truncated COG
    gone = make_scene(tmp_path, "S2A_39SVV_20230816_0_L2A", when(16), scl=CLEAR_SCL, seed=4)
    (tmp_path / gone.id / "red.tif").unlink()
    scenes = [local_scene(x, tmp_path) for x in (good, far, corrupt, gone)]
    result = read_stack(
        scenes, GRID, bands=("red", "nir"), aoi_mask=ALL, read_config=rc(), mask_config=NO_DILATION
    )
    assert result.stack.scene_ids == ((good.id,),)
    reasons = {s.scene_id: s.reason for s in result.skipped}
    assert reasons[far.id].startswith("outside AOI: data on 0.0% of it")
    assert reasons[corrupt.id].startswith("unreadable asset: nir: corrupt or truncated asset")
    assert reasons[gone.id] == "unreadable asset: red: asset missing (no such file)"
    # With nothing else, the run fails on the assets' fault (a monitor must not call this
    # "waiting" for better weather), saying what to check.
    with pytest.raises(ReadError, match="no scene of 2 could be read") as e:
        read_stack(
            scenes[2:], GRID, bands=("red", "nir"), aoi_mask=ALL, read_config=rc(),
            mask_config=NO_DILATION,
        )  # fmt: skip
    assert not isinstance(e.value, NoScenesError)
    assert "hrefs are intact COGs" in str(e.value) and "\n" not in str(e.value)


def test_local_files_are_not_copied_into_the_cache(tmp_path: Path) -> None:
    """The cache is for network reads (test_fetch_loopback checks a rerun fetches nothing);
    a local COG window reads as fast as a cached array, so it is not duplicated on disk."""
    data = tmp_path / "data"
    scene = local_scene(make_scene(data, "S2A_39SVV_20230801_0_L2A", when(1), scl=CLEAR_SCL), data)
    config = rc(cache_dir=str(tmp_path / "cache"))
    result = read_stack(
        [scene], GRID, bands=BANDS, aoi_mask=ALL, read_config=config, mask_config=NO_DILATION
    )
    assert result.cache_hits == 0 and result.assets_read == 4
    assert not (tmp_path / "cache").exists()


def test_result_does_not_depend_on_worker_count(tmp_path: Path) -> None:
    scenes = [
        local_scene(
            make_scene(tmp_path, f"S2A_39SVV_202308{d:02d}_0_L2A", when(d), scl=CLEAR_SCL, seed=d),
            tmp_path,
        )
        for d in (1, 6, 11)
    ]
    one = read_stack(
        scenes,
        GRID,
        bands=BANDS,
        aoi_mask=ALL,
        read_config=rc(max_workers=1),
        mask_config=MaskConfig(),
    )
    four = read_stack(
        scenes,
        GRID,
        bands=BANDS,
        aoi_mask=ALL,
        read_config=rc(max_workers=4),
        mask_config=MaskConfig(),
    )
    np.testing.assert_array_equal(one.stack.reflectance, four.stack.reflectance)
    assert one.stack.scene_ids == four.stack.scene_ids


def zone38_scene(tmp_path: Path, day: int = 1) -> Any:
    """A tile in UTM zone 38 covering GRID (zone 39): read through the GDAL warper."""
    from rasterio.warp import transform

    xs, ys = transform(CRS, "EPSG:32638", [GRID.bounds[0]], [GRID.bounds[3]])
    x0 = math.floor(xs[0] / 60) * 60 - 600
    y0 = math.ceil(ys[0] / 60) * 60 + 600
    scl = np.full((TILE_PX // 2, TILE_PX // 2), 5, np.uint8)
    return make_scene(
        tmp_path,
        f"S2A_38SQE_202308{day:02d}_0_L2A",
        when(day),
        tile="38SQE",
        scl=scl,
        x0=x0,
        y0=y0,
        crs="EPSG:32638",
    )


def test_other_utm_zone_is_reprojected(tmp_path: Path) -> None:
    """A tile in zone 38 read onto the zone-39 grid equals a whole-tile GDAL reprojection."""
    s = zone38_scene(tmp_path)
    result = read_stack(
        [local_scene(s, tmp_path)],
        GRID,
        bands=("red",),
        aoi_mask=ALL,
        read_config=rc(resampling="nearest"),
        mask_config=NO_DILATION,
    )
    expected = _reference_warp(tmp_path / s.id / "red.tif", GRID, Resampling.nearest)
    got = result.stack.band("red")[0]
    np.testing.assert_array_equal(got, refl(expected))
    assert np.isfinite(got).mean() > 0.5


def test_warped_reads_raise_no_not_georeferenced_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warper path never opens a dataset without a geotransform.

    rasterio wraps arrays given to reproject() in datasets that briefly have no geotransform and
    hides the NotGeoreferencedWarning that causes with warnings.catch_warnings +
    simplefilter("ignore"), which is not thread-safe: another thread of the read pool can restore
    the filters in between, and the warning escapes (seen in `changedet search --probe`). Taking
    that "ignore" away makes the outcome independent of thread timing.
    """
    from rasterio.errors import NotGeoreferencedWarning

    scenes = [local_scene(zone38_scene(tmp_path, day), tmp_path) for day in (1, 2, 3, 4)]
    simplefilter = warnings.simplefilter

    def never_ignore(action: Any, *args: Any, **kwargs: Any) -> None:
        if action != "ignore":
            simplefilter(action, *args, **kwargs)

    for resampling in ("nearest", "bilinear"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", NotGeoreferencedWarning)
            with monkeypatch.context() as patch:
                patch.setattr(warnings, "simplefilter", never_ignore)
                probes = probe_details(
                    scenes,
                    GRID,
                    aoi_mask=ALL,
                    read_config=rc(resampling=resampling, max_workers=4),
                    mask_config=NO_DILATION,
                )
                result = read_stack(
                    scenes,
                    GRID,
                    bands=("red", "swir16"),
                    aoi_mask=ALL,
                    read_config=rc(resampling=resampling, max_workers=4),
                    mask_config=NO_DILATION,
                )
        assert all(p.skip_reason is None and p.coverage == 1.0 for p in probes.values())
        assert len(result.stack.times) == 4 and result.skipped == ()


def test_bad_inputs_are_refused_early(tmp_path: Path) -> None:
    s = local_scene(
        make_scene(tmp_path, "S2A_39SVV_20230801_0_L2A", when(1), scl=CLEAR_SCL), tmp_path
    )
    kw: dict[str, Any] = {"aoi_mask": ALL, "read_config": rc(), "mask_config": NO_DILATION}
    with pytest.raises(ReadError, match="aoi_mask shape"):
        read_stack([s], GRID, bands=BANDS, **{**kw, "aoi_mask": np.ones((3, 3), bool)})
    with pytest.raises(ConfigError, match="must not list 'scl'"):
        read_stack([s], GRID, bands=("red", "scl"), **kw)
    with pytest.raises(ConfigError, match="resampling 'bicubicle'"):
        read_stack([s], GRID, bands=BANDS, **{**kw, "read_config": rc(resampling="bicubicle")})
    no_swir = dataclasses.replace(s, assets={k: v for k, v in s.assets.items() if k != "swir16"})
    with pytest.raises(ReadError, match="swir16"):
        read_stack([no_swir], GRID, bands=BANDS, **kw)


def test_dn_pattern_has_no_nodata() -> None:
    assert (dn_pattern(1, (64, 64), base=1500) > 0).all()


# --------------------------------------------------------------------------------------------
# reproject_array: the one array reprojection (lab's semi-real series warp through it)


def _array_warp(
    array: np.ndarray, src: Grid, dst: Grid, resampling: Resampling, nodata: Any
) -> Any:
    """Plain rasterio on arrays: what reproject_array must reproduce."""
    out = np.full((*array.shape[:-2], *dst.shape), 0 if nodata is None else nodata, array.dtype)
    reproject(
        source=array,
        destination=out,
        src_transform=src.transform,
        src_crs=src.crs,
        dst_transform=dst.transform,
        dst_crs=dst.crs,
        src_nodata=nodata,
        dst_nodata=nodata,
        resampling=resampling,
    )
    return out


def test_reproject_array_equals_rasterio_across_utm_zones() -> None:
    """Zone 38 → zone 39, bilinear with NaN holes (B, H, W) and nearest labels (H, W)."""
    from rasterio.warp import transform

    xs, ys = transform(CRS, "EPSG:32638", [GRID.bounds[0]], [GRID.bounds[3]])
    src = Grid.from_origin("EPSG:32638", xs[0] - 300, ys[0] + 300, 10.0, 160, 150)
    bands = np.stack([dn_pattern(seed, src.shape, base=1500) for seed in (1, 2)])
    reflectance = bands.astype(np.float32) * np.float32(1e-4)
    reflectance[:, 40:60, 30:70] = np.nan
    label = (dn_pattern(3, src.shape, base=0) % 3 == 0).astype(np.uint8)

    got = reproject_array(reflectance, src, GRID, nearest=False, nodata=np.nan)
    expected = _array_warp(reflectance, src, GRID, Resampling.bilinear, np.nan)
    assert got.shape == (2, *GRID.shape) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(got).any() and np.isfinite(got).mean() > 0.5

    got_label = reproject_array(label, src, GRID, nearest=True)
    assert got_label.shape == GRID.shape and got_label.dtype == np.uint8
    np.testing.assert_array_equal(
        got_label, _array_warp(label, src, GRID, Resampling.nearest, None)
    )
    assert set(np.unique(got_label)) == {0, 1}


def test_reproject_array_whole_pixel_shift_is_a_copy() -> None:
    """Same CRS, the destination 3 columns east and 2 rows south: a shifted copy, `nodata` where
    the source ends, for either kernel."""
    src = Grid.from_origin(CRS, TILE_X0, TILE_Y0, 10.0, 40, 30)
    dst = Grid.from_origin(CRS, TILE_X0 + 30, TILE_Y0 - 20, 10.0, 40, 30)
    array = dn_pattern(4, src.shape, base=1000).astype(np.float32)
    for nearest in (True, False):
        got = reproject_array(array, src, dst, nearest=nearest, nodata=-1.0)
        np.testing.assert_array_equal(got[:-2, :-3], array[2:, 3:])
        assert (got[-2:, :] == -1.0).all() and (got[:, -3:] == -1.0).all()


def test_spill_map_takes_entries_from_several_threads_at_once() -> None:
    """The probe's threads keep their SCL windows and clear masks in one SpillMap: entries
    written at once, of both kinds (bytes as they are, bools a bit a pixel), read back intact."""
    from concurrent.futures import ThreadPoolExecutor

    from changedet.read.store import SpillMap

    rng = np.random.default_rng(7)
    arrays = {
        f"s{i}/{kind}": (
            rng.integers(0, 12, (37, 53), dtype=np.uint8)
            if kind == "scl"
            else rng.random((37, 53)) < 0.5
        )
        for i in range(40)
        for kind in ("scl", "clear")
    }
    spilled = SpillMap()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda item: spilled.__setitem__(*item), arrays.items()))
        assert set(spilled) == set(arrays)
        for key, array in arrays.items():
            got = spilled[key]
            assert got.dtype == array.dtype and got.shape == array.shape
            np.testing.assert_array_equal(got, array)
    finally:
        spilled.close()


def test_a_network_failure_is_not_called_a_corrupt_asset() -> None:
    from rasterio.errors import RasterioIOError

    from changedet.read.cog import _classify

    resolve = RasterioIOError("CURL error: Could not resolve host: sentinel-cogs.s3.example")
    assert _classify(resolve) == ("host not found (no network, or a mistyped host)", True)
    tls = RasterioIOError("CURL error: SSL certificate problem: unable to get local issuer")
    reason, transient = _classify(tls)
    assert reason.startswith("network error (CURL error: SSL certificate problem") and transient
    assert _classify(RasterioIOError("TIFFReadEncodedTile() failed."))[0].startswith("corrupt")


def test_an_asset_without_a_crs_says_what_that_may_mean(tmp_path: Path) -> None:
    """A body cut short reads as a file without georeferencing: the reason names both."""
    from changedet.read.cog import _read_onto_grid

    path = tmp_path / "bare.tif"
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint16"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio: no geotransform, as asked
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.ones((1, 8, 8), dtype=np.uint16))
        with pytest.raises(
            ReadError,
            match=r"no CRS: a file without georeferencing, or one whose transfer was cut short",
        ):
            _read_onto_grid(str(path), GRID, resampling=Resampling.nearest, nodata=None)


def test_no_usable_scene_names_the_setting_its_reasons_come_from() -> None:
    """The hint named read.min_aoi_clear_fraction whatever the reason (CLI audit)."""
    from changedet.read.stack import _nothing_read

    def said(*reasons: str) -> str:
        skipped = [SkippedScene(f"S{i}", r) for i, r in enumerate(reasons)]
        return str(_nothing_read([], skipped, n_scenes=len(reasons)))

    outside = said("outside AOI: data on 3.0% of it (< 100%)")
    assert outside.endswith("widen the dates or lower read.min_aoi_coverage")
    cloudy = said("cloudy around the AOI: 5% of the window read clear < 20% required")
    assert cloudy.endswith("widen the dates or lower read.min_aoi_clear_fraction")
    both = said("outside AOI: data on 3.0%", "cloudy around the AOI: 5%")
    assert both.endswith("lower read.min_aoi_coverage / read.min_aoi_clear_fraction")
