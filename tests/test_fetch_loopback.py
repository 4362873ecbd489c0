"""End to end over real loopback servers: `rustac serve` (STAC API) + a range-request HTTP server
holding COGs. search → select → read must equal a direct local read; faults are retried, then
reported clearly; broken assets skip their scene; remote catalogs cannot point at local files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from loopback import (
    TILE_PX,
    TILE_X0,
    TILE_Y0,
    Fault,
    FaultProxy,
    RangeServer,
    RustacServer,
    SynthScene,
    make_scene,
    utm_box_to_lonlat,
    write_collection,
)

from changedet.aoi import aoi_mask, grid_for
from changedet.catalog.search import search_scenes
from changedet.config import CatalogConfig, MaskConfig, ReadConfig
from changedet.errors import CatalogError, ReadError, UnsafeHrefError
from changedet.models import AOI, Grid, Scene, SearchResult
from changedet.read.cog import clear_http_cache
from changedet.read.stack import read_stack

pytestmark = pytest.mark.network

BANDS = ("red", "nir", "swir16")
START, END = date(2023, 7, 1), date(2023, 8, 31)
AOI_T = AOI(
    "loop", "loop", utm_box_to_lonlat(TILE_X0 + 600, TILE_Y0 - 1800, TILE_X0 + 1800, TILE_Y0 - 600)
)
GRID = grid_for(AOI_T)
MASK = aoi_mask(AOI_T, GRID)
CLEAR = np.full((TILE_PX // 2, TILE_PX // 2), 4, np.uint8)


@dataclass
class World:
    root: Path
    http: RangeServer
    api: RustacServer
    scenes: dict[str, SynthScene]
    local_items: Path


def _when(day: int) -> datetime:
    return datetime(2023, 8, day, 7, 5, 30, tzinfo=UTC)


def _build(root: Path, href_base: str) -> dict[str, SynthScene]:
    cloudy = CLEAR.copy()
    cloudy[20:100, 20:100] = 9  # cloud over the whole AOI, but only 39 % of the scene
    made = [
        make_scene(
            root, "S2A_39SVV_20230801_0_L2A", _when(1), scl=CLEAR, seed=1, href_base=href_base
        ),
        make_scene(
            root,
            "S2A_39SVV_20230806_0_L2A",
            _when(6),
            scl=cloudy,
            cloud_cover=39.0,
            seed=2,
            href_base=href_base,
        ),
        make_scene(
            root,
            "S2A_39SVV_20230811_0_L2A",
            _when(11),
            scl=CLEAR,
            cloud_cover=95.0,
            seed=3,
            href_base=href_base,
        ),
        make_scene(
            root,
            "S2A_39SVV_20230816_0_L2A",
            _when(16),
            scl=CLEAR,
            seed=4,
            href_base=href_base,
            updated="2023-08-16T12:00:00Z",
        ),
        make_scene(  # the same datatake reprocessed later: must win
            root,
            "S2A_39SVV_20230816_1_L2A",
            _when(16),
            scl=CLEAR,
            seed=5,
            href_base=href_base,
            updated="2023-11-02T12:00:00Z",
        ),
        make_scene(  # right part of the AOI is nodata on this tile...
            root,
            "S2A_39SVV_20230821_0_L2A",
            _when(21),
            scl=CLEAR,
            seed=6,
            nodata_cols=slice(120, None),
            href_base=href_base,
        ),
        make_scene(  # ...and covered by the neighbouring tile on the same date
            root,
            "S2A_39SWV_20230821_0_L2A",
            _when(21),
            tile="39SWV",
            scl=CLEAR,
            seed=7,
            href_base=href_base,
        ),
    ]
    return {s.id: s for s in made}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("loop")
    with RangeServer(root) as http:
        scenes = _build(root, http.url)
        api_dir = root / "api"
        coll, items = write_collection(api_dir, [s.item for s in scenes.values()])
        # The same items with relative hrefs: a local static catalog for the direct read.
        local = [
            json.loads(json.dumps(s.item).replace(f"{http.url}/", "")) for s in scenes.values()
        ]
        local_items = root / "items.json"
        local_items.write_text(json.dumps({"type": "FeatureCollection", "features": local}))
        with RustacServer([coll, items]) as api:
            yield World(root, http, api, scenes, local_items)


def catalog(url: str, **kw: Any) -> CatalogConfig:
    base: dict[str, Any] = {"retries": 3, "backoff_s": 0.01, "timeout_s": 5.0}
    base.update(kw)
    return CatalogConfig(url=url, **base)


def reading(**kw: Any) -> ReadConfig:
    base: dict[str, Any] = {
        "cache_dir": "",
        "max_workers": 3,
        "retries": 1,
        "backoff_s": 0.01,
        "timeout_s": 5.0,
    }
    base.update(kw)
    return ReadConfig(**base)


def search(url: str, **kw: Any) -> SearchResult:
    return search_scenes(AOI_T, catalog(url, **kw), start=START, end=END, bands=BANDS)


def read(scenes: Any, **kw: Any) -> Any:
    clear_http_cache()  # every read in this file starts cold: requests really reach the server
    return read_stack(
        list(scenes),
        GRID,
        bands=BANDS,
        aoi_mask=MASK,
        read_config=reading(**kw),
        mask_config=MaskConfig(),
    )


def with_query(scene: Scene, tag: str) -> Scene:
    """Same asset, a URL of its own (the server ignores the query): a fault hits only this test."""
    assets = {b: dataclasses.replace(a, href=f"{a.href}?{tag}") for b, a in scene.assets.items()}
    return dataclasses.replace(scene, assets=assets)


# ---------------------------------------------------------------------------------- the happy path


def test_search_select_read_equals_local_read(world: World) -> None:
    found = search(world.api.url)
    assert [s.id for s in found.scenes] == [
        "S2A_39SVV_20230801_0_L2A",
        "S2A_39SVV_20230806_0_L2A",
        "S2A_39SVV_20230816_1_L2A",
        "S2A_39SVV_20230821_0_L2A",
        "S2A_39SWV_20230821_0_L2A",
    ]
    assert all(s.assets["red"].href.startswith(world.http.url) for s in found.scenes)
    dropped = {d.scene_id: d.reason for d in found.dropped}
    assert dropped["S2A_39SVV_20230811_0_L2A"].startswith("scene cloud cover 95.0% > 80%")
    assert dropped["S2A_39SVV_20230816_0_L2A"].startswith("duplicate of S2A_39SVV_20230816_1_L2A")
    # rustac ignores `query`/`filter` and says so through /conformance: filtered here instead.
    assert "cloud filter applied client-side: server lacks query/filter conformance" in found.notes

    world.http.stats.reset()
    remote = read(found.scenes)
    served = world.http.stats.bytes_sent
    skipped = {s.scene_id: s.reason for s in remote.skipped}
    assert list(skipped) == ["S2A_39SVV_20230806_0_L2A"]
    assert skipped["S2A_39SVV_20230806_0_L2A"].startswith(
        "cloudy around the AOI: 0% of the window read clear < 20% required"
    )
    assert "scene cloud 39%" in skipped["S2A_39SVV_20230806_0_L2A"]
    stack = remote.stack
    assert [t.date() for t in stack.times] == [
        date(2023, 8, 1),
        date(2023, 8, 16),
        date(2023, 8, 21),
    ]
    assert stack.scene_ids[2] == ("S2A_39SWV_20230821_0_L2A", "S2A_39SVV_20230821_0_L2A")
    assert remote.bytes_fetched == served > 0  # GDAL's own count equals what the server sent

    local_found = search(str(world.local_items))
    assert [s.id for s in local_found.scenes] == [s.id for s in found.scenes]
    assert not local_found.scenes[0].assets["red"].href.startswith("http")
    local = read(local_found.scenes)
    np.testing.assert_array_equal(remote.stack.reflectance, local.stack.reflectance)
    np.testing.assert_array_equal(remote.stack.clear, local.stack.clear)
    assert remote.stack.scl is not None and local.stack.scl is not None
    np.testing.assert_array_equal(remote.stack.scl, local.stack.scl)

    # And against the DNs themselves: reflectance = DN * 1e-4 - 0.1 on the AOI window.
    col0 = round((GRID.transform.c - TILE_X0) / 10)
    row0 = round((TILE_Y0 - GRID.transform.f) / 10)
    dn = world.scenes["S2A_39SVV_20230801_0_L2A"].dn["red"][
        row0 : row0 + GRID.height, col0 : col0 + GRID.width
    ]
    expected = dn.astype(np.float32) * np.float32(1e-4) + np.float32(-0.1)
    np.testing.assert_array_equal(stack.band("red")[0], expected)
    assert stack.clear[:, MASK].all()  # every kept date is clear over the whole AOI


def test_rerun_with_cache_fetches_nothing(world: World, tmp_path: Path) -> None:
    scenes = search(world.api.url).scenes
    first = read(scenes, cache_dir=str(tmp_path / "cache"))
    assert first.bytes_fetched > 0
    world.http.stats.reset()
    second = read(scenes, cache_dir=str(tmp_path / "cache"))
    assert world.http.stats.requests == 0 and second.bytes_fetched == 0
    assert second.cache_hits == first.assets_read
    np.testing.assert_array_equal(first.stack.reflectance, second.stack.reflectance)
    # A damaged cache entry is a miss: only that asset is fetched again.
    entries = sorted((tmp_path / "cache").rglob("*.npyc"))
    assert len(entries) == first.assets_read
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    third = read(scenes, cache_dir=str(tmp_path / "cache"))
    assert third.assets_read == 1 and third.cache_hits == first.assets_read - 1
    np.testing.assert_array_equal(first.stack.reflectance, third.stack.reflectance)


def test_a_scene_reprocessed_in_place_is_fetched_again(tmp_path: Path) -> None:
    """Earth Search rewrote scenes in place (same id and hrefs, new pixels, a later `updated`):
    the cached pixels of the old version are not the new one's."""
    root, items = tmp_path / "served", tmp_path / "items.json"
    scene_id = "S2A_39SVV_20230801_0_L2A"

    def publish(seed: int, updated: str) -> Any:
        made = make_scene(
            root, scene_id, _when(1), scl=CLEAR, seed=seed, href_base=http.url, updated=updated
        )
        items.write_text(json.dumps({"type": "FeatureCollection", "features": [made.item]}))
        return search(str(items)).scenes

    with RangeServer(root) as http:
        old = read(publish(1, "2023-08-01T12:00:00Z"), cache_dir=str(tmp_path / "cache"))
        scenes = publish(2, "2023-10-01T12:00:00Z")
        new = read(scenes, cache_dir=str(tmp_path / "cache"))
        uncached = read(scenes)
    assert new.cache_hits == 0 and new.assets_read == old.assets_read
    np.testing.assert_array_equal(new.stack.reflectance, uncached.stack.reflectance)
    assert not np.array_equal(new.stack.reflectance, old.stack.reflectance)


