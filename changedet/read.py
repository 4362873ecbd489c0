"""Windowed reads of scene assets onto the AOI grid. The only rasterio reader of scene assets.

Flow of `read_stack`:
1. probe: read the SCL window of every scene onto the grid (one band, 20 m source pixels, cheap);
   find persistent "cloud" pixels (bright roofs, see `mask.keep_persistent_bright`); drop scenes
   outside the AOI or whose AOI clear fraction is below `read.min_aoi_clear_fraction`. Band
   reads of a scene start as soon as its SCL passes a provisional test (the same test without
   the roof rule), so probing and reading overlap;
2. read only the bands asked for, only the source window covering the grid, concurrently (one
   dataset handle per task and thread), retrying transient HTTP errors; a missing, corrupt or
   truncated asset skips its scene with a recorded reason instead of ending the run;
3. harmonise DN → reflectance with each asset's scale and offset (decided by `catalog`);
4. mosaic the scenes of one acquisition date (tiles, orbits): first clear pixel wins, scenes in a
   deterministic order (most clear AOI pixels first, then id).
A pixel cache of network reads, keyed by item, asset, href and grid, makes a rerun fetch nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import json
import math
import os
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from changedet.catalog import install_log_redaction, public_href, redact
from changedet.config import MaskConfig, ReadConfig
from changedet.errors import ConfigError, NoScenesError, ReadError, UnsafeHrefError
from changedet.mask import persistent_from_counts, scl_clear, scl_cloudy
from changedet.models import Asset, Grid, Progress, Scene, SkippedScene, Stack, no_progress

__all__ = [
    "Probe",
    "ReadResult",
    "clear_http_cache",
    "gdal_options",
    "gdal_path",
    "network_bytes",
    "probe_details",
    "probe_scenes",
    "read_stack",
]

CACHE_VERSION = 1  # bump when the cached array's meaning changes


# --------------------------------------------------------------------------------------------
# GDAL options: the one place. Every asset read runs inside `rasterio.Env(**gdal_options(cfg))`.


def gdal_options(config: ReadConfig) -> dict[str, Any]:
    """GDAL configuration for reading COGs over HTTP(S)/S3, with the reason for each option."""
    options: dict[str, Any] = {
        # Opening /vsicurl/.../B04.tif must not list the "folder" first: that is an extra request
        # per asset (and on S3 a slow LIST) looking for sidecar files COGs never have.
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        # The COG header (IFDs, tile offsets of a 10980 px S2 band) fits in the first 32 KB:
        # fetch it in one request instead of several 16 KB ones.
        "GDAL_INGESTED_BYTES_AT_OPEN": 32768,
        # Several tiles of one window: fetched as parallel range requests in one go...
        "GDAL_HTTP_MULTIRANGE": "YES",
        # ...with adjacent ranges merged into one request (fewer round trips, no extra bytes).
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        # HTTP/2 multiplexing where the server offers it (S3, Azure Blob).
        "GDAL_HTTP_MULTIPLEX": "YES",
        # Transient HTTP errors (429, 5xx) are retried inside GDAL with a doubling delay; the
        # reader adds one more attempt (after clearing GDAL's cache of that URL) on top.
        "GDAL_HTTP_MAX_RETRY": max(int(config.retries), 0),
        "GDAL_HTTP_RETRY_DELAY": max(float(config.backoff_s), 0.0),
        "GDAL_HTTP_TIMEOUT": max(float(config.timeout_s), 1.0),
        "GDAL_HTTP_CONNECTTIMEOUT": max(min(float(config.timeout_s), 10.0), 1.0),
        # Keep fetched byte ranges in memory so a window read in pieces (header, tile offsets,
        # neighbouring tiles) never downloads the same bytes twice.
        "VSI_CACHE": "TRUE",
        "VSI_CACHE_SIZE": 64 * 1024 * 1024,
        "CPL_VSIL_CURL_CACHE_SIZE": 128 * 1024 * 1024,
        # Count bytes really downloaded (ReadResult.bytes_fetched).
        "CPL_VSIL_NETWORK_STATS_ENABLED": "YES",
        # Public buckets (Earth Search's s3:// hrefs) need no credentials; with credentials in
        # the environment GDAL signs requests itself.
        "AWS_NO_SIGN_REQUEST": "NO" if os.environ.get("AWS_ACCESS_KEY_ID") else "YES",
    }
    return options


# --------------------------------------------------------------------------------------------
# GDAL internals rasterio does not expose: network statistics and the /vsicurl/ cache.


class _Gdal:
    """Optional ctypes handles on the libgdal rasterio loaded (absent → features degrade)."""

    _lib: Any = None
    _loaded = False
    _lock = threading.Lock()

    @classmethod
    def lib(cls) -> Any:
        with cls._lock:
            if not cls._loaded:
                cls._loaded = True
                cls._lib = cls._load()
        return cls._lib

    @staticmethod
    def _load() -> Any:
        import rasterio

        base = Path(rasterio.__file__).resolve().parent
        candidates = sorted(glob.glob(str(base.parent / "rasterio.libs" / "libgdal*.so*")))
        candidates += ["libgdal.so", "libgdal.dylib"]
        for name in candidates:
            try:
                lib = ctypes.CDLL(name)
                lib.VSINetworkStatsGetAsSerializedJSON.restype = ctypes.c_void_p
                lib.VSINetworkStatsGetAsSerializedJSON.argtypes = [ctypes.c_void_p]
                lib.VSIFree.argtypes = [ctypes.c_void_p]
                lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
                return lib
            except (OSError, AttributeError):
                continue
        return None


def network_bytes() -> int | None:
    """Bytes GDAL downloaded over the network in this process so far (None if unavailable)."""
    lib = _Gdal.lib()
    if lib is None:
        return None
    ptr = lib.VSINetworkStatsGetAsSerializedJSON(None)
    if not ptr:
        return 0
    try:
        stats = json.loads(ctypes.string_at(ptr).decode("utf-8") or "{}")
    except ValueError:
        return None
    finally:
        lib.VSIFree(ptr)
    total = 0
    for method in (stats.get("methods") or {}).values():
        total += int(method.get("downloaded_bytes", 0))
    return total


def clear_http_cache() -> None:
    """Forget every block GDAL cached from HTTP/S3 in this process (benchmarks, tests)."""
    lib = _Gdal.lib()
    if lib is not None:
        lib.VSICurlClearCache()


def _clear_url_cache(path: str) -> None:
    """Forget what GDAL cached about one URL (e.g. a failed open) before trying it again."""
    lib = _Gdal.lib()
    if lib is not None and path.startswith("/vsi"):
        lib.VSICurlPartialClearCache(path.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# hrefs


def gdal_path(href: str) -> str:
    """The GDAL path for an asset href: /vsicurl/ for http(s), /vsis3/ for s3, else the path.

    Hrefs reach here only through `catalog`, which already refused local targets from remote
    catalogs; other URL schemes are refused again here.
    """
    parts = urlsplit(href)
    scheme = parts.scheme.lower() if len(parts.scheme) > 1 else ""
    if scheme in ("http", "https"):
        return f"/vsicurl/{href}"
    if scheme == "s3":
        return f"/vsis3/{parts.netloc}{parts.path}"
    if scheme == "":
        return href
    raise UnsafeHrefError(
        f"read: refusing href scheme '{scheme}' ({public_href(href)}); use http(s), s3 or a path"
    )


# --------------------------------------------------------------------------------------------
# cache


class _Cache:
    """Arrays on the grid, one .npy per (item, asset, href, grid, resampling); atomic writes."""

    def __init__(self, root: str) -> None:
        self.root = Path(root).expanduser() if root else None

    def key(self, scene: Scene, band: str, asset: Asset, grid: Grid, resampling: str) -> str:
        blob = json.dumps(
            [
                CACHE_VERSION,
                scene.id,
                scene.collection,
                band,
                public_href(asset.href),  # signed URLs change, the asset does not
                grid.crs,
                list(grid.transform)[:6],
                grid.width,
                grid.height,
                resampling,
            ]
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / key[:2] / f"{key}.npy"

    def get(self, key: str, shape: tuple[int, int]) -> np.ndarray | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged entry is a miss; it is rewritten below
        return array if array.shape == shape else None

    def put(self, key: str, array: np.ndarray) -> None:
        path = self._path(key)
        if path is None:
            return
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".npy.part", dir=path.parent)
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            if tmp is not None:  # a full or read-only cache never fails a run
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# one asset onto the grid


def _resampling(name: str) -> Any:
    from rasterio.enums import Resampling

    try:
        return Resampling[name]
    except KeyError:
        raise ConfigError(
            f"read.resampling '{name}' is unknown; use nearest, bilinear, cubic or average"
        ) from None


def _aligned(src: Any, grid: Grid) -> bool:
    """Same pixel size and a whole-pixel offset: a plain window copy, no resampling."""
    st, gt = src.transform, grid.transform
    if st.b != 0 or st.d != 0 or gt.b != 0 or gt.d != 0:
        return False
    if not (math.isclose(st.a, gt.a) and math.isclose(st.e, gt.e)):
        return False
    col = (gt.c - st.c) / st.a
    row = (gt.f - st.f) / st.e
    return abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6


def _read_onto_grid(path: str, grid: Grid, *, resampling: Any, nodata: float | None) -> np.ndarray:
    """Read band 1 of `path` onto `grid`: only the source window covering the grid is fetched.

    Three paths, fastest first: the same pixel lattice (a window copy), the same CRS with other
    pixel sizes (20 m → 10 m: GDAL resampled window read, about 4x cheaper than the warper),
    anything else (another UTM zone, tile edges: the GDAL warper on the covering window).
    """
    import rasterio
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import reproject, transform_bounds
    from rasterio.windows import Window, from_bounds

    with rasterio.open(path) as src:
        if src.crs is None:
            raise ReadError("asset has no CRS")
        fill = nodata if nodata is not None else (src.nodata if src.nodata is not None else 0)
        dtype = src.dtypes[0]
        dst_crs = CRS.from_user_input(grid.crs)
        same_crs = src.crs == dst_crs
        st = src.transform
        if same_crs and _aligned(src, grid):
            col0 = round((grid.transform.c - st.c) / st.a)
            row0 = round((grid.transform.f - st.f) / st.e)
            r0, r1 = max(row0, 0), min(row0 + grid.height, src.height)
            c0, c1 = max(col0, 0), min(col0 + grid.width, src.width)
            if (r0, c0, r1, c1) == (row0, col0, row0 + grid.height, col0 + grid.width):
                return np.asarray(src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0)))
            out = np.full(grid.shape, fill, dtype=dtype)
            if r1 > r0 and c1 > c0:
                out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = src.read(
                    1, window=Window(c0, r0, c1 - c0, r1 - r0)
                )
            return out
        north_up = st.b == 0 and st.d == 0 and grid.transform.b == 0 and grid.transform.d == 0
        if same_crs and north_up and resampling in (Resampling.nearest, Resampling.bilinear):
            win = from_bounds(*grid.bounds, transform=st)
            inside = (
                win.col_off >= 1
                and win.row_off >= 1
                and win.col_off + win.width <= src.width - 1
                and win.row_off + win.height <= src.height - 1
            )
            if inside:
                out = np.asarray(
                    src.read(1, window=win, out_shape=grid.shape, resampling=resampling)
                )
                if resampling == Resampling.bilinear:
                    _mask_blended_nodata(src, grid, out, fill)
                return out
        out = np.full(grid.shape, fill, dtype=dtype)
        bounds = (
            grid.bounds
            if same_crs
            else transform_bounds(dst_crs, src.crs, *grid.bounds, densify_pts=21)
        )
        win = from_bounds(*bounds, transform=st)
        pad = 2  # source pixels beyond the grid edge for the resampling kernel
        c0 = max(math.floor(win.col_off) - pad, 0)
        r0 = max(math.floor(win.row_off) - pad, 0)
        c1 = min(math.ceil(win.col_off + win.width) + pad, src.width)
        r1 = min(math.ceil(win.row_off + win.height) + pad, src.height)
        if c1 <= c0 or r1 <= r0:
            return out
        window = Window(c0, r0, c1 - c0, r1 - r0)
        source = src.read(1, window=window)
        reproject(
            source=source,
            destination=out,
            src_transform=st @ Affine.translation(c0, r0),  # = window_transform, no warning
            src_crs=src.crs,
            src_nodata=fill,
            dst_transform=grid.transform,
            dst_crs=dst_crs,
            dst_nodata=fill,
            resampling=resampling,
        )
        return out


def _mask_blended_nodata(src: Any, grid: Grid, out: np.ndarray, fill: float) -> None:
    """GDAL's resampled window read blends nodata into bilinear samples at data edges: set to
    nodata every grid pixel whose four bilinear source neighbours include a nodata pixel."""
    from rasterio.windows import Window

    st, gt = src.transform, grid.transform
    xs = gt.c + gt.a * (np.arange(grid.width) + 0.5)
    ys = gt.f + gt.e * (np.arange(grid.height) + 0.5)
    cols = np.floor((xs - st.c) / st.a - 0.5).astype(np.int64)
    rows = np.floor((ys - st.f) / st.e - 0.5).astype(np.int64)
    cols = np.clip(cols, 0, src.width - 2)
    rows = np.clip(rows, 0, src.height - 2)
    c0, r0 = int(cols.min()), int(rows.min())
    window = Window(c0, r0, int(cols.max()) + 2 - c0, int(rows.max()) + 2 - r0)
    bad = np.asarray(src.read(1, window=window)) == fill  # blocks already decoded: cheap
    if not bad.any():
        return
    cols -= c0
    rows -= r0
    near = bad[:-1, :-1] | bad[1:, :-1] | bad[:-1, 1:] | bad[1:, 1:]  # any of the 2 x 2 cell
    out[near[np.ix_(rows, cols)]] = fill


@dataclass
class _Got:
    scene_id: str
    band: str
    array: np.ndarray | None = None
    error: str | None = None
    transient: bool = False
    cached: bool = False


_HTTP_STATUS = re.compile(r"HTTP (?:response )?code:?\s*(\d{3})", re.IGNORECASE)


def _classify(exc: BaseException) -> tuple[str, bool]:
    """(one-line reason without tokens, transient?) for a failed asset read."""
    # rasterio wraps GDAL's own message: "Read failed. See previous exception for details."
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    text = " / ".join(
        dict.fromkeys(redact(str(e).strip()) for e in reversed(chain) if str(e).strip())
    )
    text = text or type(exc).__name__
    lowered = text.lower()
    match = _HTTP_STATUS.search(text)
    if match:
        status = int(match.group(1))
        if status in (404, 410):
            return f"asset missing (HTTP {status})", False
        if status in (401, 403):
            return (
                f"asset refused access (HTTP {status}); signed URL expired or credentials needed",
                False,
            )
        if status == 429 or status >= 500:
            return f"HTTP {status}", True
        return f"HTTP {status}", False
    if "timed out" in lowered or "timeout" in lowered:
        return "timed out", True
    if "couldn't connect" in lowered or "connection refused" in lowered:
        return "connection refused", True
    if "transfer closed" in lowered or "connection reset" in lowered or "recv failure" in lowered:
        return "connection cut mid-transfer", True
    if "no such file" in lowered or "does not exist" in lowered:
        return "asset missing (no such file)", False
    first = text.splitlines()[0][:160]
    return f"corrupt or truncated asset ({first})", False


def _fetch(
    scene: Scene,
    band: str,
    grid: Grid,
    *,
    config: ReadConfig,
    cache: _Cache,
    options: Mapping[str, Any],
) -> _Got:
    """One asset of one scene onto the grid (cache, then network with retries). Never raises."""
    import rasterio
    from rasterio.errors import RasterioError

    asset = scene.assets[band]
    resampling_name = "nearest" if band == "scl" else config.resampling
    try:
        path = gdal_path(asset.href)
    except UnsafeHrefError as exc:
        return _Got(scene.id, band, error=str(exc))
    # Only network reads are cached: a local COG window reads as fast as the cache would.
    key = cache.key(scene, band, asset, grid, resampling_name) if path.startswith("/vsi") else None
    hit = cache.get(key, grid.shape) if key else None
    if hit is not None:
        return _Got(scene.id, band, hit, cached=True)
    resampling = _resampling(resampling_name)
    attempts = 2  # GDAL already retried HTTP errors GDAL_HTTP_MAX_RETRY times inside each
    reason, transient = "not read", False
    for attempt in range(attempts):
        try:
            with rasterio.Env(**options):
                array = _read_onto_grid(path, grid, resampling=resampling, nodata=asset.nodata)
            if key:
                cache.put(key, array)
            return _Got(scene.id, band, array)
        except (RasterioError, ReadError, OSError, ValueError) as exc:
            reason, transient = _classify(exc)
            if not transient:
                break
            _clear_url_cache(path)
            if attempt + 1 < attempts:
                time.sleep(config.backoff_s * (2**attempt))
    tries = f" after {attempts} tries" if transient else ""
    return _Got(scene.id, band, error=f"{band}: {reason}{tries}", transient=transient)


class _Pipeline:
    """One thread pool for a whole read. Tasks are started in the order they were queued, with
    at most `window` started-but-unconsumed results (arrays) alive at once, so memory stays
    bounded however many dates there are; a result the consumer asks for that has not started
    yet starts at once (no deadlock when the consumer's order differs from the queue's)."""

    def __init__(self, grid: Grid, config: ReadConfig, cache: _Cache) -> None:
        self.grid, self.config, self.cache = grid, config, cache
        self.options = gdal_options(config)
        workers = max(int(config.max_workers), 1)
        self.window = workers * 4
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="changedet-read")
        self.queue: deque[tuple[Scene, str]] = deque()
        self.queued: set[tuple[str, str]] = set()
        self.started: dict[tuple[str, str], Future[_Got]] = {}

    def add(self, scene: Scene, band: str) -> None:
        key = (scene.id, band)
        if key not in self.queued and key not in self.started:
            self.queue.append((scene, band))
            self.queued.add(key)
        self.pump()

    def _start(self, scene: Scene, band: str) -> None:
        self.queued.discard((scene.id, band))
        self.started[(scene.id, band)] = self.pool.submit(
            _fetch,
            scene,
            band,
            self.grid,
            config=self.config,
            cache=self.cache,
            options=self.options,
        )

    def pump(self) -> None:
        while self.queue and len(self.started) < self.window:
            scene, band = self.queue.popleft()
            if (scene.id, band) in self.queued:
                self._start(scene, band)

    def take(self, scene: Scene, band: str) -> _Got:
        key = (scene.id, band)
        if key not in self.started:
            self._start(scene, band)  # needed now: jump the queue (a stale queue entry is skipped)
        got = self.started.pop(key).result()
        self.pump()
        return got

    def drop(self, scene_id: str) -> int:
        """Forget a scene's tasks; returns how many had already started (wasted reads)."""
        wasted = 0
        for key in [k for k in self.started if k[0] == scene_id]:
            future = self.started.pop(key)
            wasted += not future.cancel()
        self.queued -= {k for k in self.queued if k[0] == scene_id}
        self.pump()
        return wasted

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# probing and selection


