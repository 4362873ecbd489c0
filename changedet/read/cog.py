"""The rasterio boundary: one asset of one scene read onto the AOI grid. The only rasterio reader
of scene assets.

One responsibility: get pixels from a COG (local, /vsicurl/ or /vsis3/) onto the grid, fast and
safely. GDAL options live in one commented place (`gdal_options`); only the source window
covering the grid is fetched, then copied, upsampled in numpy (a 20 m band on the 10 m lattice:
`read.upsample`), read resampled or warped by GDAL; transient HTTP errors are retried and every
failure becomes a one-line reason without tokens (a missing, corrupt or truncated asset skips
its scene instead of ending the run); `ReadPipeline` runs the reads on one bounded thread pool,
consulting the pixel cache (`changedet.read.cache`) for network reads. Which scenes to read is
`changedet.read.probe`; the stack they make is `changedet.read.stack`.
"""

from __future__ import annotations

import ctypes
import glob
import json
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from changedet.config import ReadConfig
from changedet.errors import ConfigError, ReadError, UnsafeHrefError
from changedet.hrefs import href_name, public_href, redact
from changedet.models import Asset, Grid, Scene
from changedet.read.cache import PixelCache
from changedet.read.upsample import TAPS_DTYPES, source_span, upsample_2x

__all__ = [
    "AssetRead",
    "ReadPipeline",
    "check_read_inputs",
    "clear_http_cache",
    "gdal_options",
    "gdal_path",
    "network_bytes",
    "reproject_array",
]


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

    Hrefs reach here only through `changedet.catalog`, which already refused local targets from remote
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
# one asset onto the grid


def _resampling(name: str) -> Any:
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


# Starts the reason of a file that is not what its item says (`_disagreement`); no
# parentheses after it, so the run's one-line warning keeps what disagrees.
_DISAGREES = "disagrees with its item"


def _disagreement(src: Any, asset: Asset) -> str | None:
    """Why an opened file is not the asset its item describes (None: it is, as far as the item
    says): one band, the `raster:bands` data type, the `proj:epsg`. A float file scaled as
    DNs, a band 1 of three, a file in another zone placed as the item's would give wrong
    reflectance or land off the grid without an error."""
    name = href_name(asset.href)
    if src.count != 1:
        return f"{_DISAGREES}: {name} holds {src.count} bands, one expected"
    try:
        stated = np.dtype(asset.data_type) if asset.data_type else None
    except TypeError:  # a type numpy does not name ("other", "cint16"): nothing to compare
        stated = None
    if stated is not None and np.dtype(src.dtypes[0]) != stated:
        return (
            f"{_DISAGREES}: {name} is {src.dtypes[0]}, its raster:bands data_type says "
            f"{asset.data_type}"
        )
    if asset.epsg is None:
        return None
    try:
        same = src.crs == CRS.from_epsg(asset.epsg) or src.crs.to_epsg() == asset.epsg
    except CRSError:
        return None
    if same:
        return None
    code = src.crs.to_epsg()
    held = f"EPSG:{code}" if code else str(src.crs.to_string())[:60]
    return f"{_DISAGREES}: {name} is in {held}, its proj:epsg says {asset.epsg}"


def _read_onto_grid(
    path: str,
    grid: Grid,
    *,
    resampling: Any,
    nodata: float | None,
    expect: Asset | None = None,
) -> np.ndarray:
    """Read band 1 of `path` onto `grid`: only the source window covering the grid is fetched.

    Four paths, fastest first: the same pixel lattice (a window copy); a 20 m band on the 10 m
    lattice (the window upsampled in numpy, GDAL's values inside the tile and along its edge:
    `read.upsample`); the same CRS with other pixel sizes (GDAL's resampled window read, about
    4x cheaper than the warper; a grid running over the tile's edge is read so inside, only
    the strips along the edge by the warper); anything else (another UTM zone: the GDAL
    warper on the covering window). `expect`: the asset as its item describes it; a file
    that disagrees (`_disagreement`) is refused with why (ReadError).
    """
    with rasterio.open(path) as src:
        if src.crs is None:
            raise ReadError(
                "asset has no CRS: a file without georeferencing, or one whose transfer was cut short"
            )
        disagreement = _disagreement(src, expect) if expect is not None else None
        if disagreement is not None:
            raise ReadError(disagreement)
        fill = nodata if nodata is not None else (src.nodata if src.nodata is not None else 0)
        dst_crs = CRS.from_user_input(grid.crs)
        same_crs = src.crs == dst_crs
        if same_crs and _aligned(src, grid):
            return _window_copy(src, grid, fill=fill)
        if same_crs:
            upsampled = _upsampled_window(src, grid, resampling=resampling, fill=fill)
            if upsampled is not None:
                return upsampled
            resampled = _resampled_window(src, grid, resampling=resampling, fill=fill)
            if resampled is None:
                resampled = _split_at_edges(src, grid, dst_crs, resampling=resampling, fill=fill)
            if resampled is not None:
                return resampled
        return _warped_window(src, grid, dst_crs, resampling=resampling, fill=fill)


