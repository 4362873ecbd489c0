"""Fetch benchmark: N dates of an AOI window over loopback HTTP, changedet against odc-stac.

Serves Sentinel-2-like COGs (1024 px blocks, DEFLATE, like Earth Search's) through a range-request
server on 127.0.0.1 and their STAC items through `rustac serve`, then, in the same run and each from
a cold GDAL cache:

- changedet: `search_scenes` + `read_stack` (SCL probe, masking, harmonisation, per-date mosaic);
- odc-stac: pystac-client search + `odc.stac.load` of the same bands and SCL onto the same grid
  (no masking, no harmonisation), with odc-stac's own cloud defaults for GDAL.

The range server runs in its own process (its CPU does not compete with the loaders' GIL).
Prints wall time (median of --repeat interleaved runs) and CPU time, bytes the server sent, and "useful" bytes: the compressed
bytes of the COG blocks that intersect the AOI window (the least any reader of these files must
fetch). Aims: ours/odc-stac time ratio <= 1; bytes fetched <= 1.5 x useful.

    python bench/fetch.py [--dates 12] [--aoi-px 1000] [--tile-px 4096] [--workers 4] [--repeat 3]

Needs odc-stac (bench-only: pip install odc-stac). Test data is generated once under
--data (default /tmp/changedet-bench-fetch) and reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the loopback servers live with the tests

from loopback import (  # noqa: E402
    RustacServer,
    cog_asset,
    s2_item,
    utm_box_to_lonlat,
    write_cog,
    write_collection,
)

from changedet.aoi import aoi_mask, grid_for  # noqa: E402
from changedet.catalog.search import search_scenes  # noqa: E402
from changedet.config import CatalogConfig, MaskConfig, ReadConfig  # noqa: E402
from changedet.models import AOI  # noqa: E402
from changedet.read.cog import clear_http_cache  # noqa: E402
from changedet.read.stack import read_stack  # noqa: E402

CRS = "EPSG:32639"
X0, Y0 = 399_960.0, 4_000_020.0  # a real S2 tile origin (39SVV-like)
BANDS = ("red", "nir", "swir16")
FILES = {"red": ("B04", 10), "nir": ("B08", 10), "swir16": ("B11", 20), "scl": ("SCL", 20)}


def _texture(shape: tuple[int, int], seed: int, base: int) -> np.ndarray:
    """Land-like uint16 DNs: smooth fields + fine noise (compresses ~like real S2 with DEFLATE)."""
    rng = np.random.default_rng(seed)
    small = rng.normal(0, 1, (shape[0] // 64 + 2, shape[1] // 64 + 2))
    from scipy.ndimage import zoom

    field = zoom(small, 64, order=3)[: shape[0], : shape[1]]
    noise = rng.normal(0, 60, shape)
    return (base + 1000 + 900 * field + noise).clip(1, 30000).astype(np.uint16)


def _write_cog(path: Path, array: np.ndarray, res: float) -> None:
    """Like Earth Search's COGs: 1024 px blocks, horizontal predictor, overviews."""
    write_cog(
        path, array, x0=X0, y0=Y0, res=res, crs=CRS, blocksize=1024, predictor=2, overviews=True
    )


