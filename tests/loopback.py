"""Real servers on 127.0.0.1 for catalog and read tests, with fault injection, plus synthetic
Sentinel-2-like scenes (COGs + STAC items with Earth Search v1 keys).

- `RangeServer`: in-process ThreadingHTTPServer with RangeHTTPServer's range handler, serving a
  folder; counts requests and bytes; `Fault`s make matching requests answer 500, stall, or send
  a truncated body.
- `RustacServer`: `rustac serve collection.json items.json` on a free loopback port.
- `FaultProxy`: a loopback HTTP proxy in front of a server (e.g. rustac) that injects faults on
  matching requests (500s, delays, a failing second search page) and rewrites the upstream
  address in responses so next-page links keep going through the proxy.
Every server binds 127.0.0.1 only; every wait loop is bounded; everything stops on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Self

import numpy as np
import RangeHTTPServer
from pyproj import Transformer

RUSTAC = os.environ.get("CHANGEDET_RUSTAC") or shutil.which("rustac") or "/tmp/venv/bin/rustac"


# --------------------------------------------------------------------------------------------
# faults


@dataclass
class Fault:
    """A fault for requests whose target contains `match` (path; for the proxy also the body).

    kind: "status" (answer `status`), "delay" (stall `seconds`, then answer normally) or
    "truncate" (send only `keep` of the body, then drop the connection).
    times: how many matching requests get the fault (-1: all of them).
    headers: sent with a "status" answer (e.g. Retry-After).
    """

    match: str
    kind: str = "status"
    times: int = 1
    status: int = 500
    seconds: float = 0.0
    keep: float = 0.5
    hits: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    def take(self, target: str) -> bool:
        if self.match not in target:
            return False
        if self.times >= 0 and self.hits >= self.times:
            return False
        self.hits += 1
        return True


@dataclass
class Stats:
    requests: int = 0
    bytes_sent: int = 0
    paths: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.requests = 0
        self.bytes_sent = 0
        self.paths.clear()


class _FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: Any) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.faults: list[Fault] = []
        self.stats = Stats()
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout tests) is expected here, not a failure

    def fault_for(self, target: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.take(target):
                    return fault
        return None


class _CountingWriter:
    def __init__(self, raw: BinaryIO, server: _FaultServer, limit: int | None) -> None:
        self.raw, self.server, self.limit, self.sent = raw, server, limit, 0

    def write(self, data: bytes) -> int:
        if self.limit is not None:
            data = data[: max(self.limit - self.sent, 0)]
        if not data:
            return 0
        self.raw.write(data)
        self.sent += len(data)
        with self.server.lock:
            self.server.stats.bytes_sent += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


class FaultyRangeHandler(RangeHTTPServer.RangeRequestHandler):
    """RangeHTTPServer's handler with request/byte counting and injected faults."""

    server: _FaultServer
    _truncate: Fault | None = None

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def send_head(self) -> Any:
        with self.server.lock:
            self.server.stats.requests += 1
            self.server.stats.paths.append(f"{self.command} {self.path}")
        fault = self.server.fault_for(self.path)
        self._truncate = None
        if fault is not None:
            if fault.kind == "status":
                self.send_error(fault.status, "injected fault")
                return None
            if fault.kind == "delay":
                time.sleep(fault.seconds)
            elif fault.kind == "truncate":
                self._truncate = fault
        return super().send_head()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        limit = None
        if self._truncate is not None:
            start, stop = self.range if self.range else (0, None)
            size = os.fstat(source.fileno()).st_size
            end = size - 1 if stop is None or stop >= size else stop
            limit = int((end - (start or 0) + 1) * self._truncate.keep)
            self.close_connection = True
        writer = _CountingWriter(outputfile, self.server, limit)
        with contextlib.suppress(ConnectionError):
            super().copyfile(source, writer)
        if limit is not None:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class _LoopbackServer:
    """An in-process threaded `_FaultServer` on 127.0.0.1, started and stopped as a context."""

    def __init__(self, handler: Any) -> None:
        self.httpd = _FaultServer(handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def stats(self) -> Stats:
        return self.httpd.stats

    @property
    def faults(self) -> list[Fault]:
        return self.httpd.faults

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class RangeServer(_LoopbackServer):
    """Serve `directory` over HTTP range requests on 127.0.0.1 (in-process, threaded)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = str(directory)
        super().__init__(partial(FaultyRangeHandler, directory=self.directory))


# --------------------------------------------------------------------------------------------
# rustac serve


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, *, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    return False


class RustacServer:
    """`rustac serve <hrefs>` on a free 127.0.0.1 port (a real STAC API, in-memory backend)."""

    def __init__(self, hrefs: Sequence[str | Path]) -> None:
        self.hrefs = [str(h) for h in hrefs]
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RustacServer:
        if not Path(RUSTAC).exists() and shutil.which(RUSTAC) is None:
            raise RuntimeError(f"rustac not found at {RUSTAC}; pip install rustac")
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                [RUSTAC, "serve", *self.hrefs, "--addr", f"127.0.0.1:{self.port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if _wait_http(f"{self.url}/", timeout_s=15.0, proc=self.proc):
                return self
            self._stop()
        raise RuntimeError("rustac serve did not start on 127.0.0.1")

    def _stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def __exit__(self, *exc: object) -> None:
        self._stop()


# --------------------------------------------------------------------------------------------
# a fault-injecting proxy (for the STAC API)


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _FaultServer
    upstream: str = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = f"{self.command} {self.path} {body.decode('utf-8', 'replace')}"
        with self.server.lock:
            self.server.stats.requests += 1
            self.server.stats.paths.append(target)
        fault = self.server.fault_for(target)
        if fault is not None and fault.kind == "status":
            payload = json.dumps({"code": "Injected", "description": "injected fault"}).encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in fault.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            return
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        me = f"http://127.0.0.1:{self.server.server_address[1]}"
        request = urllib.request.Request(
            self.upstream + self.path,
            data=body or None,
            method=self.command,
            headers={"Content-Type": self.headers.get("Content-Type") or "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                status, data, ctype = resp.status, resp.read(), resp.headers.get("Content-Type")
        except urllib.error.HTTPError as exc:
            status, data, ctype = exc.code, exc.read(), exc.headers.get("Content-Type")
        data = data.replace(self.upstream.encode(), me.encode())
        self.send_response(status)
        self.send_header("Content-Type", ctype or "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _handle
    do_POST = _handle


class FaultProxy(_LoopbackServer):
    """Forward 127.0.0.1:<port> to `upstream`, injecting `faults` on matching requests."""

    def __init__(self, upstream: str) -> None:
        super().__init__(type("Handler", (_ProxyHandler,), {"upstream": upstream.rstrip("/")}))


# --------------------------------------------------------------------------------------------
# synthetic Sentinel-2-like scenes


CRS = "EPSG:32639"
TILE_X0 = 499_980.0  # a multiple of 60 m, like real S2 tile origins
TILE_Y0 = 4_000_020.0
TILE_PX = 256  # 10 m pixels per side (2.56 km): small and quick


def utm_box_to_lonlat(x0: float, y0: float, x1: float, y1: float, crs: str = CRS) -> Any:
    """A lon/lat polygon for a UTM rectangle (for AOIs that sit inside the synthetic tile)."""
    from shapely.geometry import Polygon

    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return Polygon([tr.transform(x, y) for x, y in ring])


def write_cog(
    path: Path,
    array: np.ndarray,
    *,
    x0: float,
    y0: float,
    res: float,
    crs: str = CRS,
    blocksize: int = 128,
    predictor: int = 1,
    overviews: bool = False,
) -> Path:
    """A DEFLATE COG (tests' and benches' own raster writer; changedet reads it back).
    `overviews=True` and `predictor=2` make it look like Earth Search's COGs."""
    import rasterio
    from affine import Affine

    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "COG",
        "width": array.shape[1],
        "height": array.shape[0],
        "count": 1,
        "dtype": array.dtype.name,
        "crs": crs,
        "transform": Affine(res, 0, x0, 0, -res, y0),
        "nodata": 0,
        "compress": "DEFLATE",
        "predictor": predictor,
        "blocksize": blocksize,
        "overviews": "AUTO" if overviews else "NONE",
        "overview_resampling": "nearest" if array.dtype == np.uint8 else "average",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
    return path


@dataclass
class SynthScene:
    """Truth for one synthetic scene: DN arrays as written (before harmonisation)."""

    id: str
    item: dict[str, Any]
    dn: dict[str, np.ndarray]  # band -> DN array on its own resolution
    x0: float
    y0: float


def dn_pattern(seed: int, shape: tuple[int, int], *, base: int) -> np.ndarray:
    """Deterministic, textured uint16 DNs (never 0 = nodata)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    smooth = (np.sin(xx / 9.0) + np.cos(yy / 13.0)) * 300.0
    noise = rng.integers(0, 200, shape)
    return (base + smooth + noise).clip(1, 20000).astype(np.uint16)


def make_scene(
    root: Path,
    item_id: str,
    when: datetime,
    *,
    tile: str = "39SVV",
    cloud_cover: float = 5.0,
    scl: np.ndarray | None = None,
    seed: int = 0,
    x0: float = TILE_X0,
    y0: float = TILE_Y0,
    nodata_cols: slice | None = None,
    bands: Sequence[str] = ("red", "nir", "swir16"),
    href_base: str | None = None,
    offset: float | None = -0.1,
    baseline: str = "05.09",
    boa_offset_applied: bool | None = None,
    updated: str | None = None,
    crs: str = CRS,
    tile_px: int = TILE_PX,
    blocksize: int = 128,
) -> SynthScene:
    """Write COGs for one scene under root/<item_id>/ and return its STAC item (ES v1 keys).

    10 m bands: red, nir (and blue/green); 20 m: swir16, swir22, nir08, rededge*, scl.
    DN = reflectance * 10000 + 1000 (processing baseline >= 04.00 convention).
    nodata_cols: 10 m columns set to nodata (0) in every band, to make partial tiles.
    href_base: "http://127.0.0.1:port" to reference assets over HTTP (else relative hrefs).
    """
    twenty = {"swir16", "swir22", "nir08", "rededge1", "rededge2", "rededge3", "scl"}
    folder = root / item_id
    dn: dict[str, np.ndarray] = {}
    assets: dict[str, Any] = {}
    for i, band in enumerate([*bands, "scl"]):
        res = 20.0 if band in twenty else 10.0
        n = tile_px // 2 if res == 20.0 else tile_px
        if band == "scl":
            if scl is None:
                continue
            array = scl.astype(np.uint8)
            assert array.shape == (n, n), f"scl must be {(n, n)}"
        else:
            array = dn_pattern(seed * 100 + i, (n, n), base=1500 + 400 * i)
        if nodata_cols is not None:
            array = array.copy()
            step = 2 if res == 20.0 else 1
            cols = slice(
                None if nodata_cols.start is None else nodata_cols.start // step,
                None if nodata_cols.stop is None else nodata_cols.stop // step,
            )
            array[:, cols] = 0
        dn[band] = array
        write_cog(
            folder / f"{band}.tif", array, x0=x0, y0=y0, res=res, crs=crs, blocksize=blocksize
        )
        href = f"{item_id}/{band}.tif" if href_base is None else f"{href_base}/{item_id}/{band}.tif"
        raster: dict[str, Any] = {
            "nodata": 0,
            "data_type": array.dtype.name,
            "spatial_resolution": res,
        }
        if band != "scl":
            raster["scale"] = 0.0001
            if offset is not None:
                raster["offset"] = offset
        assets[band] = {
            "href": href,
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "raster:bands": [raster],
        }
    size = tile_px * 10.0
    footprint = utm_box_to_lonlat(x0, y0 - size, x0 + size, y0, crs)
    props: dict[str, Any] = {
        "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "platform": "sentinel-2a",
        "constellation": "sentinel-2",
        "eo:cloud_cover": cloud_cover,
        "proj:epsg": int(crs.split(":")[1]),
        "grid:code": f"MGRS-{tile}",
        "s2:processing_baseline": baseline,
        "updated": updated or when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if boa_offset_applied is not None:
        props["earthsearch:boa_offset_applied"] = boa_offset_applied
    from shapely.geometry import mapping

    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": props,
        "links": [],
        "assets": assets,
    }
    return SynthScene(item_id, json.loads(json.dumps(item)), dn, x0, y0)


STAC_EXTENSIONS = {
    "proj": "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
}


def cog_asset(
    href: str, *, shape: Sequence[int], res: float, x0: float, y0: float, dtype: str, scaled: bool
) -> dict[str, Any]:
    """An Earth Search-like COG asset with projection and raster keys (scaled: reflectance DNs
    with scale 0.0001 and offset -0.1)."""
    raster: dict[str, Any] = {"nodata": 0, "data_type": dtype}
    if scaled:
        raster.update(scale=0.0001, offset=-0.1)
    return {
        "href": href,
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "roles": ["data"],
        "proj:shape": list(shape),
        "proj:transform": [res, 0, x0, 0, -res, y0],
        "raster:bands": [raster],
    }


def s2_item(
    item_id: str,
    when: datetime,
    *,
    footprint: Any,
    assets: dict[str, Any],
    tile: str,
    cloud_cover: float,
    extensions: Sequence[str] = ("proj", "raster"),
) -> dict[str, Any]:
    """An Earth Search-like Sentinel-2 L2A item (processing baseline 05.09) over `footprint`."""
    from shapely.geometry import mapping

    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [STAC_EXTENSIONS[e] for e in extensions],
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": mapping(footprint),
        "bbox": list(footprint.bounds),
        "properties": {
            "datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "platform": "sentinel-2a",
            "eo:cloud_cover": cloud_cover,
            "proj:epsg": 32639,
            "grid:code": f"MGRS-{tile}",
            "s2:processing_baseline": "05.09",
        },
        "links": [],
        "assets": assets,
    }


def write_collection(
    root: Path, items: Sequence[dict[str, Any]], *, collection: str = "sentinel-2-l2a"
) -> tuple[Path, Path]:
    """collection.json + items.json (FeatureCollection) for `rustac serve` or a static catalog."""
    root.mkdir(parents=True, exist_ok=True)
    coll = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection,
        "description": "synthetic Sentinel-2 L2A for changedet tests",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [["2015-06-27T00:00:00Z", None]]},
        },
        "links": [],
    }
    coll_path = root / "collection.json"
    coll_path.write_text(json.dumps(coll))
    items_path = root / "items.json"
    items_path.write_text(json.dumps({"type": "FeatureCollection", "features": list(items)}))
    return coll_path, items_path


def local_scene(synth: SynthScene, root: Path, *, asset_keys: Any = None) -> Any:
    """The changedet Scene of a synthetic item written under `root` (relative hrefs)."""
    from changedet.catalog.items import scene_from_item
    from changedet.config import EARTH_SEARCH_ASSETS

    return scene_from_item(
        synth.item,
        asset_keys=asset_keys or EARTH_SEARCH_ASSETS,
        base_href=str(root / "items.json"),
        remote=False,
    )