def _window_copy(src: Any, grid: Grid, *, fill: float) -> np.ndarray:
    """The grid's window of a source on the same pixel lattice; `fill` where it runs off."""
    st = src.transform
    col0 = round((grid.transform.c - st.c) / st.a)
    row0 = round((grid.transform.f - st.f) / st.e)
    r0, r1 = max(row0, 0), min(row0 + grid.height, src.height)
    c0, c1 = max(col0, 0), min(col0 + grid.width, src.width)
    if (r0, c0, r1, c1) == (row0, col0, row0 + grid.height, col0 + grid.width):
        return np.asarray(src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0)))
    out = np.full(grid.shape, fill, dtype=src.dtypes[0])
    if r1 > r0 and c1 > c0:
        out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = src.read(
            1, window=Window(c0, r0, c1 - c0, r1 - r0)
        )
    return out


def _upsampled_window(src: Any, grid: Grid, *, resampling: Any, fill: float) -> np.ndarray | None:
    """A grid of half the source's pixel size on its lattice (a 20 m band onto the 10 m grid):
    the covering source window read, then nearest or bilinear in numpy (`read.upsample`: GDAL's
    values, inside the tile and along its edge). None when that does not apply (other pixel
    sizes, a shifted lattice, rotation, other kernels or types, nodata by an edge pixel)."""
    st, gt = src.transform, grid.transform
    dtype = np.dtype(src.dtypes[0])
    if resampling not in (Resampling.nearest, Resampling.bilinear) or dtype not in TAPS_DTYPES:
        return None
    if st.b != 0 or st.d != 0 or gt.b != 0 or gt.d != 0:
        return None
    if not (math.isclose(st.a, 2 * gt.a) and math.isclose(st.e, 2 * gt.e)):
        return None
    col, row = (gt.c - st.c) / gt.a, (gt.f - st.f) / gt.e
    info = np.iinfo(dtype)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    if fill != int(fill) or not info.min <= fill <= info.max:
        return None
    offset = (round(row), round(col))
    rows = source_span(offset[0], grid.height, src.height)
    cols = source_span(offset[1], grid.width, src.width)
    if rows[1] <= rows[0] or cols[1] <= cols[0]:
        return np.full(grid.shape, fill, dtype=dtype)
    window = src.read(1, window=Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0]))
    return upsample_2x(
        np.asarray(window),
        (rows[0], cols[0]),
        offset,
        grid.shape,
        (src.height, src.width),
        bilinear=resampling == Resampling.bilinear,
        nodata=fill,
    )


def _resampled_window(src: Any, grid: Grid, *, resampling: Any, fill: float) -> np.ndarray | None:
    """GDAL's resampled window read of a north-up source in the grid's CRS (nearest or bilinear),
    or None when that path does not apply (rotation, other kernels, the grid near a tile edge)."""
    st = src.transform
    north_up = st.b == 0 and st.d == 0 and grid.transform.b == 0 and grid.transform.d == 0
    if not north_up or resampling not in (Resampling.nearest, Resampling.bilinear):
        return None
    win = from_bounds(*grid.bounds, transform=st)
    inside = (
        win.col_off >= 1
        and win.row_off >= 1
        and win.col_off + win.width <= src.width - 1
        and win.row_off + win.height <= src.height - 1
    )
    if not inside:
        return None
    out = np.asarray(src.read(1, window=win, out_shape=grid.shape, resampling=resampling))
    if resampling == Resampling.bilinear:
        _mask_blended_nodata(src, grid, out, fill)
    return out


def _inner_rect(src: Any, grid: Grid) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1): the grid's pixels whose source window keeps one source pixel
    from every edge of a north-up source in the grid's CRS (may be empty)."""
    st, gt = src.transform, grid.transform
    eps = 1e-9
    c0 = math.ceil((st.c + st.a - gt.c) / gt.a - eps)
    c1 = math.floor((st.c + (src.width - 1) * st.a - gt.c) / gt.a + eps)
    r0 = math.ceil((st.f + st.e - gt.f) / gt.e - eps)
    r1 = math.floor((st.f + (src.height - 1) * st.e - gt.f) / gt.e + eps)
    return max(r0, 0), min(r1, grid.height), max(c0, 0), min(c1, grid.width)