@dataclass(frozen=True)
class Probe:
    """What the SCL window says about one scene inside the AOI."""

    scene_id: str
    clear_fraction: float  # clear AOI pixels / AOI pixels the scene covers with data (NaN unknown)
    coverage: float  # AOI pixels with data / AOI pixels (NaN unknown)
    has_scl: bool
    skip_reason: str | None = None  # why the scene is not used (None: it is used)


@dataclass
class _Probed:
    probes: dict[str, Probe]
    scl: dict[str, np.ndarray]
    clear: dict[str, np.ndarray]  # final SCL clear mask per scene (roof rule applied)
    roof: np.ndarray | None  # (H, W) persistent-bright pixels, None when no SCL at all
    failures: list[_Got]
    notes: list[str] = field(default_factory=list)
    cache_hits: int = 0
    assets_read: int = 0
    provisional: set[str] = field(default_factory=set)


def _clear_of(scl: np.ndarray, roof: np.ndarray | None, mask_config: MaskConfig) -> np.ndarray:
    keep = None
    if roof is not None and roof.any():
        keep = roof & scl_cloudy(scl, cloud_classes=mask_config.cloud_classes)
    return scl_clear(
        scl, invalid=mask_config.scl_invalid, dilate_px=mask_config.dilate_px, keep=keep
    )


