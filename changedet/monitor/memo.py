"""The monitor's period cache: each period's change against the baseline, each period's composite,
each date's co-registration shift and each date's pixels as read, and the tracker's states
before the newest periods (`core.track.StateMemo`), on disk between runs.

Keyed by a digest of everything they are computed from (`core.timeseries`, `core.reuse`,
`read.kept`, `core.track`), so a hit is exactly what computing again would give, and a period a
new scene touched misses and is computed again. In `<state>.periods/<aoi_id>/`: one pickle per
period's change and per tracker state, one `.arrays` file per composite, shift or date (a JSON
header with the payload's CRC-32, then the bytes), each written atomically; a damaged or
unreadable entry is a miss.
`prune()` removes the entries the last run did not use, so the folder holds one series per AOI:
per pixel of the AOI's context window, about 41 bytes a period (30 its composite, 11 its change)
and 13 bytes a date (a window of 1000 × 1000 px: 41 MB a period, 13 MB a date). A date is read
where it lies (`open_arrays`); composites and shifts are mapped into memory, not copied
(`get_arrays`), and a composite found so is mapped again whenever the run asks for it
(`map_arrays`), not held for the whole run.
A cache, not state: deleting it costs one slower run.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import pickle
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from changedet.core.track import PeriodObservation
from changedet.outputs.fsio import atomic_path
from changedet.read.kept import ArrayAt, OpenArrays

__all__ = ["DiskMemo", "prune"]

T = TypeVar("T")


class DiskMemo:
    def __init__(self, folder: Path, *, skip: frozenset[str] = frozenset()) -> None:
        """skip: kinds of arrays (what their keys start with) not to keep: asked for, they are
        missing, and offered, they are not written."""
        self.folder = folder
        self.skip = skip
        self.used: set[str] = set()
        self.hits = 0  # periods' change
        self.misses = 0
        # composites, shifts and dates, by what their keys start with ("composite", "shift", "date")
        self.array_hits: Counter[str] = Counter()
        self.array_misses: Counter[str] = Counter()
        self._count_lock = threading.Lock()  # the read opens kept dates on two threads
        self._checked: set[str] = set()  # entries found whole in this run (`map_arrays`)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pickle"

    def _load(self, key: str) -> object | None:
        """The object pickled under `key`; None when absent, damaged or pickled by code that
        cannot read it back (another version)."""
        self.used.add(key)
        try:
            with self._path(key).open("rb") as f:
                return pickle.load(f)  # our own files, in the state's folder
        except Exception:  # any failure to load a cache entry is a miss
            return None

    def _keep(self, key: str, value: object) -> None:
        self.used.add(key)
        self._write(
            self._path(key), lambda f: pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        )

    def get(self, key: str) -> PeriodObservation | None:
        found = self._load(key)
        if not isinstance(found, PeriodObservation):
            self.misses += 1
            return None
        self.hits += 1
        return found

    def put(self, key: str, observation: PeriodObservation) -> None:
        self._keep(key, observation)

    def get_state(self, key: str) -> object | None:
        """The tracker's state kept under `key` (`core.track.StateMemo`), or None."""
        return self._load(key)

    def put_state(self, key: str, state: object) -> None:
        self._keep(key, state)

    def has_state(self, key: str) -> bool:
        self.used.add(key)
        return self._path(key).is_file()

    def has_arrays(self, key: str) -> bool:
        """Whether an entry is there (`get_arrays` and `open_arrays` still check it)."""
        kind = key.split("-", 1)[0]
        return kind not in self.skip and (self.folder / f"{key}{_ARRAYS}").is_file()

    def get_arrays(self, key: str) -> Mapping[str, np.ndarray] | None:
        return self._lookup(key, _read_arrays)

    def open_arrays(self, key: str) -> OpenArrays | None:
        """`get_arrays` without reading the arrays into memory: the entry's file, checked, open
        (the caller closes it), and where each array starts in it."""
        return self._lookup(key, _open_arrays)

    def _lookup(self, key: str, read: Callable[[Path], T | None]) -> T | None:
        """The entry under `key` as `read` gives it (None: not kept, absent or damaged),
        counted by kind."""
        self.used.add(key)  # one bytecode: safe from the read's threads
        kind = key.split("-", 1)[0]
        found = None if kind in self.skip else read(self.folder / f"{key}{_ARRAYS}")
        if found is not None:
            self._checked.add(key)
        with self._count_lock:  # a Counter's += is a read, then a write
            (self.array_misses if found is None else self.array_hits)[kind] += 1
        return found

    def map_arrays(self, key: str) -> Mapping[str, np.ndarray] | None:
        """An entry `get_arrays` or `open_arrays` found whole in this run, mapped again without
        reading it (its pages come in as they are touched, and go with the arrays): a reused
        composite is not held for the whole run. None for an entry not checked in this run."""
        if key not in self._checked:
            return None
        return _mapped_arrays(self.folder / f"{key}{_ARRAYS}")

    def put_arrays(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        if key.split("-", 1)[0] in self.skip:
            return
        self.used.add(key)
        self._write(self.folder / f"{key}{_ARRAYS}", lambda f: _write_arrays(f, arrays))

    def _write(self, path: Path, dump: Callable[[BinaryIO], object]) -> None:
        # a cache that cannot be written is only slower
        with contextlib.suppress(OSError), atomic_path(path) as tmp, tmp.open("wb") as f:
            dump(f)

    def prune(self) -> None:
        """Remove every entry this run did not use (and leftovers of killed writes)."""
        prune(self.folder, self.used)


def prune(folder: Path, used: Collection[str]) -> None:
    """Remove from a period cache folder every entry not in `used` (the keys a run used, here
    or on a worker) and leftovers of killed writes."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.suffix == ".part" or path.stem not in used:
            path.unlink(missing_ok=True)


# --- named arrays: a JSON header (names, dtypes, shapes, the payload's CRC-32), then the bytes.
# Not `.npz`/`.npy`: their headers are parsed with `ast.literal_eval`, which CPython 3.11 does not
# run safely in two threads at once (see `read.cache`); and the CRC makes damage a miss (the key
# already names the content: the check is for a damaged disk, at 4 GB/s).

_ARRAYS = ".arrays"
_MAGIC = b"changedet-arrays 1\n"
_MAX_HEADER = 16_384


def _write_arrays(f: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    parts = [np.ascontiguousarray(a) for a in arrays.values()]
    crc = 0
    for part in parts:
        crc = zlib.crc32(part.data, crc)
    header = {
        "arrays": [[n, a.dtype.str, list(a.shape)] for n, a in zip(arrays, parts, strict=True)],
        "crc32": crc,
    }
    f.write(_MAGIC + json.dumps(header).encode() + b"\n")
    for part in parts:
        f.write(part.data)


def _read_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an entry, read-only views of the file mapped into memory (no copy: the
    pages are the page cache's); None when absent, damaged or not ours. Entries are replaced
    atomically and removed by unlinking, so a mapped file never changes under its arrays."""
    try:
        with path.open("rb") as f:
            checked = _checked(f)
        if checked is None:
            return None
        return _views(*checked)
    except (OSError, ValueError):
        return None


def _views(payload: memoryview, start: int, where: dict[str, ArrayAt]) -> dict[str, np.ndarray]:
    """Each array of an entry, a read-only view of its `payload` (which starts at `start`)."""
    return {
        name: np.frombuffer(payload, dtype, math.prod(shape), at - start).reshape(shape)
        for name, (at, dtype, shape) in where.items()
    }


def _mapped_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """`_read_arrays` of an entry checked before, without the check (nor reading every page)."""
    try:
        with path.open("rb") as f:
            layout = _layout(f)
            if layout is None:
                return None
            size, _, where = layout
            start = f.tell()
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return _views(memoryview(mapped)[start : start + size], start, where)
    except (OSError, ValueError):
        return None


def _open_arrays(path: Path) -> OpenArrays | None:
    """An entry's file, checked, open at its arrays (`DiskMemo.open_arrays`). The check reads
    the payload through one reused buffer: the arrays are read later from the descriptor, so
    mapping the file for the check alone (a page fault per 4 KiB) cost a third more."""
    try:
        with path.open("rb") as f:
            layout = _layout(f)
            if layout is None:
                return None
            size, crc, where = layout
            if _crc_of(f.fileno(), f.tell(), size) != crc:
                return None
            return (os.dup(f.fileno()), where)
    except (OSError, ValueError):
        return None


_CHUNK = 8 * 1024 * 1024  # bytes per read of `_crc_of`
_buffers = threading.local()  # each checking thread's read buffer


def _crc_of(fd: int, start: int, size: int) -> int:
    """CRC-32 of `size` bytes of `fd` from `start`, read a chunk at a time."""
    buffer = getattr(_buffers, "chunk", None)
    if buffer is None:
        buffer = _buffers.chunk = memoryview(bytearray(_CHUNK))
    crc, offset, end = 0, start, start + size
    while offset < end:
        got = os.preadv(fd, [buffer[: min(_CHUNK, end - offset)]], offset)
        if got <= 0:
            raise OSError(f"period cache: short read at byte {offset}")
        crc = zlib.crc32(buffer[:got], crc)
        offset += got
    return crc


def _checked(f: BinaryIO) -> tuple[memoryview, int, dict[str, ArrayAt]] | None:
    """An entry's payload mapped read-only, where it starts in the file and where each array
    starts; None when the file is not one of ours or its CRC-32 does not match. The mapping is
    populated at once where the system can (its pages are all read by the check anyway)."""
    layout = _layout(f)
    if layout is None:
        return None
    size, crc, where = layout
    start = f.tell()
    if hasattr(mmap, "MAP_POPULATE"):  # Linux
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        mapped = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    else:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    payload = memoryview(mapped)[start : start + size]
    return (payload, start, where) if zlib.crc32(payload) == crc else None


def _layout(f: BinaryIO) -> tuple[int, int, dict[str, ArrayAt]] | None:
    """(payload bytes, its CRC-32, where each array starts in the file) from an entry's header,
    leaving `f` at the payload; None when the file is not one of ours or does not add up."""
    if f.read(len(_MAGIC)) != _MAGIC:
        return None
    try:
        header = json.loads(f.readline(_MAX_HEADER))
        at = start = f.tell()
        where: dict[str, ArrayAt] = {}
        for name, dtype, shape in header["arrays"]:
            where[str(name)] = (at, np.dtype(dtype), tuple(int(n) for n in shape))
            at += math.prod(shape) * np.dtype(dtype).itemsize
        size = os.fstat(f.fileno()).st_size - start
        return (size, int(header["crc32"]), where) if at - start == size else None
    except (ValueError, KeyError, TypeError):
        return None