def _part(grid: Grid, rows: tuple[int, int], cols: tuple[int, int]) -> Grid:
    transform = grid.transform @ Affine.translation(cols[0], rows[0])
    return Grid(grid.crs, transform, cols[1] - cols[0], rows[1] - rows[0])


def _split_at_edges(
    src: Any, grid: Grid, dst_crs: Any, *, resampling: Any, fill: float
) -> np.ndarray | None:
    """A grid running over a tile's edge (an AOI's context window near it, an AOI on two
    tiles): the part inside by the resampled window read, so each pixel there gets what a grid
    lying inside the tile would give it, and only the strips along the edge by the warper, at
    several times the cost (tests/test_read.py). None when too little of the grid is inside for
    the split to pay."""
    r0, r1, c0, c1 = _inner_rect(src, grid)
    if (r1 - r0) * (c1 - c0) < grid.width * grid.height // 4:
        return None
    inner = _resampled_window(
        src, _part(grid, (r0, r1), (c0, c1)), resampling=resampling, fill=fill
    )
    if inner is None:
        return None
    out = np.empty(grid.shape, dtype=inner.dtype)
    out[r0:r1, c0:c1] = inner
    h, w = grid.shape
    strips = [((0, r0), (0, w)), ((r1, h), (0, w)), ((r0, r1), (0, c0)), ((r0, r1), (c1, w))]
    for rows, cols in strips:
        if rows[1] > rows[0] and cols[1] > cols[0]:
            part = _part(grid, rows, cols)
            warped = _warped_window(src, part, dst_crs, resampling=resampling, fill=fill)
            out[rows[0] : rows[1], cols[0] : cols[1]] = warped
    return out


