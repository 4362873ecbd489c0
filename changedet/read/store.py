"""The dates of a read, on disk: a `DateSeries` that memory does not have to hold.

One responsibility: keep every date's masked, harmonised reflectance where the streaming detector
(`core.stream`) can read any rows of any dates back, without the process holding them. A year of
dates over a large AOI is several GB as float32; the detector needs a few rows of all of them at
a time, or one band of one date.

Two anonymous temporary files (unlinked as soon as they are made, so a crash leaves nothing
behind): the dates, date-major then band, row, column (so a strip of rows of one band of one date
is one contiguous read), and the clear mask as bytes. A date is kept as its uint16 DNs and each
band's (scale, offset) when that gives back the reader's float32 reflectance to the bit (checked
on every date: half the bytes of float32), else as float32 (a mosaic of scenes with different
offsets, or values that never were DNs). The files are read back through the page cache, not
held by the process; a writer thread writes one date while the reader assembles the next.
`os.pread`/`os.pwrite` at computed offsets: any number of threads may read at once. A date an
earlier run kept (`read.kept`, the monitor's period cache) is not copied in: it is read from
its own file, open until the store is closed.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import tempfile
import threading
from collections.abc import Iterator, MutableMapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from changedet.core.mask import one_or_nan
from changedet.models import Grid
from changedet.read.kept import DateKeep, KeptDate, KeptFile

__all__ = ["ArraySpill", "DateStore", "SpillMap"]

_DIGEST_CHUNK = 8 * 1024 * 1024  # bytes read back at a time to fingerprint a date


def _write_all(fd: int, array: np.ndarray, offset: int) -> None:
    view = np.ascontiguousarray(array).data.cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _read_into(fd: int, out: np.ndarray, offset: int) -> None:
    view = out.data.cast("B")
    while view:
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise OSError(f"date store: short read at byte {offset}")
        view, offset = view[got:], offset + got


def _harmonise(out: np.ndarray, dn: np.ndarray, scale: float, offset: float) -> None:
    """out = DN * scale + offset in float32, the reader's arithmetic (`read.stack`)."""
    np.multiply(dn, np.float32(scale), out=out, casting="unsafe")
    out += np.float32(offset)


def _as_dn(
    values: np.ndarray, clear: np.ndarray, harmonisation: Sequence[tuple[float, float]]
) -> np.ndarray | None:
    """(B, H, W) uint16 DNs (0 where not clear) that `_harmonise` turns back into `values` to
    the bit, or None (a mosaic of scenes with different offsets, values not from DNs)."""
    dn = np.zeros(values.shape, dtype=np.uint16)
    back = np.empty(values.shape[1:], dtype=np.float32)
    for b, (scale, offset) in enumerate(harmonisation):
        with np.errstate(invalid="ignore"):
            guess = np.rint((values[b] - np.float32(offset)) / np.float32(scale))
        guess[~clear] = 0
        if guess.size and (guess.min() < 0 or guess.max() > 65535):
            return None
        dn[b] = guess
        _harmonise(back, dn[b], scale, offset)
        back[~clear] = np.nan
        if not np.array_equal(back, values[b], equal_nan=True):
            return None
    return dn


def _digest_head(
    dtype: np.dtype[np.generic], harmonisation: tuple[tuple[float, float], ...] | None
) -> hashlib._Hash:
    return hashlib.sha256(repr((dtype.str, harmonisation)).encode())  # SHA-NI: ~2 GB/s


def _digest(
    data: np.ndarray, clear: np.ndarray, harmonisation: tuple[tuple[float, float], ...] | None
) -> str:
    """The fingerprint of a date as `DateStore._fingerprint` reads it back from the files."""
    digest = _digest_head(data.dtype, harmonisation)
    digest.update(np.ascontiguousarray(data).data)
    digest.update(np.ascontiguousarray(clear).data)
    return digest.hexdigest()


class _Layout(NamedTuple):
    """Where one date lies and how it is kept."""

    fd: int
    start: int
    dtype: np.dtype[Any]
    harmonisation: tuple[tuple[float, float], ...] | None  # None: float32 reflectance
    clear_fd: int
    clear_at: int


