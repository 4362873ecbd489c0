"""The pixel cache: network reads of scene assets kept on disk as arrays on the grid.

One responsibility: make a rerun fetch nothing, and never hand back pixels other than those
read. One file per (item, collection, band, href without its signing token, grid, resampling),
written atomically, holding the key it was made for, a SHA-256 of its payload, the array's dtype
and shape, and its bytes. On read the key and the checksum are verified: a damaged, truncated,
stale or mis-shaped entry is a miss, deleted, logged and counted in the run's read notes, and the
asset is read again. A cache folder that cannot be used is reported once and the run goes on
uncached; a full or read-only cache never fails a run. An empty `read.cache_dir` turns the cache
off. The folder stays under `read.cache_max_gb`: past it, the least recently used entries (a hit
refreshes an entry's time) are removed down to 80 % of the limit, so a monitoring job that runs
for months does not fill its disk. Used by `changedet.read.cog` for network reads only (a local
COG window reads as fast as the cache would).

Not `.npy`: `np.load` parses its header with `ast.literal_eval`, and CPython 3.11's AST state is
per interpreter, so two reader threads parsing at once can fail with "SystemError: AST
constructor recursion depth mismatch" (seen in CI). The header here is JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from changedet.hrefs import public_href
from changedet.models import Asset, Grid, Scene

__all__ = ["CACHE_VERSION", "PixelCache", "cache_bytes"]

CACHE_VERSION = 3  # bump when the cached array's meaning or the entry layout changes
_MAGIC = b"changedet-pixels 3\n"
_MAX_HEADER = 16_384  # bytes of the JSON header line; a longer one is damage
_SUFFIX = ".npyc"
_LOW_WATER = 0.8  # past the limit, entries go until the folder holds this share of it

log = logging.getLogger(__name__)
_reported_unusable: set[str] = set()  # cache folders already reported unusable (per process)
_reported_lock = threading.Lock()


class _Damaged(Exception):
    """A cache entry that must not be used; the message says why."""


class PixelCache:
    """Arrays on the grid, one checked file per key; atomic writes; thread-safe.

    `key()` returns the entry's identity as text; the file name is its hash, and the text itself
    is stored in the entry, so an entry can never be taken for another's. `notes()` says what a
    run should record: entries discarded and an unusable folder."""

    def __init__(self, root: str, max_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser() if root else None
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._evicting = threading.Lock()
        self.discarded: list[str] = []  # "<file>: <why>" of every entry thrown away
        self.unusable: str | None = None  # why the folder cannot be used (then: no cache)
        self._checked = False  # the folder is made (and checked) at the first write only
        self._bytes: int | None = None  # the folder's size as last counted, plus writes since
        self.evicted = 0  # entries removed to stay under max_bytes
        self.evicted_bytes = 0

    # -- keys and paths ------------------------------------------------------------------------

    def key(self, scene: Scene, band: str, asset: Asset, grid: Grid, resampling: str) -> str:
        return json.dumps(
            [
                CACHE_VERSION,
                scene.id,
                scene.collection,
                # A scene reprocessed in place keeps its id and hrefs: its new pixels are new.
                scene.processing_baseline,
                scene.updated,
                band,
                public_href(asset.href),  # signed URLs change, the asset does not
                grid.crs,
                list(grid.transform)[:6],
                grid.width,
                grid.height,
                resampling,
            ]
        )

    def _path(self, key: str) -> Path | None:
        if self.root is None or self.unusable is not None:
            return None
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}{_SUFFIX}"

    # -- read ----------------------------------------------------------------------------------

    def get(self, key: str, shape: tuple[int, int]) -> np.ndarray | None:
        """The cached array for `key`, or None (absent, or damaged: then it is deleted)."""
        path = self._path(key)
        if path is None:
            return None
        try:
            blob = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None  # not cached (yet); a folder that cannot be made is reported on write
        except OSError as exc:
            self._discard(path, f"unreadable ({exc.strerror or exc})")
            return None
        try:
            array = _decode(blob, key, shape)
        except _Damaged as exc:
            self._discard(path, str(exc))
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to be evicted
        return array

    def _discard(self, path: Path, why: str) -> None:
        _remove_entry(path)
        log.warning("pixel cache: discarded entry %s (%s); the asset is read again", path, why)
        with self._lock:
            self.discarded.append(f"{path.name}: {why}")

    # -- write ---------------------------------------------------------------------------------

    def put(self, key: str, array: np.ndarray) -> None:
        path = self._path(key)
        if path is None:
            return
        data = np.ascontiguousarray(array).tobytes()
        header = json.dumps(
            {
                "key": key,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "dtype": array.dtype.str,
                "shape": list(array.shape),
            }
        ).encode()
        if not self._checked:
            self._check_root()
            if self.unusable is not None:
                return
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=f"{_SUFFIX}.part", dir=path.parent)
            blob = _MAGIC + header + b"\n" + data
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
            if path.is_dir():  # a folder where the entry goes: one entry's trouble, not the
                _remove_entry(path)  # cache's
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only cache never fails a run: reported once
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            self._mark_unusable(f"cannot write ({exc.strerror or exc})")
            return
        self._count(len(blob))

    # -- the size limit ------------------------------------------------------------------------

    def _count(self, added: int) -> None:
        """Add a write to the folder's size; past `max_bytes`, evict."""
        if self.max_bytes is None or self.root is None:
            return
        with self._lock:
            if self._bytes is not None:
                self._bytes += added
            over = self._bytes is None or self._bytes > self.max_bytes
        if over:
            self._evict()

    def _evict(self) -> None:
        """Count the folder (other processes write to it too) and, past `max_bytes`, remove the
        least recently used entries until it holds `_LOW_WATER` of it."""
        assert self.root is not None and self.max_bytes is not None
        if not self._evicting.acquire(blocking=False):
            return  # another thread is at it
        try:
            entries = sorted(_entries(self.root))
            total = sum(size for _, size, _ in entries)
            removed = freed = 0
            if total > self.max_bytes:
                target = self.max_bytes * _LOW_WATER
                for _, size, path in entries:
                    if total - freed <= target:
                        break
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
                    freed += size
            with self._lock:
                self._bytes = total - freed
                self.evicted += removed
                self.evicted_bytes += freed
        except OSError as exc:
            log.warning("pixel cache %s: cannot keep it under its size limit (%s)", self.root, exc)
        finally:
            self._evicting.release()

    # -- the folder ----------------------------------------------------------------------------

    def _check_root(self) -> None:
        assert self.root is not None
        self._checked = True
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._mark_unusable(f"cannot create it ({exc.strerror or exc})")
            return
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            self._mark_unusable("not readable and writable")

    def _mark_unusable(self, why: str) -> None:
        with self._lock:
            if self.unusable is not None:
                return
            self.unusable = why
        where = str(self.root)
        with _reported_lock:
            first = where not in _reported_unusable
            _reported_unusable.add(where)
        if first:
            log.warning(
                "pixel cache folder %s is unusable: %s; reads are not cached (fix or change "
                'read.cache_dir, or set it to "" to turn the cache off)',
                where,
                why,
            )

    def notes(self) -> list[str]:
        """What the run records about the cache: discarded entries, an unusable folder."""
        notes = []
        if self.discarded:
            sample = "; ".join(self.discarded[:3]) + (" ..." if len(self.discarded) > 3 else "")
            notes.append(
                f"pixel cache: {len(self.discarded)} damaged or stale entr"
                f"{'y' if len(self.discarded) == 1 else 'ies'} discarded and read again ({sample})"
            )
        if self.unusable is not None:
            notes.append(f"pixel cache folder {self.root} unusable ({self.unusable}); not cached")
        if self.evicted:
            notes.append(
                f"pixel cache: {self.evicted} least recently used entr"
                f"{'y' if self.evicted == 1 else 'ies'} ({self.evicted_bytes / 1e9:.2f} GB) "
                f"removed to keep {self.root} under read.cache_max_gb "
                f"({(self.max_bytes or 0) / 1e9:g} GB)"
            )
        return notes


