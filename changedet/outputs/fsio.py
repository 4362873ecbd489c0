"""Atomic file writing and the one place rasters are written (COGs).

Everything changedet writes goes through a temporary file in the target folder that is renamed
into place only when complete, so a crash or a bad input never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError

from changedet.errors import OutputError
from changedet.models import Grid

__all__ = [
    "apply_umask",
    "atomic_dir",
    "atomic_path",
    "quiet_libtiff",
    "write_cog",
    "write_json",
    "write_text",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; outputs are meant to be shared like any file
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; on success it replaces `path` as a whole.

    A previous `path` is moved aside first and removed only after the new one is in place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def apply_umask(folder: Path) -> None:
    """Give a finished tree the ordinary permissions of the user's umask: temporary files and
    folders are created private (0600/0700), outputs are meant to be shared like any file."""
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@functools.cache
def quiet_libtiff() -> None:
    """Stop libtiff printing its own lines ("_tiffWriteProc: No space left on device.") on
    stderr, process-wide, once. GDAL built against libtiff >= 4.5 takes every error through
    per-file handlers and raises it; the global handler it no longer sets is libtiff's default,
    which printed the errors of GDAL's file I/O a second time, past the CLI. An older pair
    (GDAL before 3.7, libtiff before 4.5) sets that global handler itself, to raise what it
    reports: it is left alone there."""
    if not _gdal_at_least(3, 7):
        return
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:  # Linux: the loaded libtiff(s)
            paths = {line.split()[-1] for line in maps if "/libtiff" in line}
    except OSError:
        return
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # the loaded one again, not a second copy
        except OSError:
            continue
        if not _libtiff_at_least(lib, 4, 5):
            continue
        for setter in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
            func = getattr(lib, setter, None)
            if func is not None:
                func.restype = ctypes.c_void_p
                func.argtypes = [ctypes.c_void_p]
                func(None)


def _gdal_at_least(major: int, minor: int) -> bool:
    parts = str(getattr(rasterio, "__gdal_version__", "0.0")).split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def _libtiff_at_least(lib: ctypes.CDLL, major: int, minor: int) -> bool:
    """libtiff's own version ("LIBTIFF, Version 4.6.0 ...")."""
    version = getattr(lib, "TIFFGetVersion", None)
    if version is None:
        return False
    version.restype = ctypes.c_char_p
    found = re.search(rb"Version (\d+)\.(\d+)", version() or b"")
    return found is not None and (int(found[1]), int(found[2])) >= (major, minor)


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str, allow_nan=False) + "\n")


def write_cog(
    path: Path,
    array: np.ndarray,
    grid: Grid,
    *,
    nodata: float | None = None,
    descriptions: tuple[str, ...] = (),
    tags: dict[str, str] | None = None,
    resampling: str = "nearest",
    colorinterp: tuple[str, ...] = (),
) -> Path:
    """Write a (H, W) or (B, H, W) array on `grid` as a Cloud-Optimised GeoTIFF (DEFLATE, 512 px
    tiles, overviews), atomically. `colorinterp` names each band's colour ("red", "green",
    "blue", "gray", ...) for viewers that go by it."""
    quiet_libtiff()

    data = array[np.newaxis] if array.ndim == 2 else array
    if data.shape[1:] != grid.shape:
        raise OutputError(
            f"cannot write {path.name}: array shape {data.shape[1:]} != grid {grid.shape}"
        )
    profile = {
        "driver": "COG",
        "width": grid.width,
        "height": grid.height,
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "compress": "DEFLATE",
        "predictor": 3 if data.dtype.kind == "f" else 2,
        "blocksize": 512,
        "overview_resampling": resampling,
        "num_threads": "ALL_CPUS",  # tiles are compressed in parallel; the bytes are the same
    }
    try:
        with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            for i, text in enumerate(descriptions, start=1):
                dst.set_band_description(i, text)
            if tags:
                dst.update_tags(**tags)
            if colorinterp:
                dst.colorinterp = [ColorInterp[name] for name in colorinterp]
    except (RasterioError, CPLE_BaseError) as exc:
        raise OutputError(f"cannot write {path}: {exc}") from None
    return path