def _fractions(
    scl: np.ndarray, clear: np.ndarray, aoi_mask: np.ndarray, roof: np.ndarray | None
) -> tuple[float, float]:
    """(AOI coverage, AOI clear fraction). Roof pixels are clear by rule on every date, so they
    say nothing about the weather: the clear fraction is measured on the other pixels."""
    aoi_pixels = int(aoi_mask.sum())
    covered = aoi_mask & (scl != 0)
    n_cov = int(covered.sum())
    coverage = n_cov / aoi_pixels if aoi_pixels else 0.0
    weather = covered & ~roof if roof is not None else covered
    if not weather.any():
        weather = covered
    n_weather = int(weather.sum())
    frac = float((clear & weather).sum()) / n_weather if n_weather else 0.0
    return coverage, frac


def _probe(
    scenes: Sequence[Scene],
    pipe: _Pipeline,
    *,
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress,
    bands: Sequence[str] = (),
) -> _Probed:
    """Read every scene's SCL window (in the order given) and decide which scenes to use.

    With `bands`, the band reads of a scene start as soon as its SCL passes a provisional test
    (the same test without the bright-roof rule, which needs every date): the probe and the
    band reads overlap instead of waiting for each other.
    """
    grid = pipe.grid
    with_scl = [s for s in scenes if "scl" in s.assets]
    for scene in with_scl:
        pipe.add(scene, "scl")
    scl: dict[str, np.ndarray] = {}
    failures: list[_Got] = []
    provisional: set[str] = set()
    first_clear: dict[str, np.ndarray] = {}
    n_cloudy = np.zeros(grid.shape, np.int32)
    n_obs = np.zeros(grid.shape, np.int32)
    hits = 0
    progress("probe", 0, len(with_scl))
    done = 0
    for scene in scenes:
        if "scl" not in scene.assets:
            for band in bands:  # no SCL: always read (clear = valid data), in date order
                pipe.add(scene, band)
            continue
        got = pipe.take(scene, "scl")
        done += 1
        progress("probe", done, len(with_scl))
        hits += got.cached
        if got.array is None:
            failures.append(got)
            continue
        array = got.array.astype(np.uint8, copy=False)
        scl[scene.id] = array
        observed = array != 0
        cloudy = scl_cloudy(array, cloud_classes=mask_config.cloud_classes)
        n_obs += observed
        n_cloudy += observed & cloudy
        if bands:
            clear = _clear_of(array, None, mask_config)
            first_clear[scene.id] = clear  # reused below when no pixel is a roof
            coverage, frac = _fractions(array, clear, aoi_mask, None)
            if _selection_reason(coverage, frac, scene, read_config) is None:
                provisional.add(scene.id)
                for band in bands:
                    pipe.add(scene, band)
    roof = None
    notes: list[str] = []
    if scl:
        roof = persistent_from_counts(
            n_cloudy,
            n_obs,
            fraction=mask_config.persistent_cloud_fraction,
            min_dates=mask_config.persistent_min_dates,
        )
        n_roof = int((roof & aoi_mask).sum())
        if n_roof:
            notes.append(
                f"{n_roof} AOI pixel(s) SCL calls cloud on >= "
                f"{mask_config.persistent_cloud_fraction:.0%} of dates kept clear (bright roofs)"
            )
        if not roof.any():
            roof = None
    probes: dict[str, Probe] = {}
    clears: dict[str, np.ndarray] = {}
    failed = {g.scene_id: g for g in failures}
    for scene in scenes:
        if scene.id in scl:
            array = scl[scene.id]
            if scene.id in first_clear and roof is None:
                clear = first_clear.pop(scene.id)
            else:
                clear = _clear_of(array, roof, mask_config)
            coverage, frac = _fractions(array, clear, aoi_mask, roof)
            reason = _selection_reason(coverage, frac, scene, read_config)
            probes[scene.id] = Probe(scene.id, frac, coverage, True, reason)
            clears[scene.id] = clear
        elif scene.id in failed:
            error = failed[scene.id].error
            probes[scene.id] = Probe(scene.id, math.nan, math.nan, True, f"SCL unreadable: {error}")
        else:
            probes[scene.id] = Probe(scene.id, math.nan, math.nan, False, None)
    return _Probed(
        probes,
        scl,
        clears,
        roof,
        failures,
        notes,
        cache_hits=hits,
        assets_read=len(scl) - hits,
        provisional=provisional,
    )


