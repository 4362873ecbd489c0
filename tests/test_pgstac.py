"""Against a real, full-featured STAC API: stac-fastapi-pgstac on PostgreSQL + PostGIS + pgstac,
started on loopback once for this module (skipped cleanly when the Debian packages or the
Python packages are absent). It honours the query and CQL2 filter extensions that `rustac serve`
ignores, so it shows what a server-side cloud filter does to the result: the same scenes as the
client-side rule, the scenes it removed among the dropped ones, the last second of the end day,
and a misspelt collection named as such.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pgstac import PgstacServer, get_json, missing
from shapely.geometry import box, mapping

from changedet.catalog.search import search_scenes
from changedet.cli import main
from changedet.config import CatalogConfig
from changedet.errors import ConfigError, NoScenesError
from changedet.models import AOI, SearchResult

pytestmark = pytest.mark.network

COLLECTION = "sentinel-2-l2a"
AOI_T = AOI("pg", "pg", box(51.60, 35.55, 51.75, 35.70))
BANDS = ("red", "nir", "scl")


def _item(item_id: str, when: str, cloud: float | None) -> dict[str, Any]:
    props: dict[str, Any] = {"datetime": when, "platform": "sentinel-2a", "proj:epsg": 32639}
    if cloud is not None:
        props["eo:cloud_cover"] = cloud
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": COLLECTION,
        "geometry": mapping(box(51.0, 35.1, 52.2, 36.1)),
        "bbox": [51.0, 35.1, 52.2, 36.1],
        "properties": props,
        "links": [],
        "assets": {
            b: {"href": f"https://example.invalid/{item_id}/{b}.tif", "type": "image/tiff"}
            for b in BANDS
        },
    }


# June 2023 over the AOI: clear, cloudy, unknown cloud cover, and one sensed in the last second
# of 30 June. 7 and 8 June hold only scenes over the cloud limit.
ITEMS = [
    _item("S2A_39SWV_20230605_0_L2A", "2023-06-05T07:05:00Z", 10.0),
    _item("S2A_39SWV_20230606_0_L2A", "2023-06-06T07:05:00Z", None),
    _item("S2A_39SWV_20230607_0_L2A", "2023-06-07T07:05:00Z", 95.0),
    _item("S2B_39SWV_20230608_0_L2A", "2023-06-08T07:05:00Z", 90.0),
    _item("S2A_39SWV_20230615_0_L2A", "2023-06-15T07:05:00Z", None),
    _item("S2B_39SWV_20230630_0_L2A", "2023-06-30T23:59:59.900Z", 5.0),
]
COLLECTION_JSON = {
    "type": "Collection",
    "stac_version": "1.0.0",
    "id": COLLECTION,
    "description": "synthetic items for the changedet tests",
    "license": "proprietary",
    "extent": {
        "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
        "temporal": {"interval": [["2023-01-01T00:00:00Z", None]]},
    },
    "links": [],
}


@pytest.fixture(scope="module")
def pgstac() -> Iterator[PgstacServer]:
    why = missing()
    if why is not None:
        pytest.skip(f"stac-fastapi-pgstac stack unavailable: {why}")
    with PgstacServer() as server:
        server.start(COLLECTION_JSON, ITEMS)
        yield server


def search(url: str, start: date, end: date, **kw: Any) -> SearchResult:
    allow_empty = kw.pop("allow_empty", False)
    config = CatalogConfig(url=url, retries=1, backoff_s=0.01, timeout_s=10.0, **kw)
    return search_scenes(AOI_T, config, start=start, end=end, bands=BANDS, allow_empty=allow_empty)


def static_copy(tmp_path: Path) -> str:
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": ITEMS}))
    return str(path)


def test_server_cloud_filter_keeps_what_the_client_side_rule_keeps(
    pgstac: PgstacServer, tmp_path: Path
) -> None:
    june = (date(2023, 6, 1), date(2023, 6, 30))
    server = search(pgstac.url, *june)
    client = search(static_copy(tmp_path), *june)
    assert {s.id for s in server.scenes} == {s.id for s in client.scenes}
    assert any("filter extension" in n for n in server.notes)
    # the scenes without eo:cloud_cover are kept for the AOI probe to judge
    assert {"S2A_39SWV_20230606_0_L2A", "S2A_39SWV_20230615_0_L2A"} <= {s.id for s in server.scenes}
    # ...and the cloudy ones are dropped by both, with the same reason but for where
    assert {d.scene_id: d.reason.replace("server", "client-side") for d in server.dropped} == {
        d.scene_id: d.reason for d in client.dropped
    }


def test_item_sensed_in_the_last_second_of_the_end_day_is_found(pgstac: PgstacServer) -> None:
    found = search(pgstac.url, date(2023, 6, 20), date(2023, 6, 30))
    assert [s.id for s in found.scenes] == ["S2B_39SWV_20230630_0_L2A"]


def test_scenes_the_server_filtered_out_are_among_the_dropped(pgstac: PgstacServer) -> None:
    cloudy_days = (date(2023, 6, 7), date(2023, 6, 8))
    found = search(pgstac.url, *cloudy_days, allow_empty=True)
    assert found.scenes == ()
    assert {d.scene_id: d.reason for d in found.dropped} == {
        "S2A_39SWV_20230607_0_L2A": "scene cloud cover 95.0% > 80% (catalog.max_cloud_cover, server)",
        "S2B_39SWV_20230608_0_L2A": "scene cloud cover 90.0% > 80% (catalog.max_cloud_cover, server)",
    }
    with pytest.raises(NoScenesError) as info:
        search(pgstac.url, *cloudy_days)
    assert "raise catalog.max_cloud_cover" in str(info.value)
    assert "check the AOI location" not in str(info.value)


def test_a_misspelt_collection_is_named_as_such(pgstac: PgstacServer, tmp_path: Path) -> None:
    assert get_json(f"{pgstac.url}/collections/sentinel-2-l2x")[0] == 404  # what servers answer
    with pytest.raises(ConfigError, match="collection 'sentinel-2-l2x' not found") as info:
        search(pgstac.url, date(2023, 6, 1), date(2023, 6, 30), collection="sentinel-2-l2x")
    assert "did you mean 'sentinel-2-l2a'" in str(info.value)
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(
        json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(AOI_T.geometry)})
    )
    args = ["search", str(aoi), "--catalog", pgstac.url, "--collection", "sentinel-2-l2x"]
    result = CliRunner().invoke(main, [*args, "--start", "2023-06-01", "--end", "2023-06-30"])
    assert result.exit_code == 2, result.output
    assert "collection 'sentinel-2-l2x' not found" in result.output