def make_data(root: Path, *, n_dates: int, tile_px: int) -> dict[str, Any]:
    """One COG per band (shared by every date through symlinks: distinct URLs, no disk blow-up),
    an SCL per date with a few clouds away from the AOI, and STAC items with ES v1 keys."""
    marker = root / f"ready-{n_dates}-{tile_px}.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    root.mkdir(parents=True, exist_ok=True)
    base = root / "base"
    base.mkdir(exist_ok=True)
    for i, (band, (name, res)) in enumerate(FILES.items()):
        if band == "scl":
            continue
        n = tile_px * 10 // res
        _write_cog(base / f"{name}.tif", _texture((n, n), i, 600 + 500 * i), res)
    n20 = tile_px // 2
    items = []
    start = datetime(2023, 6, 3, 7, 5, 31, tzinfo=UTC)
    for d in range(n_dates):
        when = start + timedelta(days=5 * d)
        item_id = f"S2A_39SVV_{when:%Y%m%d}_0_L2A"
        folder = root / item_id
        folder.mkdir(exist_ok=True)
        scl = np.full((n20, n20), 5, np.uint8)
        rng = np.random.default_rng(100 + d)
        for _ in range(3):  # a few clouds in the tile's corners, not over the AOI
            r, c = rng.integers(0, n20 // 8, 2)
            scl[r : r + 64, c : c + 64] = 9
        _write_cog(folder / "SCL.tif", scl, 20)
        assets = {}
        for band, (name, res) in FILES.items():
            if band != "scl":
                link = folder / f"{name}.tif"
                if not link.exists():
                    link.symlink_to(base / f"{name}.tif")
            n = tile_px * 10 // res
            assets[band] = cog_asset(
                f"{{base}}/{item_id}/{name}.tif",
                shape=(n, n),
                res=res,
                x0=X0,
                y0=Y0,
                dtype="uint8" if band == "scl" else "uint16",
                scaled=band != "scl",
            )
        footprint = utm_box_to_lonlat(X0, Y0 - tile_px * 10, X0 + tile_px * 10, Y0)
        items.append(
            s2_item(
                item_id,
                when,
                footprint=footprint,
                assets=assets,
                tile="39SVV",
                cloud_cover=2.0,
                extensions=("proj", "raster", "eo"),
            )
        )
    info = {"items": items}
    marker.write_text(json.dumps(info))
    return info


_SERVER = r"""
import json, sys, threading, time
from functools import partial
from http.server import ThreadingHTTPServer
import RangeHTTPServer

lock = threading.Lock()
stats = {"requests": 0, "bytes_sent": 0}
# The link to model: a round trip before each response, and one shared line of this rate
# (0: loopback as it is).
LATENCY_S = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0
BYTES_PER_S = float(sys.argv[3]) * 1e6 / 8 if len(sys.argv) > 3 else 0.0
line_free_at = [0.0]


def on_the_line(n):
    # wait until `n` bytes have passed a line shared by every connection
    if BYTES_PER_S <= 0:
        return
    with lock:
        start = max(time.monotonic(), line_free_at[0])
        line_free_at[0] = start + n / BYTES_PER_S
        done = line_free_at[0]
    time.sleep(max(done - time.monotonic(), 0.0))


class Counting:
    def __init__(self, raw):
        self.raw = raw

    def write(self, data):
        on_the_line(len(data))
        self.raw.write(data)
        with lock:
            stats["bytes_sent"] += len(data)


class Handler(RangeHTTPServer.RangeRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/__stats"):
            with lock:
                body = json.dumps(stats).encode()
                if "reset" in self.path:
                    stats.update(requests=0, bytes_sent=0)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        with lock:
            stats["requests"] += 1
        if LATENCY_S:
            time.sleep(LATENCY_S)
        super().do_GET()

    def copyfile(self, source, outputfile):
        super().copyfile(source, Counting(outputfile))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


httpd = Server(("127.0.0.1", 0), partial(Handler, directory=sys.argv[1]))
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""


class ProcessRangeServer:
    """The same range-request server in its own process: its CPU does not compete with the
    loaders' GIL (closer to a remote server), bytes counted there and read over /__stats.
    `latency_ms` and `mbps` model a link to a remote catalog's storage: a round trip before
    every response, and one line of that rate shared by all connections."""

    def __init__(self, directory: Path, *, latency_ms: float = 0.0, mbps: float = 0.0) -> None:
        self.directory = directory
        self.link = (latency_ms, mbps)  # a modelled link: round trip, shared rate (0: none)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> ProcessRangeServer:
        args = [str(self.directory), *(str(v) for v in self.link)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, *args], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline().strip())
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stats(self, *, reset: bool = False) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/__stats{'?reset' if reset else ''}") as resp:
            return dict(json.loads(resp.read()))

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def useful_bytes(root: Path, items: list[dict[str, Any]], grid: Any, assets: list[str]) -> int:
    """Compressed bytes of the COG blocks that intersect the grid window, summed over assets."""
    import rasterio
    from rasterio.windows import from_bounds

    total = 0
    for item in items:
        for band in assets:
            path = root / item["id"] / f"{FILES[band][0]}.tif"
            with rasterio.open(path) as src:
                win = from_bounds(*grid.bounds, transform=src.transform)
                bh, bw = src.block_shapes[0]
                r0, r1 = int(win.row_off // bh), int((win.row_off + win.height - 1e-9) // bh)
                c0, c1 = int(win.col_off // bw), int((win.col_off + win.width - 1e-9) // bw)
                for r in range(max(r0, 0), r1 + 1):
                    for c in range(max(c0, 0), c1 + 1):
                        total += int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1) or 0)
    return total


def run_ours(
    api_url: str, aoi: AOI, grid: Any, mask: np.ndarray, args: argparse.Namespace
) -> tuple[float, float, Any]:
    clear_http_cache()
    c0, t0 = time.process_time(), time.perf_counter()
    found = search_scenes(
        aoi, CatalogConfig(url=api_url), start=date(2023, 1, 1), end=date(2024, 12, 31), bands=BANDS
    )
    result = read_stack(
        found.scenes,
        grid,
        bands=BANDS,
        aoi_mask=mask,
        read_config=ReadConfig(cache_dir="", max_workers=args.workers, resampling="bilinear"),
        mask_config=MaskConfig(),
    )
    return time.perf_counter() - t0, time.process_time() - c0, result


def run_odc(
    api_url: str, aoi: AOI, grid: Any, args: argparse.Namespace
) -> tuple[float, float, Any]:
    import odc.stac
    from odc.geo.geobox import GeoBox
    from pystac_client import Client
    from shapely.geometry import mapping

    clear_http_cache()
    c0, t0 = time.process_time(), time.perf_counter()
    client = Client.open(api_url)
    items = list(
        client.search(
            collections=["sentinel-2-l2a"],
            intersects=mapping(aoi.geometry),
            datetime="2023-01-01/2024-12-31",
            method="POST",
        ).items()
    )
    geobox = GeoBox((grid.height, grid.width), grid.transform, grid.crs)
    data = odc.stac.load(
        items,
        bands=[*BANDS, "scl"],
        geobox=geobox,
        resampling={"*": "bilinear", "scl": "nearest"},
        groupby="solar_day",
        pool=args.workers,
    )
    arrays = {name: data[name].values for name in data.data_vars}  # eager; make sure it is loaded
    return time.perf_counter() - t0, time.process_time() - c0, arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dates", type=int, default=12)
    parser.add_argument("--aoi-px", type=int, default=1000, help="AOI side in 10 m pixels")
    parser.add_argument("--tile-px", type=int, default=4096, help="tile side in 10 m pixels")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("/tmp/changedet-bench-fetch"))
    args = parser.parse_args()
    try:
        import odc.stac
    except ImportError:
        sys.exit("bench/fetch.py needs odc-stac: pip install odc-stac")
    odc.stac.configure_rio(cloud_defaults=True)  # odc-stac's recommended GDAL settings

    t = time.perf_counter()
    info = make_data(args.data, n_dates=args.dates, tile_px=args.tile_px)
    print(f"data ready in {time.perf_counter() - t:.1f} s under {args.data}")
    # AOI window: off the block lattice on purpose (starts inside a block on both axes).
    ax0, ay1 = X0 + 13_170.0, Y0 - 11_730.0
    side = args.aoi_px * 10.0
    aoi = AOI("bench", "bench", utm_box_to_lonlat(ax0, ay1 - side, ax0 + side, ay1))
    grid = grid_for(aoi)
    mask = aoi_mask(aoi, grid)

    with ProcessRangeServer(args.data) as http:
        items = json.loads(json.dumps(info["items"]).replace("{base}", http.url))
        coll, feats = write_collection(args.data / "api", items)
        with RustacServer([coll, feats]) as api:
            ours_t, odc_t, ours_c, odc_c, ours_b, odc_b = [], [], [], [], [], []
            result = arrays = None
            for _ in range(args.repeat):  # interleaved, so machine load hits both alike
                http.stats(reset=True)
                seconds, cpu, result = run_ours(api.url, aoi, grid, mask, args)
                ours_t.append(seconds)
                ours_c.append(cpu)
                ours_b.append(http.stats()["bytes_sent"])
                http.stats(reset=True)
                seconds, cpu, arrays = run_odc(api.url, aoi, grid, args)
                odc_t.append(seconds)
                odc_c.append(cpu)
                odc_b.append(http.stats()["bytes_sent"])
    assert result is not None and arrays is not None
    useful = useful_bytes(args.data, info["items"], grid, [*BANDS, "scl"])
    stack = result.stack
    # Same pixels? ours is harmonised reflectance; odc-stac gives raw DNs.
    dn = arrays["red"][0].astype(np.float32)
    ours_red = stack.band("red")[0]
    same = np.isfinite(ours_red) & (dn > 0)
    max_diff = (
        float(np.abs((dn[same] * 1e-4 - 0.1) - ours_red[same]).max())
        if same.any()
        else float("nan")
    )
    mpx = len(stack.times) * (len(BANDS) + 1) * grid.width * grid.height / 1e6
    t_ours, t_odc = statistics.median(ours_t), statistics.median(odc_t)
    report = {
        "dates": len(stack.times),
        "grid": f"{grid.width}x{grid.height}",
        "assets_per_date": len(BANDS) + 1,
        "ours_s_median": round(t_ours, 3),
        "odc_stac_s_median": round(t_odc, 3),
        "time_ratio_ours_over_odc": round(t_ours / t_odc, 3),
        "time_ratio_best_of_runs": round(min(ours_t) / min(odc_t), 3),
        "cpu_ratio_ours_over_odc": round(statistics.median(ours_c) / statistics.median(odc_c), 3),
        "ours_mpx_per_s": round(mpx / t_ours, 1),
        "odc_mpx_per_s": round(mpx / t_odc, 1),
        "useful_bytes": useful,
        "ours_bytes": int(statistics.median(ours_b)),
        "odc_bytes": int(statistics.median(odc_b)),
        "ours_bytes_over_useful": round(statistics.median(ours_b) / useful, 3),
        "odc_bytes_over_useful": round(statistics.median(odc_b) / useful, 3),
        "ours_bytes_reported": result.bytes_fetched,
        "max_abs_diff_red_vs_odc": max_diff,
        "runs_ours_s": [round(x, 3) for x in ours_t],
        "runs_odc_s": [round(x, 3) for x in odc_t],
        "cpu_ours_s": [round(x, 3) for x in ours_c],
        "cpu_odc_s": [round(x, 3) for x in odc_c],
    }
    for key, value in report.items():
        print(f"{key:28s} {value}")


if __name__ == "__main__":
    main()