def _selection_reason(
    coverage: float, clear_fraction: float, scene: Scene, config: ReadConfig
) -> str | None:
    if coverage < config.min_aoi_coverage:
        return f"outside AOI: data on {coverage:.1%} of it (< {config.min_aoi_coverage:.0%})"
    if clear_fraction < config.min_aoi_clear_fraction:
        cloud = f"; scene cloud {scene.cloud_cover:.0f}%" if scene.cloud_cover is not None else ""
        return (
            f"cloudy inside AOI: {clear_fraction:.0%} clear < "
            f"{config.min_aoi_clear_fraction:.0%} required{cloud}"
        )
    return None


def _check_inputs(
    grid: Grid, aoi_mask: np.ndarray, config: ReadConfig, bands: Sequence[str] | None = None
) -> None:
    if aoi_mask.shape != grid.shape:
        raise ReadError(f"read: aoi_mask shape {aoi_mask.shape} does not match grid {grid.shape}")
    if bands is not None:
        if not bands:
            raise ConfigError("read.bands is empty; list the bands to read, e.g. ['red', 'nir']")
        if "scl" in bands:
            raise ConfigError("read.bands must not list 'scl'; SCL is read for masking on its own")
    _resampling(config.resampling)  # an unknown name fails now, not after the downloads


