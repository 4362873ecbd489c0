"""End-to-end benchmark: `changedet run` against an odc-stac + Dask script on the same local COGs.

Writes a seeded synthetic series once (cached under --data): N dates over one year on an S x S
pixel AOI, Earth Search-like items (10 m blue/green/red/nir, 20 m swir16/swir22 and SCL, scale
1e-4 and offset -0.1, DEFLATE COGs with 512 px blocks), a static item collection, clouds (some
dates nearly overcast, dropped by the probe), noise, seasonal brightness and a few dozen new
buildings appearing through the year. Then, alternated in the same run, each in a child process
(so its peak memory is its own, from wait4):

- changedet: `changedet run AOI --catalog items.json` (full pipeline: probe, read, masks, spike
  screen, co-registration, composites, change per month, ledger, every output file);
- reference: what a user would write instead (`_REFERENCE`, ~45 lines): `odc.stac.load` with
  Dask chunks, SCL mask, monthly medians, change vector against the first two months, threshold;
- floor: decoding the windows of every asset of the same dates alone (rasterio, threads).

Prints wall, CPU (user + sys of the child) and peak RSS, medians of --repeat, changedet's stage
split (run.json timings) and ratios. The machine is shared: compare ratios within one run.

    python bench/e2e.py --dates 100 --size 1000 [--repeat 3] [--workers 4] [--level-block-px 32]
    python bench/e2e.py --dates 100 --size 1000 --years 5 --only changedet  # 60 monthly periods
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the COG writer lives with the tests

from loopback import cog_asset, s2_item, utm_box_to_lonlat, write_cog  # noqa: E402

CRS = "EPSG:32639"
X0, Y0 = 500_000.0, 3_950_000.0
MARGIN_PX = 64  # the COGs reach past the AOI (real tiles do): the reader cuts a window
FILES = {  # band: (file, resolution, base DN, seasonal amplitude)
    "blue": ("B02", 10, 1300, 80),
    "green": ("B03", 10, 1600, 100),
    "red": ("B04", 10, 1900, 140),
    "nir": ("B08", 10, 2600, 300),
    "swir16": ("B11", 20, 3000, 160),
    "swir22": ("B12", 20, 2500, 140),
}
START = datetime(2023, 6, 1, 7, 5, 31, tzinfo=UTC)


# --- data ------------------------------------------------------------------------------------


def _field(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    from scipy.ndimage import zoom

    small = rng.normal(0, 1, (shape[0] // cell + 3, shape[1] // cell + 3))
    return zoom(small, cell, order=1)[: shape[0], : shape[1]]


def _buildings(rng: np.random.Generator, n_px: int, n: int, n_dates: int) -> list[tuple[int, ...]]:
    """(row, col, height, width, first date) of new roofs, appearing after the first quarter."""
    out = []
    for _ in range(n):
        h, w = rng.integers(3, 9, 2)
        r, c = rng.integers(MARGIN_PX, n_px - MARGIN_PX - 10, 2)
        out.append((int(r), int(c), int(h), int(w), int(rng.integers(n_dates // 4, n_dates))))
    return out


def _date_arrays(
    t: int, n_dates: int, n_px: int, ground: dict[str, np.ndarray], roofs: list[tuple[int, ...]]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """DNs of every band (at its resolution) and SCL (20 m) of date t."""
    rng = np.random.default_rng(1000 + t)
    season = np.sin(2 * np.pi * t / max(n_dates, 1))
    cover = rng.choice([0.0, 0.05, 0.2, 0.4, 0.95], p=[0.35, 0.25, 0.15, 0.1, 0.15])
    field = _field(rng, (n_px, n_px), 48)
    cloud = field > np.quantile(field, 1 - cover) if cover else np.zeros((n_px, n_px), bool)
    out = {}
    for band, (_, res, base, amp) in FILES.items():
        dn = ground[band] + base + amp * season + rng.normal(0, 25, (n_px, n_px))
        for r, c, h, w, first in roofs:
            if t >= first:
                dn[r : r + h, c : c + w] = base + 2400 + 40 * ("swir" in band)
        dn[cloud] = 7000 + rng.normal(0, 300, int(cloud.sum()))
        if res == 20:
            dn = dn.reshape(n_px // 2, 2, n_px // 2, 2).mean(axis=(1, 3))
        out[band] = np.clip(dn, 1, 30000).astype(np.uint16)
    scl = np.where(cloud, 9, 5).astype(np.uint8)[::2, ::2]
    return out, scl


def make_data(root: Path, *, n_dates: int, size: int, days: int = 365, quadrants: int = 1) -> Path:
    """The series as COGs and a static item collection; returns the collection's path. With
    `quadrants` = 4 the tile holds 2 x 2 AOIs of `size` (aoi-1..4.geojson), else one (aoi.geojson)."""
    side = 2 if quadrants == 4 else 1
    n_px = side * size + 2 * MARGIN_PX
    n_px += n_px % 2
    folder = (
        root / f"d{n_dates}-s{size}"
        if (days, quadrants) == (365, 1)
        else root / f"d{n_dates}-s{size}-days{days}-q{quadrants}"
    )
    catalog = folder / "items.json"
    if catalog.is_file():
        return catalog
    rng = np.random.default_rng(7)
    ground = {
        b: 900 * _field(rng, (n_px, n_px), 64) + 60 * _field(rng, (n_px, n_px), 3) for b in FILES
    }
    roofs = _buildings(rng, n_px, 40, n_dates)
    x0, y0 = X0 - MARGIN_PX * 10, Y0 + MARGIN_PX * 10
    items = []
    for t in range(n_dates):
        when = START + timedelta(days=days * t / n_dates)
        item_id = f"S2A_39SWV_{when:%Y%m%dT%H%M%S}_0_L2A"
        dns, scl = _date_arrays(t, n_dates, n_px, ground, roofs)
        assets: dict[str, Any] = {}
        for band, array in [*dns.items(), ("scl", scl)]:
            name, res = ("SCL", 20) if band == "scl" else FILES[band][:2]
            path = write_cog(
                folder / item_id / f"{name}.tif",
                array,
                x0=x0,
                y0=y0,
                res=res,
                crs=CRS,
                blocksize=512,
                predictor=2,
            )
            assets[band] = cog_asset(
                str(path),
                shape=array.shape,
                res=res,
                x0=x0,
                y0=y0,
                dtype=array.dtype.name,
                scaled=band != "scl",
            )
        footprint = utm_box_to_lonlat(x0, y0 - n_px * 10, x0 + n_px * 10, y0)
        items.append(
            s2_item(
                item_id, when, footprint=footprint, assets=assets, tile="39SWV", cloud_cover=10.0
            )
        )
    from shapely.geometry import mapping

    boxes = [(0, 0)] if quadrants == 1 else [(0, 0), (0, 1), (1, 0), (1, 1)]
    for i, (row, col) in enumerate(boxes, start=1):
        left, top = X0 + col * size * 10, Y0 - row * size * 10
        aoi = utm_box_to_lonlat(left, top - size * 10, left + size * 10, top)
        name, aoi_id = (
            ("aoi.geojson", "bench") if quadrants == 1 else (f"aoi-{i}.geojson", f"site{i}")
        )
        feature = {"type": "Feature", "properties": {"id": aoi_id}, "geometry": mapping(aoi)}
        (folder / name).write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    catalog.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return catalog


# --- the three contenders, each a child process -------------------------------------------------

_CHANGEDET = r"""
import json, sys, time
from pathlib import Path
from changedet.cli import main
catalog, out, config, end = sys.argv[1:5]
t0 = time.perf_counter()
try:
    main(["run", str(Path(catalog).parent / "aoi.geojson"), "--catalog", catalog, "--config", config,
          "--start", "2023-06-01", "--end", end, "--out", out, "--quiet"])
