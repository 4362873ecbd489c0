"""What a run reports depends on the AOI polygon, never on how it is drawn around it.

- A polygon drawn tightly inside the demo AOI, in the middle or off-centre, finds inside it the
  structures of the full run: the same ids, first-seen intervals, `kind` and `bermed`
  (statistics and the dates used come from a context window, and a structure the polygon cuts
  is the AOI's when its centre, the published lat/lon, is inside).
- MultiPolygon, holed and self-intersecting AOIs report nothing outside the polygon: every
  outline, berm line and change pixel lies inside it, and only structures inside are counted.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import Result
from shapely.geometry import Polygon, box, mapping, shape

from changedet.aoi import reproject_geometry

REPO = Path(__file__).resolve().parents[1]
UTM = "EPSG:32639"
TILE = (559380.0, 3940760.0, 561940.0, 3943320.0)  # the bundled Khojir sample tiles (UTM 39N)


def run_on(
    cli: Callable[..., Result], tmp: Path, aoi_id: str, utm_geometry: object, *extra: str
) -> Path:
    """Run the Khojir demo on an AOI drawn in UTM metres; returns OUT/<aoi_id>."""
    lonlat = reproject_geometry(utm_geometry, UTM, "EPSG:4326")
    path = tmp / f"{aoi_id}.geojson"
    path.write_text(
        json.dumps({"type": "Feature", "properties": {"id": aoi_id}, "geometry": mapping(lonlat)})
    )
    config = REPO / "configs" / "demo-khojir.toml"
    result = cli(
        "run", str(path), "--config", str(config), "--out", str(tmp / "out"), "--quiet", *extra
    )
    assert result.exit_code == 0, result.stderr
    return tmp / "out" / aoi_id


def structures(folder: Path) -> dict[str, dict]:
    doc = json.loads((folder / "structures.geojson").read_text())
    return {f["properties"]["id"]: f for f in doc["features"]}


def utm(feature: dict) -> object:
    return reproject_geometry(shape(feature["geometry"]), "EPSG:4326", UTM)


@pytest.fixture(scope="module")
def full_run(cli: Callable[..., Result], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("full")
    return run_on(cli, tmp, "full", box(*TILE).buffer(3000, join_style="mitre"))


# Tight polygons as an analyst would draw them, offsets in metres from the tile's lower left: one
# around the middle, and three off-centre that cut structures near their middle and once saw
# other dates than the full run (dates were chosen on the polygon's own pixels).
TIGHT = {
    "middle": [(500, 700), (1660, 450), (2140, 1760), (900, 2060)],
    "east": [(1485, 412), (2090, 466), (2001, 1353), (1539, 1418)],
    "west": [(93, 428), (690, 385), (688, 1175), (70, 1105)],
    "corner": [(1934, 910), (2478, 1039), (2521, 1891), (2009, 1841)],
}


@pytest.mark.parametrize("where", list(TIGHT))
def test_a_tight_polygon_finds_the_same_structures_inside_it(
    cli: Callable[..., Result], full_run: Path, tmp_path: Path, where: str
) -> None:
    x0, y0, _, _ = TILE
    tight = Polygon([(x0 + dx, y0 + dy) for dx, dy in TIGHT[where]])
    tight_run = run_on(cli, tmp_path, "tight", tight)
    nested, whole = structures(tight_run), structures(full_run)
    # What makes them agree: one window (the tiles' extent), and run.json says so.
    windows = [
        json.loads((f / "run.json").read_text())["context_window"] for f in (tight_run, full_run)
    ]
    assert windows[0] == windows[1], windows
    inside_full = {
        sid
        for sid, f in whole.items()
        if tight.contains(
            shapely.Point(*reproject_point(f["properties"]["lon"], f["properties"]["lat"]))
        )
    }
    union = inside_full | set(nested)
    assert len(union) >= (8 if where == "middle" else 3), "it should hold new structures"

    def same(sid: str) -> bool:
        if sid not in nested or sid not in whole:
            return False
        keys = ("first_seen_start", "first_seen_end", "bermed", "kind", "confirmed")
        return all(nested[sid]["properties"][k] == whole[sid]["properties"][k] for k in keys)

    agree = sum(same(sid) for sid in union) / len(union)
    assert agree >= 0.95, sorted(union - {s for s in union if same(s)})


def reproject_point(lon: float, lat: float) -> tuple[float, float]:
    p = reproject_geometry(shapely.Point(lon, lat), "EPSG:4326", UTM)
    return p.x, p.y


def _multipolygon() -> object:
    x0, y0, x1, y1 = TILE
    return shapely.MultiPolygon(
        [box(x0, y0, x0 + 1000, y0 + 1000), box(x1 - 900, y1 - 1100, x1, y1)]
    )


def _holed() -> object:
    x0, y0, x1, y1 = TILE
    return Polygon(
        [(x0, y0), (x1, y0), (x1, y1), (x0, y1)],
        holes=[
            [(x0 + 700, y0 + 700), (x1 - 700, y0 + 700), (x1 - 700, y1 - 700), (x0 + 700, y1 - 700)]
        ],
    )


def _bow_tie() -> object:
    x0, y0, x1, y1 = TILE
    return Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])  # repaired into two triangles


@pytest.mark.parametrize("make", [_multipolygon, _holed, _bow_tie], ids=["multi", "hole", "bowtie"])
def test_nothing_outside_the_polygon_is_reported_or_counted(
    cli: Callable[..., Result], make: Callable[[], object], full_run: Path, tmp_path: Path
) -> None:
    folder = run_on(cli, tmp_path, "shaped", make())
    polygon = shapely.make_valid(make())
    slack = polygon.buffer(1.0)  # reprojection round trip
    found = structures(folder)
    assert found, "the polygon holds new structures"
    for f in found.values():
        assert slack.contains(utm(f)), f["properties"]["id"]
    berms = json.loads((folder / "berms.geojson").read_text())["features"]
    for f in berms:
        assert slack.contains(utm(f))
        ringed = f["properties"]["structure_id"]  # the outputs hold what they name
        assert ringed is None or ringed in found, ringed
    # Counted: exactly the confirmed structures reported, none from outside.
    confirmed = [f for f in found.values() if f["properties"]["confirmed"]]
    assert sum(int(r) for r in _column(folder, "first_seen")) == len(confirmed)
    # The full run has structures outside this polygon, which this run must not report.
    outside = [
        sid
        for sid, f in structures(full_run).items()
        if not polygon.intersects(utm(f)) and f["properties"]["confirmed"]
    ]
    assert outside and not set(outside) & set(found)
    # No change evidence outside the polygon.
    with rasterio.open(folder / "change.tif") as src:
        score = src.read(1, masked=True)
        rows, cols = np.nonzero(~np.ma.getmaskarray(score) & np.isfinite(score.filled(np.nan)))
        xs, ys = rasterio.transform.xy(src.transform, rows, cols)
    pts = shapely.points(np.column_stack([xs, ys]))
    assert shapely.contains(polygon.buffer(src.res[0]), pts).all()


def _column(folder: Path, name: str) -> list[str]:
    with (folder / "counts.csv").open() as fh:
        return [row[name] for row in csv.DictReader(fh)]