def probe_details(
    scenes: Sequence[Scene],
    grid: Grid,
    *,
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress = no_progress,
) -> dict[str, Probe]:
    """Per scene: AOI clear fraction, AOI coverage and why it would be skipped (from SCL only)."""
    _check_inputs(grid, aoi_mask, read_config)
    install_log_redaction()
    pipe = _Pipeline(grid, read_config, _Cache(read_config.cache_dir))
    try:
        probed = _probe(
            sorted(scenes, key=lambda s: (s.datetime, s.id)),
            pipe,
            aoi_mask=aoi_mask,
            read_config=read_config,
            mask_config=mask_config,
            progress=progress,
        )
    finally:
        pipe.close()
    return probed.probes


def probe_scenes(
    scenes: Sequence[Scene],
    grid: Grid,
    *,
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress = no_progress,
) -> dict[str, float]:
    """Scene id → AOI clear fraction from the SCL window (absent without SCL or when unreadable).

    For `changedet search --probe`; `probe_details` also gives coverage and skip reasons.
    """
    details = probe_details(
        scenes,
        grid,
        aoi_mask=aoi_mask,
        read_config=read_config,
        mask_config=mask_config,
        progress=progress,
    )
    return {sid: p.clear_fraction for sid, p in details.items() if math.isfinite(p.clear_fraction)}