except SystemExit as exc:
    if exc.code:
        raise
run = json.loads((Path(out) / "bench" / "run.json").read_text())
print(json.dumps({"wall": time.perf_counter() - t0, "timings": run.get("timings_s", {}),
                  "dates": len(run.get("dates") or run.get("provenance", {}).get("dates", []))}))
"""

_REFERENCE = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
import dask
import odc.stac
import pystac
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

catalog, aoi_path, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
odc.stac.configure_rio(cloud_defaults=True)
items = pystac.ItemCollection.from_file(catalog)
aoi = json.loads(open(aoi_path).read())["features"][0]["geometry"]
geobox = GeoBox.from_geopolygon(Geometry(aoi, "EPSG:4326").to_crs("EPSG:32639"), resolution=10)
bands = ["blue", "green", "red", "nir", "swir16", "swir22"]
ds = odc.stac.load(
    items, bands=[*bands, "scl"], geobox=geobox, groupby="solar_day",
    chunks={"time": 1, "x": 2048, "y": 2048},
    resampling={"*": "bilinear", "scl": "nearest"},
)
clear = ds.scl.isin([2, 4, 5, 6, 7])  # not nodata, defective, shadow, cloud, cirrus, snow
# drop dates less than 20 % clear, as a careful user would
share = clear.mean(dim=("x", "y")).compute()
keep = share.values >= 0.2
ds, clear = ds.isel(time=keep), clear.isel(time=keep)
refl = ds[bands].to_array("band").where(clear).astype("float32") * 1e-4 - 0.1
monthly = refl.resample(time="1MS").median()
baseline = monthly.isel(time=slice(0, 2)).median("time")
delta = monthly.isel(time=slice(2, None)) - baseline
magnitude = np.sqrt((delta**2).sum("band"))
scale = magnitude.quantile(0.5, dim=("x", "y")) * 6
changed = (magnitude > scale)
with dask.config.set(scheduler="threads", num_workers=workers):
    result = changed.compute()
print(json.dumps({"wall": time.perf_counter() - t0, "timings": {},
                  "dates": int(keep.sum()), "changed_px": int(result.sum())}))
"""