def _remove_entry(path: Path) -> None:
    """Remove a damaged entry, whatever it became (a file, a link, a folder)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        path.unlink()


def cache_bytes(root: Path) -> int:
    """The disk a pixel cache folder's entries take (0 when there is none)."""
    try:
        return sum(size for _, size, _ in _entries(root))
    except OSError:
        return 0


def _entries(root: Path) -> list[tuple[float, int, Path]]:
    """(modified time, size, path) of every entry under `root` (not files being written)."""
    found = []
    for sub in os.scandir(root):
        if not sub.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(sub.path):
            if entry.name.endswith(_SUFFIX) and not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    found.append((st.st_mtime, st.st_size, Path(entry.path)))
    return found


def _decode(blob: bytes, key: str, shape: tuple[int, int]) -> np.ndarray:
    """The array of one entry after every check (raises _Damaged with the reason)."""
    if not blob.startswith(_MAGIC):
        raise _Damaged("not a changedet cache entry")
    end = blob.find(b"\n", len(_MAGIC), len(_MAGIC) + _MAX_HEADER)
    if end < 0:
        raise _Damaged("header damaged")
    try:
        header = json.loads(blob[len(_MAGIC) : end])
        stored_key, digest, size = header["key"], header["sha256"], header["size"]
        dtype, stored_shape = np.dtype(header["dtype"]), tuple(header["shape"])
    except (ValueError, KeyError, TypeError):
        raise _Damaged("header damaged") from None
    if stored_key != key:
        raise _Damaged("made for another asset or grid")
    data = blob[end + 1 :]
    if len(data) != size:
        raise _Damaged(f"truncated: {len(data)} of {size} bytes")
    if hashlib.sha256(data).hexdigest() != digest:
        raise _Damaged("checksum mismatch")
    if stored_shape != shape:
        raise _Damaged(f"shape {stored_shape} instead of {shape}")
    if dtype.hasobject or dtype.itemsize * int(np.prod(shape)) != size:
        raise _Damaged(f"{size} bytes do not hold {dtype} of shape {shape}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
