"""Does a polygon drawn tighter inside an AOI find the same structures inside it? Tight polygons
drawn at random inside a demo site's sample tile, or inside a semi-real OSCD series' city.

    python bench/nested.py [--site khojir|modarres] [--polygons 8] [--seed 1]
    python bench/nested.py --oscd beihai [--root ../shared/data/oscd] [--polygons 4]

The full run covers the whole tile (the demo AOI grown by 3 km) or the whole city. Each tight
polygon is a jittered quadrilateral of 0.5-1.1 km (demo) or about 1.5-2.4 km (a city), drawn
anywhere inside. A structure of either run whose centre (`lat`/`lon`) lies inside the polygon
agrees when both runs report it under the same id with the same first-seen interval, `kind`,
`confirmed` and `bermed`. Printed per polygon and in all (and for the structures confirmed in
either run), with the structures that differ; about 1 minute per site on 2 cores (a city:
about 20 s per polygon).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import Polygon, box, mapping

from changedet.aoi import reproject_geometry

REPO = Path(__file__).resolve().parents[1]
KEYS = ("first_seen_start", "first_seen_end", "kind", "confirmed", "bermed")


def _run(
    name: str, geometry: Any, crs: str, folder: Path, extra: list[str]
) -> dict[str, dict[str, Any]]:
    """`changedet run` on `geometry` (in `crs`); its structures by id."""
    path = folder / f"{name}.geojson"
    lonlat = reproject_geometry(geometry, crs, "EPSG:4326")
    feature = {"type": "Feature", "properties": {"id": name}, "geometry": mapping(lonlat)}
    path.write_text(json.dumps(feature))
    done = subprocess.run(
        ["changedet", "run", str(path), "--out", str(folder / "out"), "--quiet", *extra],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(done.stderr)
    doc = json.loads((folder / "out" / name / "structures.geojson").read_text())
    return {f["properties"]["id"]: f["properties"] for f in doc["features"]}


def _tight(rng: random.Random, bounds: tuple[float, ...], low: float, high: float) -> Polygon:
    x0, y0, x1, y1 = bounds
    w, h = rng.uniform(low, high), rng.uniform(low, high)
    cx = rng.uniform(x0 + w / 2 + 50, x1 - w / 2 - 50)
    cy = rng.uniform(y0 + h / 2 + 50, y1 - h / 2 - 50)
    corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    jitter = (high - low) / 7.5
    return Polygon(
        [
            (
                cx + dx * w / 2 + rng.uniform(-jitter, jitter),
                cy + dy * h / 2 + rng.uniform(-jitter, jitter),
            )
            for dx, dy in corners
        ]
    )


def _tile(site: str) -> tuple[tuple[float, ...], str]:
    """The sample tile's bounds and CRS (from its first item)."""
    item = json.loads((REPO / "sample_tiles" / site / "items.json").read_text())["features"][0]
    asset = next(iter(item["assets"].values()))
    a, _, c, _, e, f = asset["proj:transform"][:6]
    h, w = asset["proj:shape"]
    return (c, f + e * h, c + a * w, f), f"EPSG:{item['properties']['proj:epsg']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", choices=["khojir", "modarres"], default="khojir")
    parser.add_argument("--oscd", metavar="CITY", help="a semi-real series of this OSCD city")
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "oscd")
    parser.add_argument("--polygons", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="changedet-nested-") as tmp:
        folder = Path(tmp)
        if args.oscd:
            from changedet.lab.series import write_oscd_series

            series = write_oscd_series(args.root, args.oscd, folder / "series")
            bounds, crs = tuple(series.grid.bounds), series.grid.crs
            extra = ["--catalog", str(series.catalog), "--start", str(series.start)]
            extra += ["--end", str(series.end)]
            full = _run("full", box(*bounds), crs, folder, extra)
            sizes = (1500.0, 2400.0)
        else:
            bounds, crs = _tile(args.site)
            extra = ["--config", str(REPO / "configs" / f"demo-{args.site}.toml")]
            full = _run("full", box(*bounds).buffer(3000, join_style="mitre"), crs, folder, extra)
            sizes = (500.0, 1100.0)
        agree = total = agree_confirmed = confirmed = 0
        for k in range(args.polygons):
            tight = _tight(rng, bounds, *sizes)
            nested = _run(f"tight{k}", tight, crs, folder, extra)

            def inside(p: dict[str, Any], polygon: Polygon = tight) -> bool:
                point = shapely.Point(p["lon"], p["lat"])
                return bool(polygon.contains(reproject_geometry(point, "EPSG:4326", crs)))

            ids = {i for i, p in full.items() if inside(p)} | set(nested)
            same = {
                i
                for i in ids
                if i in full and i in nested and all(full[i][q] == nested[i][q] for q in KEYS)
            }
            agree, total = agree + len(same), total + len(ids)
            sure = {
                i
                for i in ids
                if full.get(i, {}).get("confirmed") or nested.get(i, {}).get("confirmed")
            }
            agree_confirmed, confirmed = agree_confirmed + len(sure & same), confirmed + len(sure)
            print(
                f"polygon {k}: {len(same)}/{len(ids)} the same ({len(sure & same)}/{len(sure)} "
                f"confirmed in either run); differ: {sorted(ids - same)}"
            )
        print(
            f"in all: {agree}/{total} = {agree / max(total, 1):.0%} the same; confirmed in either "
            f"run: {agree_confirmed}/{confirmed} = {agree_confirmed / max(confirmed, 1):.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
