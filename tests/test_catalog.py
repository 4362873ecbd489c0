"""Catalog: parsing real provider items, harmonisation rules, safety, static catalogs, duplicates."""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from loopback import Fault, RangeServer
from shapely.affinity import translate as shapely_translate
from shapely.geometry import box, mapping

from changedet.catalog.items import harmonising_offset, scene_from_item
from changedet.catalog.search import search_scenes
from changedet.config import EARTH_SEARCH_ASSETS, PLANETARY_COMPUTER_ASSETS, CatalogConfig
from changedet.errors import CatalogError, NoScenesError, UnsafeHrefError
from changedet.hrefs import check_href, public_href
from changedet.models import AOI

DATA = Path(__file__).parent / "data" / "stac"
BANDS = ["red", "nir", "swir16"]


def _item(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


# ---------------------------------------------------------------------------------- parsing


def test_earth_search_v1_l2a_item() -> None:
    item = _item("es-v1-l2a_S2A_13TDE_20231008_0_L2A.json")
    scene = scene_from_item(item, asset_keys=EARTH_SEARCH_ASSETS)
    assert scene.id == "S2A_13TDE_20231008_0_L2A"
    assert scene.tile == "13TDE"  # from grid:code "MGRS-13TDE"
    assert scene.epsg == 32613
    assert scene.processing_baseline == "05.09"
    assert scene.platform == "sentinel-2a"
    assert scene.collection == "sentinel-2-l2a"
    assert scene.datetime == datetime(2023, 10, 8, 18, 2, 55, 276000, tzinfo=UTC)
    assert scene.cloud_cover == pytest.approx(0.000299)
    assert scene.assets["red"].href == item["assets"]["red"]["href"]
    assert scene.assets["red"].href.endswith("/B04.tif")
    # earthsearch:boa_offset_applied = true: E84 already removed the -1000 DN; its raster:bands
    # offset of -0.1 must NOT be applied again.
    assert item["properties"]["earthsearch:boa_offset_applied"] is True
    assert item["assets"]["red"]["raster:bands"][0]["offset"] == -0.1
    assert scene.assets["red"].offset == 0.0
    assert scene.assets["red"].scale == pytest.approx(1e-4)
    assert scene.assets["scl"].scale == 1.0 and scene.assets["scl"].offset == 0.0
    assert scene.assets["scl"].href.endswith("/SCL.tif")  # the COG, not the scl-jp2 asset
    assert set(scene.assets) == set(EARTH_SEARCH_ASSETS)
    assert scene.footprint is not None and scene.footprint.is_valid
    assert scene.updated == "2023-10-09T01:25:21.658Z"


def test_earth_search_collection1_item() -> None:
    scene = scene_from_item(
        _item("es-v1-c1-l2a_S2B_T24MUA_20250731T130245_L2A.json"), asset_keys=EARTH_SEARCH_ASSETS
    )
    assert scene.tile == "24MUA"
    assert scene.collection == "sentinel-2-c1-l2a"
    assert scene.processing_baseline == "05.11"
    assert scene.epsg == 32724
    # Collection 1 keeps ESA's DNs: raster:bands offset -0.1 applies.
    assert scene.assets["red"].offset == pytest.approx(-0.1)
    assert scene.assets["swir16"].offset == pytest.approx(-0.1)
    assert scene.cloud_cover == pytest.approx(41.489562)


def test_planetary_computer_items() -> None:
    new = scene_from_item(
        _item("pc-l2a_S2B_MSIL2A_20240419T095549_R122_T47XML_20240419T123458.json"),
        asset_keys=PLANETARY_COMPUTER_ASSETS,
    )
    assert new.tile == "47XML"  # from s2:mgrs_tile
    assert new.processing_baseline == "05.10"
    assert new.platform == "sentinel-2b"
    assert new.assets["red"].href.endswith("_B04_10m.tif")
    assert new.assets["scl"].href.endswith("_SCL_20m.tif")
    assert new.assets["nir08"].href.endswith("_B8A_20m.tif")
    # No raster:bands on PC: the baseline >= 04.00 offset is -1000 DN x 1e-4.
    assert new.assets["red"].offset == pytest.approx(-0.1)
    old = scene_from_item(
        _item("pc-l2a_S2A_MSIL2A_20190101T000001_R116_T58UFE_20201007T214651.json"),
        asset_keys=PLANETARY_COMPUTER_ASSETS,
    )
    assert old.processing_baseline == "02.12"
    assert old.assets["red"].offset == 0.0  # a pre-04.00 baseline never had the offset
    assert old.tile == "58UFE"


def test_earth_search_v0_item_falls_back_to_id_and_product_id() -> None:
    scene = scene_from_item(
        _item("es-v0_S2A_28QCH_20200714_0_L2A.json"), asset_keys=PLANETARY_COMPUTER_ASSETS
    )
    assert scene.tile == "28QCH"  # no utm_zone property: taken from the id
    assert scene.processing_baseline == "02.14"  # from sentinel:product_id "..._N0214_..."
    assert scene.assets["red"].offset == 0.0
    assert scene.datetime == datetime(2020, 7, 14, 11, 55, 52, tzinfo=UTC)


@pytest.mark.parametrize(
    ("props", "raster_offset", "expected", "rule"),
    [
        (
            {"earthsearch:boa_offset_applied": True, "s2:processing_baseline": "05.09"},
            -0.1,
            0.0,
            "boa_offset_applied",
        ),
        (
            {"earthsearch:boa_offset_applied": False, "s2:processing_baseline": "05.09"},
            -0.1,
            -0.1,
            "raster:bands",
        ),
        ({"s2:processing_baseline": "02.12"}, -0.1, 0.0, "baseline<04.00"),
        ({"s2:processing_baseline": "04.00"}, None, -0.1, "baseline>=04.00"),
        ({"s2:processing_baseline": "05.10"}, 0.0, 0.0, "raster:bands"),
        (
            {"s2:product_uri": "S2A_MSIL2A_20231008T175231_N0509_R141_T13TDE.SAFE"},
            None,
            -0.1,
            "baseline>=04.00",
        ),
        ({}, None, 0.0, "unknown"),
        ({}, -0.2, -0.2, "raster:bands"),
    ],
)
def test_harmonising_offset_rules(
    props: dict[str, Any], raster_offset: float | None, expected: float, rule: str
) -> None:
    offset, why = harmonising_offset(props, raster_offset=raster_offset, scale=1e-4)
    assert offset == pytest.approx(expected)
    assert why == rule


def test_offset_never_depends_on_the_date() -> None:
    item = _item("pc-l2a_S2A_MSIL2A_20190101T000001_R116_T58UFE_20201007T214651.json")
    moved = copy.deepcopy(item)
    moved["properties"]["datetime"] = "2024-06-01T07:00:00Z"  # after 25 Jan 2022, same baseline
    a = scene_from_item(item, asset_keys=PLANETARY_COMPUTER_ASSETS)
    b = scene_from_item(moved, asset_keys=PLANETARY_COMPUTER_ASSETS)
    assert a.assets["red"].offset == b.assets["red"].offset == 0.0


def test_datetime_with_nanoseconds_and_missing_datetime() -> None:
    item = _item("es-v1-l2a_S2A_13TDE_20231008_0_L2A.json")
    item["properties"]["datetime"] = "2023-10-08T18:02:55.276000123Z"
    assert scene_from_item(item, asset_keys=EARTH_SEARCH_ASSETS).datetime.microsecond == 276000
    item["properties"]["datetime"] = None
    with pytest.raises(CatalogError, match="no valid datetime"):
        scene_from_item(item, asset_keys=EARTH_SEARCH_ASSETS)


# ---------------------------------------------------------------------------------- safety


@pytest.mark.parametrize(
    "href",
    [
        "file:///etc/passwd",
        "/etc/passwd",
        "C:\\Windows\\win.ini",
        "/vsicurl/http://127.0.0.1/x.tif",
        "ftp://example.com/x.tif",
        "gs://bucket/x.tif",
    ],
)
def test_remote_catalog_cannot_point_at_local_or_odd_locations(href: str) -> None:
    with pytest.raises(UnsafeHrefError, match="remote catalog"):
        check_href(href, base="https://example.com/stac/items/a.json", remote=True)


def test_remote_relative_and_allowed_hrefs() -> None:
    base = "https://example.com/stac/items/a.json"
    assert (
        check_href("../cogs/B04.tif", base=base, remote=True)
        == "https://example.com/stac/cogs/B04.tif"
    )
    assert check_href("s3://bucket/k/B04.tif", base=base, remote=True) == "s3://bucket/k/B04.tif"
    assert check_href("http://127.0.0.1:9/B04.tif", base=base, remote=True).startswith("http://")


def test_local_catalog_resolves_paths(tmp_path: Path) -> None:
    base = str(tmp_path / "cat" / "item.json")
    assert check_href("B04.tif", base=base, remote=False) == str(tmp_path / "cat" / "B04.tif")
    assert check_href(f"file://{tmp_path}/x.tif", base=base, remote=False) == f"{tmp_path}/x.tif"
    assert check_href("https://h/x.tif", base=base, remote=False) == "https://h/x.tif"


def test_public_href_strips_tokens_and_credentials() -> None:
    signed = "https://user:secret@acct.blob.core.windows.net:443/c/B04.tif?st=1&se=2&sig=ABC%2Fxyz"
    assert public_href(signed) == "https://acct.blob.core.windows.net:443/c/B04.tif"
    assert "sig" not in public_href(signed) and "secret" not in public_href(signed)
    assert public_href("/data/B04.tif") == "/data/B04.tif"


def test_unsafe_item_from_remote_parse_is_refused() -> None:
    item = _item("es-v1-l2a_S2A_13TDE_20231008_0_L2A.json")
    item["assets"]["red"]["href"] = "file:///etc/passwd?token=SECRET"
    with pytest.raises(UnsafeHrefError) as info:
        scene_from_item(item, asset_keys=EARTH_SEARCH_ASSETS, remote=True)
    assert "SECRET" not in str(info.value)


# ---------------------------------------------------------------------------------- static catalogs

AOI_BOX = box(50.80, 35.55, 50.95, 35.70)
AOI_T = AOI("t", "t", AOI_BOX)


def synth_item(
    item_id: str,
    when: str,
    *,
    tile: str = "39SVV",
    cloud: float | None = 5.0,
    geometry: Any = None,
    bands: tuple[str, ...] = ("red", "nir", "swir16", "scl"),
    baseline: str = "05.09",
    updated: str | None = None,
    collection: str = "sentinel-2-l2a",
    href_prefix: str = "",
) -> dict[str, Any]:
    props: dict[str, Any] = {
        "datetime": when,
        "platform": "sentinel-2a",
        "grid:code": f"MGRS-{tile}",
        "s2:processing_baseline": baseline,
        "proj:epsg": 32639,
    }
    if cloud is not None:
        props["eo:cloud_cover"] = cloud
    if updated:
        props["updated"] = updated
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": collection,
        "geometry": mapping(geometry or box(50.7, 35.5, 51.1, 35.8)),
        "properties": props,
        "links": [],
        "assets": {
            b: {
                "href": f"{href_prefix}{item_id}/{b}.tif",
                "raster:bands": [{"nodata": 0, "scale": 0.0001, "offset": -0.1}],
            }
            for b in bands
        },
    }


