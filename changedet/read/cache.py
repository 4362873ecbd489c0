"""The pixel cache: network reads of scene assets kept on disk as arrays on the grid.

One responsibility: make a rerun fetch nothing, and never hand back pixels other than those
read. One file per (item, collection, band, href without its signing token, grid, resampling),
written atomically, holding the key it was made for, a SHA-256 of its payload, the array's dtype
and shape, and its bytes. On read the key and the checksum are verified: a damaged, truncated,
stale or mis-shaped entry is a miss, deleted, logged and counted in the run's read notes, and the
asset is read again. A cache folder that cannot be used is reported once and the run goes on
uncached; a full or read-only cache never fails a run. An empty `read.cache_dir` turns the cache
off. Used by `changedet.read.cog` for network reads only (a local COG window reads as fast as the
cache would).

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
import tempfile
import threading
from pathlib import Path

import numpy as np

from changedet.hrefs import public_href
from changedet.models import Asset, Grid, Scene

__all__ = ["CACHE_VERSION", "PixelCache"]

CACHE_VERSION = 3  # bump when the cached array's meaning or the entry layout changes
_MAGIC = b"changedet-pixels 3\n"
_MAX_HEADER = 16_384  # bytes of the JSON header line; a longer one is damage
_SUFFIX = ".npyc"

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

    def __init__(self, root: str) -> None:
        self.root = Path(root).expanduser() if root else None
        self._lock = threading.Lock()
        self.discarded: list[str] = []  # "<file>: <why>" of every entry thrown away
        self.unusable: str | None = None  # why the folder cannot be used (then: no cache)
        self._checked = False  # the folder is made (and checked) at the first write only

    # -- keys and paths ------------------------------------------------------------------------

    def key(self, scene: Scene, band: str, asset: Asset, grid: Grid, resampling: str) -> str:
        return json.dumps(
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
            return _decode(blob, key, shape)
        except _Damaged as exc:
            self._discard(path, str(exc))
            return None

    def _discard(self, path: Path, why: str) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
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
            with os.fdopen(fd, "wb") as handle:
                handle.write(_MAGIC + header + b"\n" + data)
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only cache never fails a run: reported once
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            self._mark_unusable(f"cannot write ({exc.strerror or exc})")

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
        return notes


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