def _warped_window(
    src: Any, grid: Grid, dst_crs: Any, *, resampling: Any, fill: float
) -> np.ndarray:
    """The GDAL warper on the source window covering the grid (padded for the kernel)."""
    st = src.transform
    out = np.full(grid.shape, fill, dtype=src.dtypes[0])
    bounds = (
        grid.bounds
        if src.crs == dst_crs
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
    source = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
    return _warp(
        source,
        (st @ Affine.translation(c0, r0), src.crs),
        out,
        (grid.transform, dst_crs),
        nodata=fill,
        resampling=resampling,
    )


def _warp(
    source: np.ndarray,
    src_georef: tuple[Any, Any],
    destination: np.ndarray,
    dst_georef: tuple[Any, Any],
    *,
    nodata: float | None,
    resampling: Any,
) -> np.ndarray:
    """`source` warped onto `destination` (same band count; its pixels no source pixel reaches
    keep their value) by the GDAL warper; each georef is (transform, CRS). Returns a new array.

    Datasets, not arrays: reproject() wraps arrays in MEM datasets opened before their transform
    is set, and silences the NotGeoreferencedWarning that causes with warnings.catch_warnings,
    which is not thread-safe: under the read pool it escapes.
    """
    bands: int | list[int] = 1 if source.ndim == 2 else list(range(1, source.shape[0] + 1))
    with (
        _georeferenced(source, *src_georef) as warp_src,
        _georeferenced(destination, *dst_georef) as warp_dst,
    ):
        reproject(
            source=rasterio.band(warp_src, bands),
            destination=rasterio.band(warp_dst, bands),
            src_nodata=nodata,
            dst_nodata=nodata,
            resampling=resampling,
        )
        return np.asarray(warp_dst.read(bands))


def reproject_array(
    array: np.ndarray, src: Grid, dst: Grid, *, nearest: bool, nodata: float | None = None
) -> np.ndarray:
    """`array` ((H, W) or (B, H, W) on `src`) warped onto `dst` by GDAL, nearest or bilinear.

    nodata: the value of missing pixels in `array` (NaN allowed), also given to the pixels of
    `dst` no source pixel reaches; None: every source pixel holds data, unreached pixels are 0.
    The only array reprojection of changedet: it lives beside the reader that owns rasterio.
    """
    fill = 0 if nodata is None else nodata
    out = np.full((*array.shape[:-2], *dst.shape), fill, dtype=array.dtype)
    return _warp(
        array,
        (src.transform, src.crs),
        out,
        (dst.transform, dst.crs),
        nodata=nodata,
        resampling=Resampling.nearest if nearest else Resampling.bilinear,
    )


def _georeferenced(array: np.ndarray, transform: Any, crs: Any) -> Any:
    """An in-memory dataset holding a copy of `array` ((H, W) or (B, H, W)), created with its
    transform and CRS (so it is never seen without them)."""
    height, width = array.shape[-2:]
    dataset = rasterio.open(
        "",
        "w+",
        driver="MEM",
        width=width,
        height=height,
        count=1 if array.ndim == 2 else array.shape[0],
        dtype=array.dtype,
        crs=crs,
        transform=transform,
    )
    try:
        if array.ndim == 2:
            dataset.write(array, 1)
        else:
            dataset.write(array)
    except BaseException:
        dataset.close()
        raise
    return dataset


def _mask_blended_nodata(src: Any, grid: Grid, out: np.ndarray, fill: float) -> None:
    """GDAL's resampled window read blends nodata into bilinear samples at data edges: set to
    nodata every grid pixel whose four bilinear source neighbours include a nodata pixel."""
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
class AssetRead:
    scene_id: str
    band: str
    array: np.ndarray | None = None
    error: str | None = None
    transient: bool = False
    cached: bool = False


_HTTP_STATUS = re.compile(r"HTTP (?:response )?code:?\s*(\d{3})", re.IGNORECASE)


def _classify(exc: BaseException) -> tuple[str, bool]:
    """(one-line reason without tokens, transient?) for a failed asset read."""
    if isinstance(exc, ReadError) and str(exc).startswith(_DISAGREES):
        return str(exc), False  # the file is whole: another read gives the same
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
    if "could not resolve" in lowered or "name or service not known" in lowered:
        return "host not found (no network, or a mistyped host)", True
    if "curl error" in lowered:  # any other failure of the transfer itself, not of the file
        return f"network error ({text.splitlines()[0][:120]})", True
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
    cache: PixelCache,
    options: Mapping[str, Any],
) -> AssetRead:
    """One asset of one scene onto the grid (cache, then network with retries). Never raises."""
    asset = scene.assets[band]
    resampling_name = "nearest" if band == "scl" else config.resampling
    try:
        path = gdal_path(asset.href)
    except UnsafeHrefError as exc:
        return AssetRead(scene.id, band, error=str(exc))
    # Only network reads are cached: a local COG window reads as fast as the cache would.
    key = cache.key(scene, band, asset, grid, resampling_name) if path.startswith("/vsi") else None
    hit = cache.get(key, grid.shape) if key else None
    if hit is not None:
        return AssetRead(scene.id, band, hit, cached=True)
    resampling = _resampling(resampling_name)
    attempts = 2  # GDAL already retried HTTP errors GDAL_HTTP_MAX_RETRY times inside each
    reason, transient = "not read", False
    for attempt in range(attempts):
        try:
            with rasterio.Env(**options):
                array = _read_onto_grid(
                    path, grid, resampling=resampling, nodata=asset.nodata, expect=asset
                )
            if key:
                cache.put(key, array)
            return AssetRead(scene.id, band, array)
        except (RasterioError, ReadError, OSError, ValueError) as exc:
            reason, transient = _classify(exc)
            if not transient:
                break
            _clear_url_cache(path)
            if attempt + 1 < attempts:
                time.sleep(config.backoff_s * (2**attempt))
    tries = f" after {attempts} tries" if transient else ""
    return AssetRead(scene.id, band, error=f"{band}: {reason}{tries}", transient=transient)


class ReadPipeline:
    """One thread pool for a whole read. Tasks are started in the order they were queued, with
    at most `window` started-but-unconsumed results (arrays) alive at once, so memory stays
    bounded however many dates there are; a result the consumer asks for that has not started
    yet starts at once (no deadlock when the consumer's order differs from the queue's).
    Network reads go through the pixel cache of `config.cache_dir`. A context manager: leaving
    it shuts the pool down."""

    def __init__(self, grid: Grid, config: ReadConfig) -> None:
        self.grid, self.config = grid, config
        self.cache = PixelCache(config.cache_dir, max_bytes=int(config.cache_max_gb * 1e9))
        self.options = gdal_options(config)
        workers = max(int(config.max_workers), 1)
        self.window = workers * 4
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="changedet-read")
        self.queue: deque[tuple[Scene, str]] = deque()
        self.queued: set[tuple[str, str]] = set()
        self.started: dict[tuple[str, str], Future[AssetRead]] = {}

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

    def take(self, scene: Scene, band: str) -> AssetRead:
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

    def __enter__(self) -> ReadPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_read_inputs(
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