_FLOOR = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
t0 = time.perf_counter()
import rasterio
from rasterio.windows import from_bounds
catalog, workers, x0, y1, size = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6])
items = json.loads(open(catalog).read())["features"]
bounds = (x0, y1 - size * 10, x0 + size * 10, y1)

def decode(href):
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(href) as src:
        return src.read(1, window=from_bounds(*bounds, transform=src.transform)).nbytes

hrefs = [a["href"] for it in items for a in it["assets"].values()]
with ThreadPoolExecutor(workers) as pool:
    total = sum(pool.map(decode, hrefs))
print(json.dumps({"wall": time.perf_counter() - t0, "timings": {}, "dates": len(items), "bytes": total}))
"""


def _child(code: str, *args: str) -> dict[str, Any]:
    """Run `code` in a child; its JSON line plus CPU and peak RSS from wait4."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}): {out[-2000:]}")
    got = json.loads(out.strip().splitlines()[-1])
    got["process_wall"] = time.perf_counter() - t0
    got["cpu"] = usage.ru_utime + usage.ru_stime
    got["peak_gb"] = usage.ru_maxrss / 1024**2  # KiB on Linux
    return got


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dates", type=int, default=25)
    parser.add_argument("--size", type=int, default=1000, help="AOI side in 10 m pixels")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="reference's Dask threads"
    )
    parser.add_argument(
        "--years",
        type=int,
        default=1,
        help="the dates spread over this many years: monthly periods for memory against periods "
        "(with --only changedet: the script's monthly medians are of one year)",
    )
    parser.add_argument("--data", type=Path, default=Path("/tmp/changedet-bench-e2e"))
    parser.add_argument("--only", choices=["changedet", "reference", "floor"], action="append")
    parser.add_argument(
        "--level-block-px",
        type=int,
        default=32,
        help="changedet's [change] level_block_px (32, the default; 0 to time it without)",
    )
    args = parser.parse_args()

    t = time.perf_counter()
    catalog = make_data(args.data, n_dates=args.dates, size=args.size, days=365 * args.years)
    end = (START.replace(year=START.year + args.years) - timedelta(days=1)).date().isoformat()
    print(f"data ready in {time.perf_counter() - t:.1f} s: {catalog}", flush=True)
    config = catalog.parent / "bench.toml"
    config.write_text(
        f'[read]\ncache_dir = ""\n\n[change]\nlevel_block_px = {args.level_block_px}\n'
    )
    aoi = str(catalog.parent / "aoi.geojson")
    runs: dict[str, list[dict[str, Any]]] = {"changedet": [], "reference": [], "floor": []}
    chosen = args.only or list(runs)
    for _ in range(args.repeat):  # alternated: machine load hits every contender alike
        if "changedet" in chosen:
            with tempfile.TemporaryDirectory(prefix="changedet-e2e-") as out:
                runs["changedet"].append(_child(_CHANGEDET, str(catalog), out, str(config), end))
        if "reference" in chosen:
            runs["reference"].append(_child(_REFERENCE, str(catalog), aoi, str(args.workers)))
        if "floor" in chosen:
            runs["floor"].append(
                _child(_FLOOR, str(catalog), "4", str(X0), str(Y0), str(args.size))
            )
        print(
            "  " + "  ".join(f"{k} {v[-1]['process_wall']:.1f}s" for k, v in runs.items() if v),
            flush=True,
        )
    print(
        f"\n{args.dates} dates, {args.size} x {args.size} px, {args.repeat} alternated runs (medians)"
    )
    print(f"{'':10s} {'wall s':>8s} {'CPU s':>8s} {'peak GB':>8s} {'dates':>6s}")
    for name, got in runs.items():
        if got:
            print(
                f"{name:10s} {_median(got, 'process_wall'):8.1f} {_median(got, 'cpu'):8.1f} {_median(got, 'peak_gb'):8.2f} {got[0]['dates']:6d}"
            )
    if runs["changedet"] and runs["reference"]:
        ratio = _median(runs["changedet"], "process_wall") / _median(
            runs["reference"], "process_wall"
        )
        print(f"changedet / reference wall: {ratio:.2f}")
    if runs["changedet"]:
        stages = {
            k: statistics.median(r["timings"].get(k, 0.0) for r in runs["changedet"])
            for k in runs["changedet"][0]["timings"]
        }
        print("changedet stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))


if __name__ == "__main__":
    main()