# --------------------------------------------------------------------------------------------
# the stack


@dataclass(frozen=True)
class ReadResult:
    """A masked, harmonised stack and the record of how it was made."""

    stack: Stack
    skipped: tuple[SkippedScene, ...]
    probes: Mapping[str, float]  # scene id -> AOI clear fraction (absent when not measurable)
    bytes_fetched: int  # bytes downloaded over the network by this read (0 from cache/local)
    coverage: Mapping[str, float] = field(default_factory=dict)  # scene id -> AOI share with data
    notes: tuple[str, ...] = ()
    cache_hits: int = 0
    assets_read: int = 0


def _harmonise_into(
    out: np.ndarray, dn: np.ndarray, asset: Asset, where: np.ndarray, *, first: bool
) -> None:
    """out[where] = DN * scale + offset in float32, without temporaries of the full grid.

    first: `out` holds nothing yet: write every pixel (NaN outside `where`); unmasked ufuncs
    are about twice as fast as masked ones.
    """
    if first:
        np.multiply(dn, np.float32(asset.scale), out=out, casting="unsafe")
        out += np.float32(asset.offset)
        np.copyto(out, np.float32(np.nan), where=~where)
        return
    np.multiply(dn, np.float32(asset.scale), out=out, where=where, casting="unsafe")
    np.add(out, np.float32(asset.offset), out=out, where=where)


