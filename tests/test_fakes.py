"""The in-memory seams (`changedet.lab.fakes`) are honest: they answer like the real stages on
what tests give them, and refuse what they cannot answer instead of succeeding silently."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from changedet.aoi import aoi_mask, grid_for
from changedet.config import CatalogConfig, MaskConfig, OutputConfig, ReadConfig
from changedet.errors import ConfigError, NoScenesError, OutputError, ReadError
from changedet.lab.fakes import (
    FakeCatalog,
    FakeProber,
    MemoryWriter,
    StackReader,
    scenes_for_stack,
)
from changedet.models import AOI, Asset, ChangeMap, Grid, RunResult, SkippedScene, Stack

CATALOG = CatalogConfig()
READ = ReadConfig(bands=("blue", "green", "red"))
MASK = MaskConfig()
RGB = ("blue", "green", "red")


@pytest.fixture
def aoi(make_aoi: Callable[..., AOI]) -> AOI:
    return make_aoi(size_m=300.0)


@pytest.fixture
def stack(aoi: AOI, make_stack: Callable[..., Stack]) -> Stack:
    dates = [date(2023, m, 10) for m in range(1, 7)]
    return make_stack(grid_for(aoi), dates=dates, bands=("blue", "green", "red", "nir"))


def _read(reader: StackReader, scene_ids: list[str], grid: Grid, aoi: AOI, bands=RGB):  # type: ignore[no-untyped-def]
    scenes = [s for s in scenes_for_stack(reader.stack) if s.id in scene_ids]
    return reader(
        scenes, grid, bands=bands, aoi_mask=aoi_mask(aoi, grid), read_config=READ, mask_config=MASK
    )


def test_catalog_keeps_the_dates_collection_footprint_and_cloud_limit(
    aoi: AOI, stack: Stack, make_aoi: Callable[..., AOI]
) -> None:
    scenes = scenes_for_stack(stack)
    other = replace(scenes[1], id="other-collection", collection="landsat-c2-l2")
    cloudy = replace(scenes[2], id="cloudy", cloud_cover=95.0)
    catalog = FakeCatalog([*scenes, other, cloudy], notes=("a note",))
    found = catalog(
        aoi, CATALOG, start=date(2023, 2, 1), end=date(2023, 4, 30), bands=(*RGB, "scl")
    )
    assert [s.id for s in found.scenes] == [s.id for s in scenes[1:4]]
    assert [d.scene_id for d in found.dropped] == ["cloudy"]
    assert "catalog.max_cloud_cover" in found.dropped[0].reason
    assert found.notes == ("a note",) and found.items_seen == 4

    far = make_aoi(2.33, 48.86, aoi_id="paris")  # no footprint covers it
    with pytest.raises(NoScenesError, match="paris"):
        catalog(far, CATALOG, start=date(2023, 1, 1), end=date(2023, 12, 31), bands=RGB)
    empty = catalog(
        far, CATALOG, start=date(2023, 1, 1), end=date(2023, 12, 31), bands=RGB, allow_empty=True
    )
    assert empty.scenes == ()
    with pytest.raises(ConfigError, match="before start"):
        catalog(aoi, CATALOG, start=date(2023, 5, 1), end=date(2023, 4, 1), bands=RGB)


def test_catalog_drops_scenes_without_the_assets_to_read(aoi: AOI, stack: Stack) -> None:
    scenes = scenes_for_stack(stack)
    no_red = replace(scenes[0], assets={k: v for k, v in scenes[0].assets.items() if k != "red"})
    found = FakeCatalog([no_red, *scenes[1:]])(
        aoi, CATALOG, start=date(2023, 1, 1), end=date(2023, 12, 31), bands=RGB
    )
    assert no_red.id not in {s.id for s in found.scenes}
    assert found.dropped == (SkippedScene(no_red.id, "missing asset(s) for band(s) red"),)


def test_reader_cuts_the_stack_to_the_scenes_bands_and_window(aoi: AOI, stack: Stack) -> None:
    reader = StackReader(stack)
    ids = [stack.scene_ids[t][0] for t in (1, 4)]
    window = stack.grid.window(3, 5, 10, 12)
    got = _read(reader, ids, window, aoi, bands=("red", "blue")).stack
    assert got.grid == window and got.bands == ("red", "blue")
    assert got.times == (stack.times[1], stack.times[4])
    red, blue = stack.bands.index("red"), stack.bands.index("blue")
    np.testing.assert_array_equal(
        got.reflectance, stack.reflectance[[1, 4]][:, [red, blue], 3:13, 5:17]
    )
    assert reader.requests == [(tuple(ids), window)]


def test_reader_gives_no_data_beyond_the_stack(aoi: AOI, stack: Stack) -> None:
    reader = StackReader(stack)
    ids = [stack.scene_ids[t][0] for t in (1, 4)]
    wider = stack.grid.window(-2, -3, stack.grid.height + 4, stack.grid.width + 6)
    got = _read(reader, ids, wider, aoi, bands=("red",)).stack
    assert got.grid == wider
    held = got.reflectance[:, 0, 2:-2, 3:-3]
    np.testing.assert_array_equal(held, stack.reflectance[[1, 4], stack.bands.index("red")])
    assert np.isnan(got.reflectance[:, :, :2]).all() and not got.clear[:, :, :3].any()
    assert not got.clear[:, -2:].any() and not got.clear[:, :, -3:].any()


@pytest.mark.parametrize(
    "wrong",
    [
        lambda g, _: g.window(-20, 0, 5, 5),  # wholly outside
        lambda g, make_grid: make_grid(g.width, g.height, crs=g.crs),  # same lattice, elsewhere
        lambda g, _: Grid("EPSG:32640", g.transform, g.width, g.height),  # another CRS
        lambda g, _: replace(g, transform=g.transform @ Affine.translation(0.5, 0)),  # off-lattice
        lambda g, _: g.scaled(2),  # another resolution
    ],
)
def test_reader_refuses_a_grid_it_holds_no_pixels_for(
    aoi: AOI,
    stack: Stack,
    make_grid: Callable[..., Grid],
    wrong: Callable[[Grid, Callable[..., Grid]], Grid],
) -> None:
    with pytest.raises(ValueError, match="StackReader"):
        _read(StackReader(stack), [stack.scene_ids[0][0]], wrong(stack.grid, make_grid), aoi)


def test_reader_refuses_what_the_real_reader_refuses(aoi: AOI, stack: Stack) -> None:
    reader = StackReader(stack, skipped=[SkippedScene("gone", "cloudy around the AOI")])
    scenes = scenes_for_stack(stack)
    grid = stack.grid
    inside = aoi_mask(aoi, grid)
    common = {"read_config": READ, "mask_config": MASK}
    with pytest.raises(ReadError, match="aoi_mask shape"):
        reader(scenes, grid, bands=RGB, aoi_mask=inside[1:], **common)
    with pytest.raises(ConfigError, match="scl"):
        reader(scenes, grid, bands=(*RGB, "scl"), aoi_mask=inside, **common)
    no_red = replace(scenes[0], assets={"blue": scenes[0].assets["blue"]})
    with pytest.raises(ReadError, match="lack assets"):
        reader([no_red], grid, bands=RGB, aoi_mask=inside, **common)
    with_swir = replace(scenes[0], assets={**scenes[0].assets, "swir16": Asset("memory://x")})
    with pytest.raises(ValueError, match="holds bands"):
        reader([with_swir], grid, bands=("swir16",), aoi_mask=inside, **common)
    stranger = replace(scenes[0], id="never-read")
    with pytest.raises(ValueError, match="never-read"):
        reader([stranger], grid, bands=RGB, aoi_mask=inside, **common)
    gone = replace(scenes[0], id="gone")  # skipped by this reader: nothing left to stack
    with pytest.raises(NoScenesError):
        reader([gone], grid, bands=RGB, aoi_mask=inside, **common)
    result = reader([gone, *scenes[:2]], grid, bands=RGB, aoi_mask=inside, **common)
    assert result.skipped == (SkippedScene("gone", "cloudy around the AOI"),)
    assert len(result.stack.times) == 2 and result.probes == dict.fromkeys(
        [s.id for s in scenes[:2]], 1.0
    )


def test_reader_cannot_take_a_mosaic_apart(aoi: AOI, stack: Stack) -> None:
    mosaic = replace(stack, scene_ids=(("a", "b"), *stack.scene_ids[1:]))
    with pytest.raises(ValueError, match="mosaic"):
        _read(StackReader(mosaic), ["a"], mosaic.grid, aoi)


def test_prober_applies_the_real_selection_rule(aoi: AOI, stack: Stack) -> None:
    scenes = list(scenes_for_stack(stack))
    scenes[0] = replace(scenes[0], assets={k: v for k, v in scenes[0].assets.items() if k != "scl"})
    fractions = {s.id: 0.9 for s in scenes[1:]} | {scenes[1].id: 0.1}
    prober = FakeProber(fractions, coverage={scenes[2].id: 0.001})
    inside = aoi_mask(aoi, stack.grid)
    probes = prober(scenes, stack.grid, aoi_mask=inside, read_config=READ, mask_config=MASK)
    assert not probes[scenes[0].id].has_scl and probes[scenes[0].id].skip_reason is None
    assert probes[scenes[1].id].skip_reason.startswith("cloudy around the AOI")  # type: ignore[union-attr]
    assert probes[scenes[2].id].skip_reason.startswith("outside AOI")  # type: ignore[union-attr]
    assert probes[scenes[3].id].skip_reason is None
    with pytest.raises(ValueError, match="no clear fraction"):
        FakeProber({})(scenes[1:], stack.grid, aoi_mask=inside, read_config=READ, mask_config=MASK)


def test_memory_writer_keeps_the_result_and_refuses_what_the_writer_refuses(
    make_run_result: Callable[..., RunResult], tmp_path: Path
) -> None:
    writer = MemoryWriter()
    result = make_run_result()
    assert writer(result, tmp_path / "aoi", config=OutputConfig()) == []
    assert writer.results == [result] and writer.out_dirs == [tmp_path / "aoi"]
    assert writer.manifests[0]["aoi"]["id"] == result.aoi.id
    assert list(tmp_path.iterdir()) == []
    h, w = result.grid.shape
    off_grid = ChangeMap(
        result.grid, np.zeros((h, w + 1), np.float32), np.zeros((h, w + 1), np.float32),
        np.zeros((h, w + 1), bool), 3.0,
    )  # fmt: skip
    with pytest.raises(OutputError, match="does not match the grid"):
        writer(replace(result, change=off_grid), tmp_path / "aoi", config=OutputConfig())
    no_red = replace(result.before, bands=("blue", "green", "nir", "swir16"))
    with pytest.raises(OutputError, match="red"):
        writer(replace(result, before=no_red), tmp_path / "aoi", config=OutputConfig())
    assert len(writer.results) == 1