def _write_fc(path: Path, items: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


def _search(url: str | Path, **kw: Any) -> Any:
    config = CatalogConfig(url=str(url), retries=2, backoff_s=0.01, **kw.pop("config", {}))
    return search_scenes(
        AOI_T,
        config,
        start=kw.pop("start", date(2023, 6, 1)),
        end=kw.pop("end", date(2023, 9, 30)),
        bands=BANDS,
        **kw,
    )


def test_item_collection_filters_dedupes_and_reports(tmp_path: Path) -> None:
    items = [
        synth_item(
            "S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z", updated="2023-08-01T10:00:00Z"
        ),
        synth_item(
            "S2A_39SVV_20230801_1_L2A", "2023-08-01T07:05:00Z", updated="2023-09-15T10:00:00Z"
        ),
        synth_item("S2A_39SVV_20230806_0_L2A", "2023-08-06T07:05:00Z", cloud=93.2),
        synth_item("S2A_39SVV_20230811_0_L2A", "2023-08-11T07:05:00Z", bands=("red", "nir", "scl")),
        synth_item("S2A_39SVV_20230816_0_L2A", "2023-08-16T07:05:00Z"),
        synth_item("S2A_39SWV_20230816_0_L2A", "2023-08-16T07:05:00Z", tile="39SWV"),
        synth_item("S2A_39SVV_20231001_0_L2A", "2023-10-01T07:05:00Z"),  # after the end date
        synth_item(
            "S2A_40SBD_20230821_0_L2A", "2023-08-21T07:05:00Z", geometry=box(52, 36, 53, 37)
        ),
        synth_item("S2A_39SVV_20230826_0_L2A", "2023-08-26T07:05:00Z", cloud=None),
    ]
    path = _write_fc(tmp_path / "cat" / "items.json", items)
    calls: list[tuple[str, int, int]] = []
    result = _search(path, progress=lambda *call: calls.append(call))
    # a static catalog has no pages to count: its bar still ends full, at the items read
    assert calls[0] == ("search", 0, 0) and calls[-1] == ("search", len(items), len(items))
    ids = [s.id for s in result.scenes]
    assert ids == [
        "S2A_39SVV_20230801_1_L2A",  # the reprocessed one wins
        "S2A_39SVV_20230816_0_L2A",
        "S2A_39SWV_20230816_0_L2A",  # one date on two tiles: both kept, mosaicked later
        "S2A_39SVV_20230826_0_L2A",  # no eo:cloud_cover: kept, the SCL probe decides
    ]
    dropped = {d.scene_id: d.reason for d in result.dropped}
    assert dropped["S2A_39SVV_20230801_0_L2A"].startswith("duplicate of S2A_39SVV_20230801_1_L2A")
    assert "93.2% > 80%" in dropped["S2A_39SVV_20230806_0_L2A"]
    assert "client-side" in dropped["S2A_39SVV_20230806_0_L2A"]
    assert "swir16" in dropped["S2A_39SVV_20230811_0_L2A"]
    assert set(dropped) == {
        "S2A_39SVV_20230801_0_L2A",
        "S2A_39SVV_20230806_0_L2A",
        "S2A_39SVV_20230811_0_L2A",
    }
    assert result.items_seen == len(items)
    notes = " | ".join(result.notes)
    assert "2 item(s) outside the dates or AOI" in notes
    assert "no eo:cloud_cover" in notes
    assert "mosaicked per date: 2023-08-16 (39SVV/39SWV)" in notes
    assert "-0.1 x4" in notes
    # relative hrefs are resolved against the JSON file's folder
    red = result.scenes[0].assets["red"].href
    assert red == str(tmp_path / "cat" / "S2A_39SVV_20230801_1_L2A" / "red.tif")
    assert [s.datetime for s in result.scenes] == sorted(s.datetime for s in result.scenes)


def test_scl_is_never_required(tmp_path: Path) -> None:
    """L1C-like items without SCL stay in (the reader's documented fallback), even when the
    caller lists "scl" among the bands."""
    item = synth_item(
        "S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z", bands=("red", "nir", "swir16")
    )
    config = CatalogConfig(url=str(_write_fc(tmp_path / "items.json", [item])))
    result = search_scenes(
        AOI_T, config, start=date(2023, 6, 1), end=date(2023, 9, 30), bands=[*BANDS, "scl"]
    )
    assert [s.id for s in result.scenes] == [item["id"]] and "scl" not in result.scenes[0].assets
    assert any("no SCL asset" in n for n in result.notes)


def test_an_item_missing_its_scl_among_items_with_one_is_dropped(tmp_path: Path) -> None:
    """One L2A item without its SCL in a series that has them is not L1C: read as clear
    wherever it has data, a cloudy date's clouds became change. It is dropped with why."""
    masked = synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z")
    bare = synth_item(
        "S2A_39SVV_20230811_0_L2A", "2023-08-11T07:05:00Z", bands=("red", "nir", "swir16")
    )
    config = CatalogConfig(url=str(_write_fc(tmp_path / "items.json", [masked, bare])))
    result = search_scenes(
        AOI_T, config, start=date(2023, 6, 1), end=date(2023, 9, 30), bands=[*BANDS, "scl"]
    )
    assert [s.id for s in result.scenes] == [masked["id"]]
    (dropped,) = result.dropped
    assert dropped.scene_id == bare["id"] and dropped.reason.startswith("no SCL asset")
    assert not any("fall" in n and "SCL" in n for n in result.notes)  # none falls back


def test_duplicate_winner_does_not_depend_on_order(tmp_path: Path) -> None:
    a = synth_item(
        "S2B_MSIL2A_20230801T070619_R120_T39SVV_20230801T101010",
        "2023-08-01T07:06:19Z",
        baseline="05.09",
    )
    b = synth_item(
        "S2B_MSIL2A_20230801T070619_R120_T39SVV_20240301T101010",
        "2023-08-01T07:06:19.5Z",
        baseline="05.10",
    )
    for n, order in enumerate(([a, b], [b, a])):
        result = _search(_write_fc(tmp_path / f"o{n}" / "items.json", order))
        assert [s.id for s in result.scenes] == [b["id"]]
        assert result.dropped[0].scene_id == a["id"]
        assert "baseline 05.10 over 05.09" in result.dropped[0].reason


def test_static_catalog_tree_and_collection_check(tmp_path: Path) -> None:
    root = tmp_path / "catalog"
    (root / "s2" / "a").mkdir(parents=True)
    item = synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z")
    (root / "s2" / "a" / "item.json").write_text(json.dumps(item))
    (root / "s2" / "collection.json").write_text(
        json.dumps(
            {
                "type": "Collection",
                "id": "sentinel-2-l2a",
                "links": [
                    {"rel": "item", "href": "./a/item.json"},
                    {"rel": "parent", "href": "../catalog.json"},
                ],
            }
        )
    )
    (root / "catalog.json").write_text(
        json.dumps(
            {
                "type": "Catalog",
                "id": "c",
                "links": [{"rel": "child", "href": "s2/collection.json"}],
            }
        )
    )
    result = _search(root)  # a folder holding catalog.json
    assert [s.id for s in result.scenes] == ["S2A_39SVV_20230801_0_L2A"]
    assert result.scenes[0].assets["red"].href == str(
        root / "s2" / "a" / "S2A_39SVV_20230801_0_L2A" / "red.tif"
    )
    with pytest.raises(NoScenesError, match=r"found: sentinel-2-l2a.*set \[catalog\] collection"):
        _search(root, config={"collection": "sentinel-2-c1-l2a"})


def test_missing_catalog_path_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist; pass a STAC API URL"):
        _search(tmp_path / "nope")


def test_a_static_catalog_without_items_says_so(tmp_path: Path) -> None:
    # Its collection links no item, and another child is missing: not an AOI or dates problem.
    (tmp_path / "s2").mkdir()
    (tmp_path / "s2" / "collection.json").write_text(
        json.dumps({"type": "Collection", "id": "sentinel-2-l2a", "links": []})
    )
    links = [{"rel": "child", "href": f"{d}/collection.json"} for d in ("s2", "gone")]
    (tmp_path / "catalog.json").write_text(
        json.dumps({"type": "Catalog", "id": "c", "links": links})
    )
    with pytest.raises(NoScenesError, match=r"holds no STAC items \(1 document.*does not exist"):
        _search(tmp_path / "catalog.json")


def test_no_usable_scene_raises_or_returns_empty(tmp_path: Path) -> None:
    path = _write_fc(
        tmp_path / "items.json",
        [synth_item("S2A_39SVV_20230806_0_L2A", "2023-08-06T07:05:00Z", cloud=99.0)],
    )
    with pytest.raises(NoScenesError, match="1 dropped: 1 scene cloud cover"):
        _search(path)
    empty = _search(path, allow_empty=True)
    assert empty.scenes == () and empty.dropped[0].scene_id == "S2A_39SVV_20230806_0_L2A"


def test_planetary_computer_needs_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write_fc(
        tmp_path / "items.json", [synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z")]
    )
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # as if not installed
    with pytest.raises(CatalogError, match="needs the planetary-computer package"):
        _search(path, config={"provider": "planetary-computer"})


def test_planetary_computer_keys_and_signing_of_non_azure_hrefs(tmp_path: Path) -> None:
    pytest.importorskip("planetary_computer")
    item = synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z", bands=())
    item["assets"] = {k: {"href": f"x/{k}.tif"} for k in ("B04", "B08", "B11", "SCL")}
    result = _search(
        _write_fc(tmp_path / "items.json", [item]), config={"provider": "planetary-computer"}
    )
    scene = result.scenes[0]
    # Only blob.core.windows.net hrefs get a token; local paths pass through unchanged.
    assert scene.assets["red"].href == str(tmp_path / "x" / "B04.tif")
    assert scene.assets["scl"].href == str(tmp_path / "x" / "SCL.tif")


def test_items_keyed_for_another_provider_name_it(tmp_path: Path) -> None:
    item = synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z", bands=())
    item["assets"] = {k: {"href": f"x/{k}.tif"} for k in ("B04", "B08", "B11", "SCL")}
    with pytest.raises(NoScenesError) as info:
        _search(_write_fc(tmp_path / "items.json", [item]))  # the earth-search keys by default
    assert "1 missing asset(s) for band(s) red, nir, swir16" in str(info.value)
    assert str(info.value).endswith(
        "; the items' assets are keyed as provider 'planetary-computer' keys them: "
        'set [catalog] provider = "planetary-computer"'
    )


def _blob_items(tmp_path: Path) -> Path:
    item = synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z", bands=())
    blob = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/39/S/VV/2023/08/01"
    item["assets"] = {k: {"href": f"{blob}/{k}.tif"} for k in ("B04", "B08", "B11", "SCL")}
    return _write_fc(tmp_path / "items.json", [item])


def _sas_token(tmp_path: Path, *, expiry: str) -> Any:
    """A SAS endpoint's answer for the container of `_blob_items`, under tmp_path/sas/token (a
    RangeServer of tmp_path/sas serves it); the planetary-computer package's settings."""
    settings = pytest.importorskip("planetary_computer.settings").Settings.get()
    token = tmp_path / "sas" / "token" / "sentinel2l2a01" / "sentinel2-l2"
    token.parent.mkdir(parents=True)
    token.write_text(json.dumps({"msft:expiry": expiry, "token": "st=1&sig=x"}))
    return settings


def test_planetary_computer_hrefs_get_their_container_token_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SAS endpoint is a loopback server (PC_SDK_SAS_URL); one token serves the container."""
    settings = _sas_token(tmp_path, expiry="2999-01-01T00:00:00Z")
    with RangeServer(tmp_path / "sas") as server:
        monkeypatch.setattr(settings, "sas_url", f"{server.url}/token")
        result = _search(_blob_items(tmp_path), config={"provider": "planetary-computer"})
        asked = [p for p in server.stats.paths if "/token/" in p]
    red = result.scenes[0].assets["red"].href
    assert red.endswith("/B04.tif?st=1&sig=x") and red.startswith("https://sentinel2l2a01.")
    assert len(asked) == 1


def test_a_token_already_expired_is_said_before_any_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read signed with it would be refused (403), scene by scene: said once, with the
    likeliest cause (this machine's clock)."""
    settings = _sas_token(tmp_path, expiry="2001-01-01T00:00:00Z")
    with RangeServer(tmp_path / "sas") as server:
        monkeypatch.setattr(settings, "sas_url", f"{server.url}/token")
        with pytest.raises(CatalogError, match=r"expires at 2001-01-01T00:00:00\+00:00, before"):
            _search(_blob_items(tmp_path), config={"provider": "planetary-computer"})


def test_a_token_service_that_fails_ends_the_search_within_its_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planetary-computer package alone retries ten times over minutes, without a timeout."""
    settings = pytest.importorskip("planetary_computer.settings").Settings.get()
    (tmp_path / "sas").mkdir()
    with RangeServer(tmp_path / "sas") as server:
        server.faults.append(Fault("/token/", status=503, times=-1))
        monkeypatch.setattr(settings, "sas_url", f"{server.url}/token")
        with pytest.raises(CatalogError) as info:
            _search(_blob_items(tmp_path), config={"provider": "planetary-computer"})
        asked = [p for p in server.stats.paths if "/token/" in p]
    assert str(info.value).startswith(
        "catalog: could not sign Planetary Computer hrefs: "
        f"{server.url}/token/sentinel2l2a01/sentinel2-l2 did not answer after 3 tries (HTTP 503)"
    )
    assert len(asked) == 3  # retries = 2


def test_remote_static_catalog_link_to_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "catalog.json").write_text(
        json.dumps(
            {"type": "Catalog", "id": "c", "links": [{"rel": "item", "href": "file:///etc/passwd"}]}
        )
    )
    with RangeServer(tmp_path) as server, pytest.raises(UnsafeHrefError, match="remote catalog"):
        _search(f"{server.url}/catalog.json")


def test_remote_item_collection_hrefs(tmp_path: Path) -> None:
    good = synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z")
    bad = synth_item(
        "S2A_39SVV_20230806_0_L2A", "2023-08-06T07:05:00Z", href_prefix="file:///home/user/"
    )
    _write_fc(tmp_path / "items.json", [good, bad])
    _write_fc(tmp_path / "bad.json", [bad])
    with RangeServer(tmp_path) as server:
        result = _search(f"{server.url}/items.json?token=SECRET")
        assert result.source == f"{server.url}/items.json"
        assert [s.id for s in result.scenes] == [good["id"]]
        assert result.scenes[0].assets["red"].href == f"{server.url}/{good['id']}/red.tif"
        assert "refused" in result.dropped[0].reason and "SECRET" not in result.dropped[0].reason
        with pytest.raises(UnsafeHrefError, match="refused"):
            _search(f"{server.url}/bad.json")


def test_static_catalog_over_http_is_not_noted_as_an_api(tmp_path: Path) -> None:
    inside = synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z")
    later = synth_item("S2A_39SVV_20231101_0_L2A", "2023-11-01T07:05:00Z")
    _write_fc(tmp_path / "items.json", [inside, later])
    with RangeServer(tmp_path) as server:
        notes = _search(f"{server.url}/items.json").notes
    assert "1 item(s) outside the dates or AOI were not selected" in notes
    assert not any("server returned" in n for n in notes)


class _Conforms:
    """A stand-in for pystac-client's Client that declares only the given conformance classes."""

    def __init__(self, *classes: Any) -> None:
        self.classes = classes

    def conforms_to(self, cls: Any) -> bool:
        return cls in self.classes


def test_cloud_filter_prefers_cql2_with_isnull_and_notes_the_query_extension() -> None:
    from pystac_client.conformance import ConformanceClasses as CC

    from changedet.catalog.fetch import _cloud_filter

    config = CatalogConfig(max_cloud_cover=30.0)
    both = _cloud_filter(_Conforms(CC.QUERY, CC.FILTER), config)
    assert both.keep["filter"]["op"] == "or"
    assert {"op": "isNull", "args": [{"property": "eo:cloud_cover"}]} in both.keep["filter"]["args"]
    assert both.removed["filter"] == {"op": ">", "args": [{"property": "eo:cloud_cover"}, 30.0]}
    query = _cloud_filter(_Conforms(CC.QUERY), config)
    assert query.keep == {"query": {"eo:cloud_cover": {"lte": 30.0}}}
    assert query.note is not None and "drops scenes without eo:cloud_cover" in query.note
    neither = _cloud_filter(_Conforms(), config)
    assert neither.keep == {} and neither.note is not None and "client-side" in neither.note


def _catalog_with_links(folder: Path, hrefs: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    links = [{"rel": "item", "href": h, "type": "application/json"} for h in hrefs]
    path = folder / "catalog.json"
    path.write_text(json.dumps({"type": "Catalog", "id": "c", "links": links}))
    return path


def test_a_local_catalog_cannot_open_a_file_outside_its_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = synth_item("S2A_39SVV_20230806_0_L2A", "2023-08-06T07:05:00Z")
    (elsewhere / "secret.json").write_text(json.dumps(secret))
    cat = tmp_path / "cat"
    cat.mkdir()
    reader = synth_item("S2A_39SVV_20230811_0_L2A", "2023-08-11T07:05:00Z")
    reader["assets"]["red"]["href"] = "file:///etc/passwd"
    (cat / "reader.json").write_text(json.dumps(reader))
    good = synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z")
    (cat / "good.json").write_text(json.dumps(good))
    linked = _catalog_with_links(cat, ["good.json", "reader.json", "../elsewhere/secret.json"])

    result = _search(linked)
    assert [s.id for s in result.scenes] == [good["id"]]
    dropped = {d.scene_id: d.reason for d in result.dropped}
    assert "outside the local catalog's folder" in dropped[reader["id"]]
    assert "/etc/passwd" in dropped[reader["id"]] and "allowed_folders" in dropped[reader["id"]]
    assert "outside the local catalog's folder" in dropped["secret.json"]
    # A symlink inside the folder that leads out of it is refused the same way.
    (cat / "sub").mkdir()
    (cat / "sub" / "link.json").symlink_to(elsewhere / "secret.json")
    # Its only item refused, the catalog holds none: said so, with why, even where an empty
    # result is allowed (a monitor's).
    refused = f"(a link to '{(elsewhere / 'secret.json').resolve()}'): outside"
    with pytest.raises(NoScenesError, match=rf"holds no STAC items .*{re.escape(refused)}"):
        _search(_catalog_with_links(cat / "sub", ["link.json"]), allow_empty=True)
    # The config may allow more folders.
    allowed = _search(linked, config={"allowed_folders": (str(elsewhere),)})
    assert [s.id for s in allowed.scenes] == [good["id"], secret["id"]]


def test_every_scene_outside_the_folder_says_so(tmp_path: Path) -> None:
    item = synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z", href_prefix="/srv/")
    with pytest.raises(UnsafeHrefError, match="every scene outside its own folder"):
        _search(_write_fc(tmp_path / "cat" / "items.json", [item]))


def test_one_invalid_item_file_is_skipped_with_its_reason(tmp_path: Path) -> None:
    good = synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z")
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "broken.json").write_text('{"type": "Feature", "id": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    catalog = _catalog_with_links(tmp_path, ["broken.json", "good.json", "list.json", "gone.json"])
    result = _search(catalog)
    assert [s.id for s in result.scenes] == [good["id"]]
    dropped = {d.scene_id: d.reason for d in result.dropped}
    assert "is not valid JSON" in dropped["broken.json"]
    # ... and said: the run's warning names unreadable scenes and documents alike
    assert {d.scene_id for d in result.dropped if d.unreadable} == {
        "broken.json",
        "list.json",
        "gone.json",
    }
    assert "not a STAC JSON object" in dropped["list.json"]
    assert "does not exist" in dropped["gone.json"]
    assert not result.complete  # so no scene it misses is taken for withdrawn
    assert not any("pass a STAC API URL" in r for r in dropped.values())
    # Only an unusable root ends the search, and then it says what to pass instead.
    catalog.write_text("not json")
    with pytest.raises(CatalogError, match=r"not valid JSON.*pass a STAC API URL"):
        _search(catalog)
    catalog.write_text('{"type": "Catalog", "id": "a\tb"}')  # a raw tab inside a string
    with pytest.raises(CatalogError) as raised:
        _search(catalog)
    assert "(Invalid control character at, line 1 column" not in str(raised.value)
    assert "(Invalid control character, line 1 column 29)" in str(raised.value)
    catalog.write_text("  \n")
    with pytest.raises(CatalogError, match=r"is empty; expected a STAC JSON document.*pass a STAC"):
        _search(catalog)


def test_malformed_entries_of_an_item_collection_are_counted_and_said(tmp_path: Path) -> None:
    """A null feature, a string, an item with null properties or without an id vanished from
    the run: used + skipped fell short of the entries. Each is now listed with why, and marked
    unreadable, so the run warns of it."""
    good = [
        synth_item(f"S2A_39SVV_202308{d:02d}_0_L2A", f"2023-08-{d:02d}T07:05:00Z") for d in (1, 6)
    ]
    no_props = synth_item("S2A_39SVV_20230811_0_L2A", "2023-08-11T07:05:00Z")
    no_props["properties"] = None
    no_id = synth_item("S2A_39SVV_20230816_0_L2A", "2023-08-16T07:05:00Z")
    del no_id["id"]
    # A second id-less item was taken for a repeat of the first; "id": null was named "None".
    no_id_too = synth_item("S2A_39SVV_20230821_0_L2A", "2023-08-21T07:05:00Z")
    del no_id_too["id"]
    null_id = {**synth_item("S2A_39SVV_20230826_0_L2A", "2023-08-26T07:05:00Z"), "id": None}
    entries = [good[0], None, "junk", no_props, 7, no_id, good[1], no_id_too, null_id]
    result = _search(_write_fc(tmp_path / "cat" / "items.json", entries))  # type: ignore[list-item]
    assert [s.id for s in result.scenes] == [g["id"] for g in good]
    dropped = {d.scene_id: d for d in result.dropped}
    assert len(result.scenes) + len(result.dropped) == len(entries)
    assert all(d.unreadable for d in result.dropped)
    assert "entry 1 of its features is null" in dropped["items.json features[1]"].reason
    assert "entry 2 of its features is a string" in dropped["items.json features[2]"].reason
    assert "entry 4 of its features is a number" in dropped["items.json features[4]"].reason
    assert "has no properties" in dropped[no_props["id"]].reason
    assert "has no id" in dropped["items.json features[5]"].reason
    assert "has no id" in dropped["items.json features[7]"].reason
    assert "items.json features[8]" in dropped and "None" not in dropped
    assert not result.complete


def test_a_catalog_that_is_not_json_or_not_stac_says_so_once(tmp_path: Path) -> None:
    """A GeoTIFF given as --catalog ended in 'unexpected UnicodeDecodeError'; `{}` repeated its
    advice; an item collection of one id-less item was answered with cloud and date advice."""
    tif = tmp_path / "B04.tif"
    tif.write_bytes(b"II*\x00\x08\x00\x00\x00\xff\xfe\x80\x81" * 64)
    with pytest.raises(CatalogError) as raised:
        _search(tif)
    message = str(raised.value)
    assert "B04.tif is not a STAC document (JSON)" in message
    assert message.endswith("pass a STAC API URL or a catalog.json / item collection")
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(CatalogError) as raised:
        _search(empty)
    assert str(raised.value).count("pass a STAC API URL") == 1, raised.value
    lone = synth_item("S2A_39SVV_20230801_0_L2A", "2023-08-01T07:05:00Z")
    del lone["id"]
    with pytest.raises(NoScenesError) as nothing:
        _search(_write_fc(tmp_path / "cat" / "items.json", [lone]))
    said = str(nothing.value)
    assert "has no id" in said and "fix the catalog" in said
    assert "max_cloud_cover" not in said and "widen the dates" not in said


def _sample_catalog(tmp_path: Path, repo: Path) -> tuple[Any, list[Path], Callable[[], Any]]:
    """The bundled Khojir sample copied under `tmp_path` (its item files to edit), its AOI and
    a search of it."""
    import shutil

    from changedet.aoi import load_aois

    tiles = shutil.copytree(repo / "sample_tiles" / "khojir", tmp_path / "khojir")
    (aoi,) = load_aois(repo / "aoi" / "khojir.geojson")
    config = CatalogConfig(url=str(tiles / "catalog.json"))

    def found() -> Any:
        return search_scenes(
            aoi, config, start=date(2023, 6, 1), end=date(2024, 6, 30), bands=BANDS
        )

    return aoi, sorted((tiles / "sentinel-2-l2a").glob("*/*.json")), found


def test_items_whose_footprint_or_epsg_disagree_with_their_assets_are_skipped(
    tmp_path: Path, repo: Path
) -> None:
    from changedet.aoi import crop_to_footprints, grid_for

    aoi, items, found = _sample_catalog(tmp_path, repo)
    clean = found()
    world, wrong_zone = items[3], items[5]
    item = json.loads(world.read_text())
    item["geometry"] = mapping(box(-180.0, -90.0, 180.0, 90.0))  # the whole world
    item["properties"]["proj:epsg"] = 32601
    world.write_text(json.dumps(item))
    item = json.loads(wrong_zone.read_text())
    item["properties"]["proj:epsg"] = 32638  # the neighbouring zone: data placed 6° west
    wrong_zone.write_text(json.dumps(item))

    hostile = found()
    dropped = {d.scene_id: d.reason for d in hostile.dropped}
    for path in (world, wrong_zone):
        assert "disagrees with its assets" in dropped[path.stem], dropped
    assert {s.id for s in hostile.scenes} == {s.id for s in clean.scenes} - {
        world.stem,
        wrong_zone.stem,
    }
    # The grid is still cropped to where the data is: no AOI-sized stack of nodata.
    assert crop_to_footprints(grid_for(aoi), aoi, hostile.scenes) == crop_to_footprints(
        grid_for(aoi), aoi, clean.scenes
    )


def test_an_item_without_geometry_is_placed_by_its_assets_or_skipped(
    tmp_path: Path, repo: Path
) -> None:
    """`"geometry": null` left the grid uncropped (the whole context window: 8x the pixels and
    other counts on the demo). Its assets' projection places it; without one it is skipped."""
    from changedet.aoi import crop_to_footprints, grid_for

    aoi, items, found = _sample_catalog(tmp_path, repo)
    clean = found()
    placed, lost = items[2], items[4]
    item = json.loads(placed.read_text())
    item["geometry"] = None  # proj:transform + proj:shape in proj:epsg still place it
    placed.write_text(json.dumps(item))
    item = json.loads(lost.read_text())
    item["geometry"] = None
    for asset in item["assets"].values():
        del asset["proj:transform"], asset["proj:shape"]
    lost.write_text(json.dumps(item))

    hostile = found()
    dropped = {d.scene_id: d.reason for d in hostile.dropped}
    assert dropped[lost.stem].startswith("no footprint (geometry null)"), dropped
    assert placed.stem not in dropped
    assert {s.id for s in hostile.scenes} == {s.id for s in clean.scenes} - {lost.stem}
    scene = next(s for s in hostile.scenes if s.id == placed.stem)
    original = next(s for s in clean.scenes if s.id == placed.stem).footprint
    assert scene.footprint.buffer(1e-4).contains(original)
    grid = crop_to_footprints(grid_for(aoi), aoi, clean.scenes)
    assert crop_to_footprints(grid_for(aoi), aoi, hostile.scenes) == grid
    assert grid.shape != grid_for(aoi).shape  # cropped at all: the test tells the bug apart

    # a proj:bbox (STAC projection v1.1) places it as well
    item["assets"]["red"]["proj:bbox"] = [559380.0, 3940760.0, 561940.0, 3943320.0]
    lost.write_text(json.dumps(item))
    assert lost.stem in {s.id for s in found().scenes}


def test_footprint_check_accepts_tiles_across_the_antimeridian() -> None:
    from pyproj import Transformer
    from shapely.geometry import MultiPolygon, Polygon

    from changedet.catalog.items import footprint_disagreement

    # A zone-60 tile near Fiji whose east edge passes 180°: its footprint is split in two.
    x0, y1 = 800_000.0, 8_100_000.0
    item = synth_item("S2A_60KYF_20230801_0_L2A", "2023-08-01T07:05:00Z")
    item["properties"]["proj:epsg"] = 32760
    for asset in item["assets"].values():
        asset["proj:transform"] = [10.0, 0.0, x0, 0.0, -10.0, y1]
        asset["proj:shape"] = [10980, 10980]
    to_lonlat = Transformer.from_crs("EPSG:32760", "EPSG:4326", always_xy=True)
    corners = [(x0 + 1000, y1 - 1000), (x0 + 108_000, y1 - 1000),
               (x0 + 108_000, y1 - 108_000), (x0 + 1000, y1 - 108_000)]  # fmt: skip
    ring = [to_lonlat.transform(x, y) for x, y in corners]
    unwrapped = Polygon([(lon % 360.0, lat) for lon, lat in ring])
    assert unwrapped.bounds[0] < 180.0 < unwrapped.bounds[2]
    east = unwrapped.intersection(box(180.0, -90.0, 360.0, 90.0))
    west = unwrapped.intersection(box(0.0, -90.0, 180.0, 90.0))
    split = MultiPolygon([west, shapely_translate(east, -360.0)])
    item["geometry"] = mapping(split)
    scene = scene_from_item(item, asset_keys=EARTH_SEARCH_ASSETS, remote=False)
    assert footprint_disagreement(item, scene) is None
    item["properties"]["proj:epsg"] = 32759
    scene = scene_from_item(item, asset_keys=EARTH_SEARCH_ASSETS, remote=False)
    assert "disagrees with its assets" in (footprint_disagreement(item, scene) or "")


def test_real_provider_items_pass_the_footprint_check() -> None:
    from changedet.catalog.items import footprint_disagreement

    for path in sorted(DATA.glob("*.json")):
        item = json.loads(path.read_text())
        keys = PLANETARY_COMPUTER_ASSETS if "B04" in item["assets"] else EARTH_SEARCH_ASSETS
        scene = scene_from_item(item, asset_keys=keys, remote=False)
        assert footprint_disagreement(item, scene) is None, path.name


class _OneItemPages:
    """A STAC API that serves `total` items one per page, whatever `limit` asked (servers cap
    it), each page linking the next by GET."""

    def __init__(self, total: int) -> None:
        self.total, self.requests = total, 0

    def json(self, location: str, *, method: str = "GET", body: Any = None) -> Any:
        self.requests += 1
        n = int(location.rsplit("=", 1)[1]) if "=" in location else 0
        more = n + 1 < self.total
        nxt = {"rel": "next", "href": f"https://api.test/search?page={n + 1}", "method": "GET"}
        return {
            "features": [{"type": "Feature", "id": f"item-{n}", "links": []}],
            "links": [nxt] if more else [],
        }


@pytest.mark.parametrize(
    ("total", "max_items", "got", "stopped"),
    [
        (60, 50, 50, True),  # cut at max_items, not at a page count guessed from page_size
        (12, 12, 12, False),  # exactly max_items, and no next page: all of them
        (12, 13, 12, False),
    ],
)
def test_paging_stops_at_max_items_only_when_more_items_remain(
    total: int, max_items: int, got: int, stopped: bool
) -> None:
    from changedet.catalog.fetch import _all_pages
    from changedet.models import no_progress

    pages = _OneItemPages(total)
    config = CatalogConfig(url="https://api.test", page_size=100, max_items=max_items)
    items, notes = _all_pages(
        pages,  # type: ignore[arg-type]
        "https://api.test/search",
        {},
        config,
        what="api.test",
        progress=no_progress,
    )
    assert [i.item["id"] for i in items] == [f"item-{n}" for n in range(got)]
    assert bool(notes) is stopped
    assert pages.requests <= max_items + 1
    if stopped:
        assert notes == [
            f"search stopped at catalog.max_items={max_items}; raise it or narrow the dates or AOI"
        ]


def test_an_api_page_with_entries_that_are_no_items_says_which() -> None:
    """The API path dropped non-object features as silently as the static one did."""
    from changedet.catalog.fetch import _all_pages
    from changedet.models import no_progress

    class Page:
        def json(self, location: str, *, method: str = "GET", body: Any = None) -> Any:
            return {"features": [{"type": "Feature", "id": "a", "links": []}, None, "junk"]}

    unreadable: list[tuple[str, str]] = []
    items, _ = _all_pages(
        Page(),  # type: ignore[arg-type]
        "https://api.test/search",
        {},
        CatalogConfig(url="https://api.test"),
        what="api.test",
        progress=no_progress,
        unreadable=unreadable,
    )
    assert [i.item["id"] for i in items] == ["a"]
    assert unreadable == [
        ("search page 1 features[1]", "entry 1 of its features is null, not a STAC item"),
        ("search page 1 features[2]", "entry 2 of its features is a string, not a STAC item"),
    ]