def read_stack(
    scenes: Sequence[Scene],
    grid: Grid,
    *,
    bands: Sequence[str],
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress = no_progress,
) -> ReadResult:
    """Read, mask, harmonise and mosaic `scenes` onto `grid`: one time step per acquisition date.

    Returns reflectance (T, B, H, W) float32 (NaN where not clear), clear (T, H, W), scl
    (T, H, W) uint8 (None when no scene had SCL). Scenes without SCL (L1C) use clear = valid
    data (noted). Raises NoScenesError when nothing usable is left and ReadError when every
    scene failed on transient network errors (the network, not the data, is the problem).
    """
    bands = tuple(bands)
    _check_inputs(grid, aoi_mask, read_config, bands)
    missing = sorted({b for s in scenes for b in bands if b not in s.assets})
    if missing:
        raise ReadError(
            f"read: scenes lack assets for bands {missing}; search with the same bands you read"
        )
    install_log_redaction()
    ordered = sorted(scenes, key=lambda s: (s.datetime, s.id))
    pipe = _Pipeline(grid, read_config, _Cache(read_config.cache_dir))
    bytes_before = network_bytes()
    try:
        built = _read_and_mosaic(
            ordered,
            pipe,
            bands=bands,
            aoi_mask=aoi_mask,
            read_config=read_config,
            mask_config=mask_config,
            progress=progress,
        )
    finally:
        pipe.close()
    bytes_after = network_bytes()
    notes, skipped = built.notes, sorted(built.skipped, key=lambda s: s.scene_id)
    fetched = (
        max(bytes_after - bytes_before, 0)
        if bytes_before is not None and bytes_after is not None
        else 0
    )
    if bytes_before is None:
        notes.append("bytes_fetched unavailable: GDAL network statistics not reachable")
    if not built.times:
        transient = [f for f in built.failures if f.transient]
        if built.failures and len(transient) == len(built.failures):
            raise ReadError(
                f"read: every scene failed on network errors ({transient[0].error}); "
                "check the connection or try later"
            )
        raise NoScenesError(
            f"read: no usable scene left of {len(scenes)}: "
            + "; ".join(sorted({s.reason.split(":")[0] for s in skipped})[:3])
            + "; widen the dates or lower read.min_aoi_clear_fraction"
        )
    stack = Stack(
        grid=grid,
        bands=bands,
        times=tuple(built.times),
        scene_ids=tuple(built.scene_ids),
        reflectance=built.reflectance,
        clear=built.clear,
        scl=built.scl,
    )
    return ReadResult(
        stack=stack,
        skipped=tuple(skipped),
        probes=built.probes,
        bytes_fetched=int(fetched),
        coverage=built.coverage,
        notes=tuple(notes),
        cache_hits=built.cache_hits,
        assets_read=built.assets_read,
    )


@dataclass
class _Built:
    reflectance: np.ndarray
    clear: np.ndarray
    scl: np.ndarray | None
    times: list[datetime]
    scene_ids: list[tuple[str, ...]]
    skipped: list[SkippedScene]
    notes: list[str]
    failures: list[_Got]
    probes: dict[str, float]
    coverage: dict[str, float]
    cache_hits: int
    assets_read: int