def test_garbled_cache_entries_are_detected_and_the_result_equals_a_clean_run(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scenes = search(world.api.url).scenes
    cache = tmp_path / "cache"
    clean = read(scenes, cache_dir=str(cache))
    entries = sorted(p for p in cache.rglob("*") if p.is_file())
    assert len(entries) == clean.assets_read >= 6
    # Garble the last bytes of every other entry: headers intact, pixels wrong.
    garbled = entries[::2]
    for path in garbled:
        blob = bytearray(path.read_bytes())
        for i in range(1, 65):
            blob[-i] ^= 0x5A
        path.write_bytes(bytes(blob))
    # And one entry made for another asset, copied over a third's name: stale, not damaged.
    entries[1].write_bytes(entries[3].read_bytes())
    world.http.stats.reset()
    with caplog.at_level(logging.WARNING, logger="changedet"):
        again = read(scenes, cache_dir=str(cache))
    np.testing.assert_array_equal(again.stack.reflectance, clean.stack.reflectance)
    np.testing.assert_array_equal(again.stack.clear, clean.stack.clear)
    assert again.assets_read == len(garbled) + 1  # only the discarded entries were fetched again
    assert again.cache_hits == clean.assets_read - len(garbled) - 1
    (note,) = [n for n in again.notes if n.startswith("pixel cache:")]
    assert f"{len(garbled) + 1} damaged or stale entries discarded" in note
    assert "checksum mismatch" in note
    warnings = [r.getMessage() for r in caplog.records if "pixel cache" in r.getMessage()]
    assert len(warnings) == len(garbled) + 1
    assert any("made for another asset or grid" in w for w in warnings)
    # The discarded entries were written again, whole: a third run fetches nothing.
    world.http.stats.reset()
    third = read(scenes, cache_dir=str(cache))
    assert world.http.stats.requests == 0 and third.assets_read == 0
    assert not [n for n in third.notes if n.startswith("pixel cache")]


def test_a_folder_where_an_entry_goes_is_one_entry_discarded_not_the_cache_lost(
    world: World, tmp_path: Path
) -> None:
    scenes = search(world.api.url).scenes
    cache = tmp_path / "cache"
    clean = read(scenes, cache_dir=str(cache))
    entry = sorted(p for p in cache.rglob("*") if p.is_file())[0]
    entry.unlink()
    (entry / "inside").mkdir(parents=True)  # a folder, with something in it, at its name
    again = read(scenes, cache_dir=str(cache))
    assert again.assets_read == 1 and again.cache_hits == clean.assets_read - 1
    assert not [n for n in again.notes if "unusable" in n]
    assert entry.is_file()  # written again in place of the folder
    world.http.stats.reset()
    third = read(scenes, cache_dir=str(cache))
    assert world.http.stats.requests == 0 and third.assets_read == 0


def test_an_unusable_cache_folder_is_reported_once_and_the_run_goes_on(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scenes = search(world.api.url).scenes
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="changedet"):
        first = read(scenes, cache_dir=str(blocker / "cache"))
        second = read(scenes, cache_dir=str(blocker / "cache"))
    np.testing.assert_array_equal(first.stack.reflectance, second.stack.reflectance)
    for result in (first, second):
        (note,) = [n for n in result.notes if "pixel cache folder" in n]
        assert "unusable" in note and result.cache_hits == 0
    warnings = [r.getMessage() for r in caplog.records if "pixel cache folder" in r.getMessage()]
    assert len(warnings) == 1 and "read.cache_dir" in warnings[0]


# ---------------------------------------------------------------------------------- catalog faults


def test_http_500s_are_retried(world: World) -> None:
    with FaultProxy(world.api.url) as proxy:
        proxy.faults.append(Fault("POST /search", times=2))
        proxy.faults.append(Fault("GET / ", times=1))  # the landing page too
        found = search(proxy.url)
        assert len(found.scenes) == 5
        assert sum(p.startswith("POST /search") for p in proxy.stats.paths) == 3
        assert all(s.assets["red"].href.startswith(world.http.url) for s in found.scenes)


def test_persistent_500_ends_with_one_clear_line(world: World) -> None:
    with FaultProxy(world.api.url) as proxy:
        proxy.faults.append(Fault("POST /search", times=-1))
        with pytest.raises(CatalogError) as info:
            search(proxy.url)
    message = str(info.value)
    assert message == (
        f"catalog: {proxy.url}/search did not answer after 4 tries (HTTP 500); "
        "check the URL or try later"
    )


def test_retries_count_the_requests_after_the_first(world: World) -> None:
    with FaultProxy(world.api.url) as proxy:
        proxy.faults.append(Fault("POST /search", times=1))
        assert len(search(proxy.url, retries=1).scenes) == 5  # one failure, one retry
        proxy.faults.append(Fault("POST /search", times=1))
        with pytest.raises(CatalogError, match=r"did not answer after 1 try \(HTTP 500\)"):
            search(proxy.url, retries=0)


def test_a_rate_limit_is_waited_for_as_the_server_asks(world: World) -> None:
    """429 with Retry-After: the retry waits what the server asked (not the shorter backoff);
    a longer wait than changedet follows, or a limit that never lifts, is said as such."""
    slow_down = {"Retry-After": "1"}
    with FaultProxy(world.api.url) as proxy:
        proxy.faults.append(Fault("POST /search", status=429, times=1, headers=slow_down))
        t0 = time.monotonic()
        assert len(search(proxy.url, retries=1, backoff_s=0.01).scenes) == 5
        assert time.monotonic() - t0 >= 1.0
        proxy.faults[:] = [Fault("POST /search", status=429, times=-1, headers=slow_down)]
        with pytest.raises(
            CatalogError, match=r"refused 2 tries as too many requests \(HTTP 429\)"
        ):
            search(proxy.url, retries=1, backoff_s=0.01)
        proxy.faults[:] = [
            Fault("POST /search", status=429, times=-1, headers={"Retry-After": "3600"})
        ]
        t0 = time.monotonic()
        with pytest.raises(CatalogError, match=r"asks to wait 3600 s .* try later"):
            search(proxy.url, retries=3, backoff_s=0.01)
        assert time.monotonic() - t0 < 5.0  # said at once, not after an hour


def test_timeouts_are_retried_then_reported(world: World) -> None:
    with FaultProxy(world.api.url) as proxy:
        proxy.faults.append(Fault("POST /search", kind="delay", seconds=1.5, times=1))
        config = catalog(proxy.url, timeout_s=0.5)
        found = search_scenes(AOI_T, config, start=START, end=END, bands=BANDS)
        assert len(found.scenes) == 5
        proxy.faults[:] = [Fault("POST /search", kind="delay", seconds=1.0, times=-1)]
        config = dataclasses.replace(config, retries=2)
        with pytest.raises(CatalogError, match=r"did not answer after 3 tries \(timed out\)"):
            search_scenes(AOI_T, config, start=START, end=END, bands=BANDS)


def test_paging_error_mid_search_is_retried(world: World) -> None:
    direct = search(world.api.url, page_size=2)
    with FaultProxy(world.api.url) as proxy:
        proxy.faults.append(Fault('"skip": 4', times=2))  # the third page fails twice
        paged = search(proxy.url, page_size=2)
        pages = [p for p in proxy.stats.paths if p.startswith("POST /search")]
    assert [s.id for s in paged.scenes] == [s.id for s in direct.scenes]
    assert paged.items_seen == direct.items_seen == 7
    assert sum('"skip": 4' in p for p in pages) == 3  # two failures, one success
    assert len(pages) == 4 + 2  # 4 pages of 2 (7 items) + 2 retries
    assert paged.complete and direct.complete


def test_a_search_that_stops_paging_early_says_it_is_incomplete(world: World) -> None:
    """The monitor infers that a scene the search did not return was withdrawn only from a
    complete search: one cut at max_items, or at the page bound, is not."""
    capped = search(world.api.url, page_size=2, max_items=4)
    assert capped.items_seen == 4 and not capped.complete
    assert any("max_items=4" in note for note in capped.notes)
    assert capped.stopped is not None and "max_items=4" in capped.stopped
    assert search(world.api.url, page_size=2).complete
    # Exactly as many items as max_items is all of them, when no page follows.
    exact = search(world.api.url, page_size=2, max_items=7)
    assert (exact.items_seen, exact.complete, exact.stopped) == (7, True, None)


def test_client_errors_are_not_retried(world: World) -> None:
    with FaultProxy(world.api.url) as proxy:
        proxy.faults.append(Fault("POST /search", status=400, times=-1))
        with pytest.raises(CatalogError, match="answered HTTP 400"):
            search(proxy.url)
        assert sum(p.startswith("POST /search") for p in proxy.stats.paths) == 1


def test_remote_api_pointing_at_local_files_is_refused(world: World, tmp_path: Path) -> None:
    item = json.loads(json.dumps(world.scenes["S2A_39SVV_20230801_0_L2A"].item))
    for asset in item["assets"].values():
        asset["href"] = "file://" + str(world.root / "S2A_39SVV_20230801_0_L2A" / "red.tif")
    coll, items = write_collection(tmp_path / "evil", [item])
    with RustacServer([coll, items]) as evil, pytest.raises(UnsafeHrefError, match="refused"):
        search(evil.url)


# ---------------------------------------------------------------------------------- read faults


def _scene(world: World, scene_id: str, tag: str) -> Scene:
    found = search(str(world.local_items))
    scene = next(s for s in search(world.api.url).scenes if s.id == scene_id)
    assert found.scenes  # the local catalog is intact
    return with_query(scene, tag)


def test_read_retries_transient_500(world: World) -> None:
    scene = _scene(world, "S2A_39SVV_20230801_0_L2A", "retry500")
    world.http.faults[:] = [Fault("red.tif?retry500", times=2)]
    try:
        result = read([scene])
    finally:
        world.http.faults.clear()
    assert result.skipped == ()
    clean = read([with_query(scene, "clean")])
    np.testing.assert_array_equal(result.stack.reflectance, clean.stack.reflectance)


def test_broken_assets_skip_their_scene_and_the_run_completes(world: World, tmp_path: Path) -> None:
    good = _scene(world, "S2A_39SVV_20230801_0_L2A", "good")
    down = _scene(world, "S2A_39SVV_20230816_1_L2A", "down")
    slow = _scene(world, "S2A_39SVV_20230821_0_L2A", "slow")
    # A truncated copy of a COG, served over HTTP.
    src = world.root / "S2A_39SWV_20230821_0_L2A"
    cut = world.root / "truncated"
    shutil.copytree(src, cut, dirs_exist_ok=True)
    data = (cut / "nir.tif").read_bytes()
    (cut / "nir.tif").write_bytes(data[: len(data) // 3])
    truncated = _scene(world, "S2A_39SWV_20230821_0_L2A", "trunc")
    truncated = dataclasses.replace(
        truncated,
        assets={
            b: dataclasses.replace(
                a, href=a.href.replace("S2A_39SWV_20230821_0_L2A/", "truncated/")
            )
            for b, a in truncated.assets.items()
        },
    )
    world.http.faults[:] = [
        Fault("red.tif?down", times=-1),  # HTTP 500 forever
        Fault("swir16.tif?slow", kind="delay", seconds=2.0, times=-1),  # longer than the timeout
    ]
    try:
        result = read([good, down, slow, truncated], timeout_s=1.0)
    finally:
        world.http.faults.clear()
    reasons = {s.scene_id: s.reason for s in result.skipped}
    assert reasons == {
        "S2A_39SVV_20230816_1_L2A": "unreadable asset: red: HTTP 500 after 2 tries",
        "S2A_39SVV_20230821_0_L2A": "unreadable asset: swir16: timed out after 2 tries",
        "S2A_39SWV_20230821_0_L2A": reasons.get("S2A_39SWV_20230821_0_L2A", "missing"),
    }
    assert reasons["S2A_39SWV_20230821_0_L2A"].startswith(
        "unreadable asset: nir: corrupt or truncated asset"
    )
    assert result.stack.scene_ids == (("S2A_39SVV_20230801_0_L2A",),)
    assert "?" not in " ".join(reasons.values())  # no query strings (tokens) in reasons
    assert all(s.unreadable for s in result.skipped)  # so the run's headline warns of them


def test_a_scene_whose_scl_cannot_be_read_is_skipped_as_unreadable(world: World) -> None:
    good = _scene(world, "S2A_39SVV_20230801_0_L2A", "sclok")
    gone = _scene(world, "S2A_39SVV_20230806_0_L2A", "sclgone")
    world.http.faults[:] = [Fault("scl.tif?sclgone", status=403, times=-1)]  # an expired link
    try:
        result = read([good, gone])
    finally:
        world.http.faults.clear()
    (skipped,) = result.skipped
    assert skipped.scene_id == gone.id and skipped.reason.startswith("SCL unreadable: ")
    assert skipped.unreadable  # the run's headline warns of it; a cloudy scene is not flagged
    assert result.stack.scene_ids == ((good.id,),)


def test_network_down_for_every_scene_is_a_read_error(world: World) -> None:
    scene = _scene(world, "S2A_39SVV_20230801_0_L2A", "alldown")
    world.http.faults[:] = [Fault("?alldown", times=-1)]
    try:
        with pytest.raises(ReadError, match=r"every scene failed on network errors.*HTTP 500"):
            read([scene])
    finally:
        world.http.faults.clear()


def test_tokens_never_reach_logs_or_reasons(world: World, caplog: pytest.LogCaptureFixture) -> None:
    scene = _scene(world, "S2A_39SVV_20230801_0_L2A", "st=1&sig=SECRET-TOKEN")
    world.http.faults[:] = [Fault("sig=SECRET-TOKEN", times=-1)]
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(ReadError) as info:
            read([scene])
    finally:
        world.http.faults.clear()
    assert "SECRET" not in str(info.value)
    assert caplog.records  # GDAL's errors were logged (redacted), not silenced
    assert "SECRET" not in caplog.text
    with FaultProxy(world.api.url) as proxy:
        proxy.faults.append(Fault("POST /search", times=-1))
        with pytest.raises(CatalogError) as err:
            search(f"{proxy.url}/?subscription-key=SECRET-KEY")
    assert "SECRET" not in str(err.value) and "SECRET" not in caplog.text


SAMPLE = Path(__file__).resolve().parents[1] / "sample_tiles" / "modarres"


def test_sample_tiles_over_loopback_equal_the_local_catalog(tmp_path: Path) -> None:
    """The synthetic Earth Search-like sample (static catalog with a reprocessed duplicate and
    three harmonised dates) served through rustac + range server reads like the local copy."""
    if not (SAMPLE / "items.json").is_file():
        pytest.skip("sample_tiles/modarres not generated")
    from changedet.aoi import load_aois

    aoi = load_aois(SAMPLE.parents[1] / "aoi" / "modarres.geojson")[0]
    items = json.loads((SAMPLE / "items.json").read_text())
    red = items["features"][0]["assets"]["red"]
    t, (h, w) = red["proj:transform"], red["proj:shape"]
    grid = Grid.from_origin("EPSG:32639", t[2], t[5], t[0], w, h)  # the stored window
    mask = aoi_mask(aoi, grid)
    bands = ("red", "nir", "swir16")
    config = MaskConfig()
    start, end = date(2023, 6, 1), date(2024, 6, 30)
    local = search_scenes(aoi, CatalogConfig(url=str(SAMPLE)), start=start, end=end, bands=bands)
    assert len(local.scenes) == len(items["features"]) - 1  # one reprocessed duplicate dropped
    assert any(d.reason.startswith("duplicate of") for d in local.dropped)
    with RangeServer(SAMPLE) as http:
        for feature in items["features"]:
            for asset in feature["assets"].values():
                asset["href"] = f"{http.url}/{asset['href'].removeprefix('./')}"
        coll, feats = write_collection(tmp_path, items["features"])
        with RustacServer([coll, feats]) as api:
            remote = search_scenes(aoi, catalog(api.url), start=start, end=end, bands=bands)
            assert [s.id for s in remote.scenes] == [s.id for s in local.scenes]
            clear_http_cache()
            got = read_stack(
                remote.scenes,
                grid,
                bands=bands,
                aoi_mask=mask,
                read_config=reading(),
                mask_config=config,
            )
    want = read_stack(
        local.scenes, grid, bands=bands, aoi_mask=mask, read_config=reading(), mask_config=config
    )
    np.testing.assert_array_equal(got.stack.reflectance, want.stack.reflectance)
    assert got.skipped == want.skipped and got.bytes_fetched > 0
    # harmonised: no date sits 0.1 away from the others (boa_offset_applied dates included)
    medians = np.nanmedian(got.stack.band("red"), axis=(1, 2))
    assert np.ptp(medians) < 0.05


def test_grid_is_what_the_aoi_asks_for() -> None:
    assert isinstance(GRID, Grid) and GRID.crs == "EPSG:32639"
    assert MASK.sum() == 120 * 120  # the 1.2 km AOI box at 10 m