class DateStore:
    """Dates appended in time order; read back as a `DateSeries` (`pixels`, `clear_rows`).

    `slot()` lends the buffers one date is assembled in (reused: first touched once); `commit`
    appends them with the date's time and scene ids. A context manager: closing frees the disk.
    """

    def __init__(self, grid: Grid, bands: Sequence[str], *, folder: str | None = None) -> None:
        self.grid, self.bands = grid, tuple(bands)
        self._times: list[datetime] = []
        self._scene_ids: list[tuple[str, ...]] = []
        # closed by close(); the files have no name to leak
        self._values = tempfile.TemporaryFile(prefix="changedet-dates-", dir=folder)  # noqa: SIM115
        self._clear = tempfile.TemporaryFile(prefix="changedet-clear-", dir=folder)  # noqa: SIM115
        h, w = grid.shape
        # Two slots: the reader's thread assembles one date while a writer thread writes the
        # other (a write of ~30 MB waits on the page cache; the assembly need not).
        self._slots = [
            (np.empty((len(self.bands), h, w), dtype=np.float32), np.empty((h, w), dtype=bool))
            for _ in range(2)
        ]
        self._dn_slots: list[np.ndarray | None] = [None, None]  # made when first asked for
        self._writing: list[Future[None] | None] = [None, None]
        self._current = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="changedet-store")
        # per date: the file and where its data starts, how it is kept, the (scale, offset) of
        # a DN date, and the file and where its clear mask starts (the store's own files, or
        # a kept date's where it lies: `commit_file`)
        self._layout: list[_Layout] = []
        self._end = 0
        self.bytes_written = 0
        # fingerprints known without reading back: kept dates, and dates read back once
        self._digests: dict[int, str] = {}
        self._kept: list[int] = []  # the kept dates' files, closed by close()

    # --- writing ---------------------------------------------------------------------------

    def slot(self) -> tuple[np.ndarray, np.ndarray]:
        """(B, H, W) float32 and (H, W) bool buffers for the next date (reused after `commit`)."""
        pending = self._writing[self._current]
        if pending is not None:
            pending.result()  # the write of the date this slot held two dates ago
            self._writing[self._current] = None
        return self._slots[self._current]

    def dn_slot(self) -> np.ndarray:
        """(B, H, W) uint16 buffer of the next date's DNs, for a date whose scenes all share one
        (scale, offset) per band: filled instead of `slot()`'s reflectance (0 where not clear)
        and committed with `from_dn=True`, it is kept as is, with no float32 round trip."""
        self.slot()  # waits for the write of the date this slot held before
        dn = self._dn_slots[self._current]
        if dn is None:
            dn = np.empty(self._slots[self._current][0].shape, dtype=np.uint16)
            self._dn_slots[self._current] = dn
        return dn

    def commit(
        self,
        when: datetime,
        scene_ids: tuple[str, ...],
        harmonisation: Sequence[tuple[float, float]] | None = None,
        *,
        from_dn: bool = False,
        keep: tuple[DateKeep, str] | None = None,
    ) -> None:
        """Append the date held in the slot (written in the background; `slot` gives the other).

        harmonisation: per band, the (scale, offset) that made the reflectance from DNs; with
        it the date is kept as uint16 DNs when that gives back every value to the bit.
        from_dn: the date is in `dn_slot()`, whose DNs `harmonisation` turns into reflectance.
        keep: (where, key): the date as stored, with its fingerprint, is kept there too
        (`read.kept`)."""
        t = len(self._times)
        values, clear = self._slots[self._current]
        if from_dn:
            dn = self._dn_slots[self._current]
            if dn is None or harmonisation is None:
                raise ValueError("date store: from_dn needs dn_slot() and the harmonisation")
            self._writing[self._current] = self._writer.submit(
                self._append, t, dn, clear, tuple(harmonisation), keep
            )
        else:
            self._writing[self._current] = self._writer.submit(
                self._write, t, values, clear, harmonisation, keep
            )
        self._times.append(when)
        self._scene_ids.append(scene_ids)
        self._current = 1 - self._current

    def _write(
        self,
        t: int,
        values: np.ndarray,
        clear: np.ndarray,
        harmonisation: Sequence[tuple[float, float]] | None,
        keep: tuple[DateKeep, str] | None,
    ) -> None:
        dn = None if harmonisation is None else _as_dn(values, clear, harmonisation)
        if dn is None:
            self._append(t, values, clear, None, keep)
        else:
            self._append(t, dn, clear, tuple(harmonisation or ()), keep)

    def _append(
        self,
        t: int,
        data: np.ndarray,
        clear: np.ndarray,
        harmonisation: tuple[tuple[float, float], ...] | None,
        keep: tuple[DateKeep, str] | None = None,
    ) -> None:
        values, mask = self._values.fileno(), self._clear.fileno()
        self._layout.append(
            _Layout(values, self._end, data.dtype, harmonisation, mask, t * clear.nbytes)
        )
        _write_all(values, data, self._end)
        _write_all(mask, clear, t * clear.nbytes)
        self._end += data.nbytes
        self.bytes_written += data.nbytes + clear.nbytes
        if keep is not None:
            where, key = keep
            self._digests[t] = _digest(data, clear, harmonisation)
            where.put_arrays(key, KeptDate(data, clear, self._digests[t]).arrays())

    def commit_file(
        self,
        when: datetime,
        scene_ids: tuple[str, ...],
        kept: KeptFile,
        harmonisation: Sequence[tuple[float, float]],
    ) -> None:
        """Append a date kept by an earlier run (`read.kept`), read where it lies (the store
        closes its file) with its fingerprint known. harmonisation: per band, the (scale,
        offset) of its DNs (unused for float32 data)."""
        self._kept.append(kept.fd)
        t = len(self._times)
        how = tuple(harmonisation) if kept.dtype == np.uint16 else None
        layout = _Layout(kept.fd, kept.data_at, kept.dtype, how, kept.fd, kept.clear_at)
        # in the writer's queue: the layout of the dates before it may not be in yet
        self._writer.submit(self._layout.append, layout)
        self._digests[t] = kept.fingerprint
        self._times.append(when)
        self._scene_ids.append(scene_ids)

    def release_slot(self) -> None:
        """Wait for the writes and free the assembly buffers once every date is in."""
        for pending in self._writing:
            if pending is not None:
                pending.result()
        self._writing = [None, None]
        self._writer.shutdown(wait=True)
        self._slots, self._dn_slots = [], []

    # --- reading (DateSeries) -------------------------------------------------------------

    @property
    def times(self) -> tuple[datetime, ...]:
        return tuple(self._times)

    @property
    def scene_ids(self) -> tuple[tuple[str, ...], ...]:
        return tuple(self._scene_ids)

    def _rows(self, rows: slice) -> tuple[int, int]:
        start, stop, step = rows.indices(self.grid.height)
        if step != 1:
            raise ValueError("date store: rows must be a contiguous slice")
        return start, max(stop, start)

    def shift(self, t: int, delta: float) -> bool:
        """Add `delta` to every band of date `t`'s reflectance through its (scale, offset): a
        harmonisation offset found wrong (`core.offsets`). False for a date kept as float32
        reflectance (a mosaic of scenes with different offsets), which is left as it is."""
        layout = self._layout[t]
        if layout.harmonisation is None:
            return False
        fixed = tuple((scale, offset + delta) for scale, offset in layout.harmonisation)
        self._layout[t] = layout._replace(harmonisation=fixed)
        self._digests.pop(t, None)  # its pixels changed: so does its fingerprint
        return True

    def pixels(self, dates: Sequence[int], rows: slice, bands: Sequence[int]) -> np.ndarray:
        top, bottom = self._rows(rows)
        h, w = self.grid.shape
        out = np.empty((len(dates), len(bands), bottom - top, w), dtype=np.float32)
        dn = np.empty((bottom - top, w), dtype=np.uint16)
        for i, t in enumerate(dates):
            fd, start, dtype, harmonisation, _, _ = self._layout[t]
            for j, b in enumerate(bands):
                at = start + (b * h + top) * w * dtype.itemsize
                if harmonisation is None:
                    _read_into(fd, out[i, j], at)
                    continue
                _read_into(fd, dn, at)
                _harmonise(out[i, j], dn, *harmonisation[b])
            if harmonisation is not None:
                out[i] *= one_or_nan(self.clear_rows([t], rows)[0])  # NaN where not clear
        return out

    def clear_rows(self, dates: Sequence[int], rows: slice) -> np.ndarray:
        top, bottom = self._rows(rows)
        w = self.grid.width
        out = np.empty((len(dates), bottom - top, w), dtype=bool)
        for i, t in enumerate(dates):
            layout = self._layout[t]
            _read_into(layout.clear_fd, out[i], layout.clear_at + top * w)
        return out

    def fingerprints(self) -> tuple[str, ...]:
        """Per date, a digest of how it is kept and of its stored bytes and clear mask: known
        for a kept date, else read back from the files (a few dates at a time: hashlib
        releases the GIL)."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="changedet-digest") as pool:
            return tuple(pool.map(self._fingerprint, range(len(self._times))))

    def _fingerprint(self, t: int) -> str:
        if t in self._digests:  # kept dates, and those digested before (one pass per date)
            return self._digests[t]
        layout = self._layout[t]
        h, w = self.grid.shape
        dtype = layout.dtype
        digest = _digest_head(dtype, layout.harmonisation)
        chunk = np.empty(min(h * w * dtype.itemsize, _DIGEST_CHUNK), dtype=np.uint8)
        for fd, at, size in (
            (layout.fd, layout.start, len(self.bands) * h * w * dtype.itemsize),
            (layout.clear_fd, layout.clear_at, h * w),
        ):
            end = at + size
            while at < end:
                part = chunk[: min(chunk.size, end - at)]
                _read_into(fd, part, at)
                digest.update(part.data)
                at += part.size
        self._digests[t] = digest.hexdigest()
        return self._digests[t]

    # --- life ------------------------------------------------------------------------------

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._values.close()
        self._clear.close()
        for fd in self._kept:
            os.close(fd)
        self._kept = []

    def __enter__(self) -> DateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpillMap(MutableMapping[str, np.ndarray]):
    """A dict of arrays kept in an anonymous temporary file: the probe's per-scene SCL windows
    and clear masks, which would otherwise grow memory with every date. Append-only on disk (a
    replaced or deleted entry's bytes stay until `close`); bool arrays are stored one bit a pixel.
    Entries may be set from several threads at once (the probe's), each written at its own
    offset."""

    def __init__(self, *, folder: str | None = None) -> None:
        self._file = tempfile.TemporaryFile(prefix="changedet-spill-", dir=folder)  # noqa: SIM115
        self._index: dict[str, tuple[int, tuple[int, ...], np.dtype[np.generic]]] = {}
        self._end = 0
        self._lock = threading.Lock()

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        array = np.asarray(value)
        data = np.packbits(array, axis=None) if array.dtype == bool else array
        with self._lock:
            offset = self._end
            self._end += data.nbytes
        _write_all(self._file.fileno(), data, offset)
        with self._lock:
            self._index[key] = (offset, array.shape, array.dtype)

    def __getitem__(self, key: str) -> np.ndarray:
        offset, shape, dtype = self._index[key]
        n = int(np.prod(shape))
        if dtype.kind == "b":
            packed = np.empty((n + 7) // 8, dtype=np.uint8)
            _read_into(self._file.fileno(), packed, offset)
            return np.unpackbits(packed, count=n).view(bool).reshape(shape)
        out = np.empty(shape, dtype=dtype)
        _read_into(self._file.fileno(), out, offset)
        return out

    def __delitem__(self, key: str) -> None:
        del self._index[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def close(self) -> None:
        self._index.clear()
        self._file.close()


class ArraySpill:
    """Arrays kept in an anonymous temporary file instead of memory: the streaming detector's
    composites, one per period, which would otherwise grow memory with every period of a long
    history. Each is written a few rows at a time (from any thread, each at its own offset) and
    mapped back read-only whenever it is asked for: the pages a caller touched leave memory with
    the array it was given (they stay in the page cache, which the kernel may drop). The file
    lives as long as any of its arrays (a run's result is read after the run's other files are
    closed)."""

    def __init__(self, *, folder: str | None = None) -> None:
        self._file = tempfile.TemporaryFile(prefix="changedet-composites-", dir=folder)  # noqa: SIM115
        self._end = 0
        self._lock = threading.Lock()

    def reserve(self, shape: tuple[int, ...], dtype: type[np.generic]) -> SpilledRows:
        kind = np.dtype(dtype)
        nbytes = math.prod(shape) * kind.itemsize
        with self._lock:  # each array starts on a page: a mapping's offset must
            offset = self._end
            self._end += -(-nbytes // mmap.ALLOCATIONGRANULARITY) * mmap.ALLOCATIONGRANULARITY
            os.ftruncate(self._file.fileno(), self._end)
        return SpilledRows(self._file, offset, shape, kind)


class SpilledRows:
    """One (..., H, W) array of an `ArraySpill` (see there)."""

    def __init__(self, file: Any, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any]):
        if len(shape) < 2:
            raise ValueError(f"a spilled array has rows and columns, not shape {shape}")
        self._file, self._offset, self.shape, self.dtype = file, offset, shape, dtype

    def write_rows(self, rows: slice, values: np.ndarray) -> None:
        height, width = self.shape[-2:]
        start, stop, step = rows.indices(height)
        if step != 1:
            raise ValueError(f"rows are written as one run, not in steps of {step}")
        # as an assignment to the rows: a shape that does not fit raises, never spills over
        lead = np.broadcast_to(values, (*self.shape[:-2], stop - start, width))
        if lead.size == 0:
            return
        plane = height * width * self.dtype.itemsize
        for i, part in enumerate(lead.reshape(-1, stop - start, width)):
            data = np.ascontiguousarray(part, dtype=self.dtype)
            _write_all(
                self._file.fileno(),
                data,
                self._offset + i * plane + start * width * self.dtype.itemsize,
            )

    def array(self) -> np.ndarray:
        n = math.prod(self.shape)
        if n == 0:
            return np.empty(self.shape, self.dtype)
        mapped = mmap.mmap(
            self._file.fileno(),
            n * self.dtype.itemsize,
            offset=self._offset,
            access=mmap.ACCESS_READ,
        )
        return np.frombuffer(mapped, dtype=self.dtype, count=n).reshape(self.shape)