def _read_and_mosaic(
    ordered: Sequence[Scene],
    pipe: _Pipeline,
    *,
    bands: tuple[str, ...],
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress,
) -> _Built:
    grid = pipe.grid
    probed = _probe(
        ordered,
        pipe,
        aoi_mask=aoi_mask,
        read_config=read_config,
        mask_config=mask_config,
        progress=progress,
        bands=bands,
    )
    notes = list(probed.notes)
    failures = list(probed.failures)
    cache_hits = probed.cache_hits
    assets_read = probed.assets_read
    skipped: list[SkippedScene] = []
    selected: list[Scene] = []
    wasted = 0
    for scene in ordered:
        reason = probed.probes[scene.id].skip_reason
        if reason is not None and not read_config.probe_scl and reason.startswith("cloudy"):
            reason = None  # probe_scl = false: keep cloudy scenes, their pixels are masked anyway
        if reason is None:
            selected.append(scene)
            for band in bands:  # passed only with the roof rule: its reads start now
                pipe.add(scene, band)
        else:
            skipped.append(SkippedScene(scene.id, reason))
            if scene.id in probed.provisional:
                wasted += pipe.drop(scene.id)
    if wasted:
        notes.append(
            f"{wasted} asset read(s) started before the bright-roof rule dropped their scene"
        )

    # Dates in order; inside a date, most clear AOI pixels first (unknown → last), then id.
    by_date: dict[date, list[Scene]] = {}
    for scene in selected:
        by_date.setdefault(scene.date, []).append(scene)
    for members in by_date.values():
        members.sort(key=lambda s: (-_clear_share(probed.probes[s.id]), s.id))

    h, w = grid.shape
    n_dates = len(by_date)
    # np.empty: each date's slot is written in full by its first scene (NaN where not clear), so
    # the pages are first touched while the workers are still downloading, and only once.
    reflectance = np.empty((n_dates, len(bands), h, w), dtype=np.float32)
    clear = np.empty((n_dates, h, w), dtype=bool)
    scl_out = np.empty((n_dates, h, w), dtype=np.uint8) if probed.scl else None
    times: list[datetime] = []
    scene_ids: list[tuple[str, ...]] = []
    known = {sid: p for sid, p in probed.probes.items() if math.isfinite(p.clear_fraction)}
    probes: dict[str, float] = {sid: p.clear_fraction for sid, p in known.items()}
    coverage: dict[str, float] = {sid: p.coverage for sid, p in known.items()}
    fallback: list[str] = []
    aoi_pixels = int(aoi_mask.sum())
    total = len(selected) * len(bands)
    done = 0
    progress("read", 0, total)
    t_out = 0
    for members in by_date.values():
        clear[t_out] = False
        if scl_out is not None:
            scl_out[t_out] = 0
        filled = clear[t_out]
        used: list[str] = []
        for scene in members:
            dns: list[np.ndarray] = []
            broken = None
            for band in bands:
                got = pipe.take(scene, band)
                done += 1
                progress("read", done, total)
                cache_hits += got.cached
                assets_read += got.array is not None and not got.cached
                if got.array is None:
                    failures.append(got)
                    broken = broken or got.error or "unreadable"
                else:
                    dns.append(got.array)
            if broken is not None:
                skipped.append(SkippedScene(scene.id, f"unreadable asset: {broken}"))
                continue
            valid_all = np.ones(grid.shape, bool)
            for band, dn in zip(bands, dns, strict=True):
                nodata = scene.assets[band].nodata
                if nodata is not None:
                    valid_all &= dn != nodata
            scene_scl = probed.scl.get(scene.id)
            if scene_scl is not None:
                scene_clear = probed.clear[scene.id] & valid_all
            else:  # no SCL (L1C): clear = valid data, the documented fallback
                covered = aoi_mask & valid_all
                cov = float(covered.sum()) / aoi_pixels if aoi_pixels else 0.0
                coverage[scene.id] = cov
                probes[scene.id] = 1.0 if covered.any() else 0.0
                reason = _selection_reason(cov, probes[scene.id], scene, read_config)
                if reason is not None:
                    skipped.append(SkippedScene(scene.id, reason))
                    continue
                fallback.append(scene.id)
                scene_clear = valid_all
            take = scene_clear & ~filled
            for b, (band, dn) in enumerate(zip(bands, dns, strict=True)):
                _harmonise_into(reflectance[t_out, b], dn, scene.assets[band], take, first=not used)
            filled |= take
            if scl_out is not None and scene_scl is not None:
                # the SCL of the scene that gave the pixel, else of the first one with data
                np.copyto(scl_out[t_out], scene_scl, where=take | (scl_out[t_out] == 0))
            used.append(scene.id)
        if used:
            times.append(min(s.datetime for s in members if s.id in used))
            scene_ids.append(tuple(used))
            t_out += 1  # else the slot is reused (and re-initialised) by the next date

    if scl_out is not None:
        scl_out = scl_out[:t_out]
    if fallback:
        notes.append(
            f"{len(fallback)} scene(s) without SCL: clear = valid data (fallback): "
            + ", ".join(fallback[:5])
            + (" ..." if len(fallback) > 5 else "")
        )
    return _Built(
        reflectance=reflectance[:t_out],
        clear=clear[:t_out],
        scl=scl_out,
        times=times,
        scene_ids=scene_ids,
        skipped=skipped,
        notes=notes,
        failures=failures,
        probes=probes,
        coverage=coverage,
        cache_hits=cache_hits,
        assets_read=assets_read,
    )


def _clear_share(probe: Probe) -> float:
    """Share of the AOI a scene shows clear: the mosaic puts the scene giving most first."""
    value = probe.clear_fraction * probe.coverage
    return value if math.isfinite(value) else -1.0
