"""The dates of a read, on disk: a `DateSeries` that memory does not have to hold.

One responsibility: keep every date's masked, harmonised reflectance where the streaming detector
(`core.stream`) can read any rows of any dates back, without the process holding them. A year of
dates over a large AOI is several GB as float32; the detector needs a few rows of all of them at
a time, or one band of one date.

Two anonymous temporary files (unlinked as soon as they are made, so a crash leaves nothing
behind): reflectance as float32, date-major then band, row, column (so a strip of rows of one
band of one date is one contiguous read), and the clear mask as bytes. Float32 and not the
DN's uint16: the reflectance the detector sees is exactly what the reader computed (scale and
offset of the scene that gave each pixel of a mosaic), and the files are read back through the
page cache, not held by the process. `os.pread`/`os.pwrite` at computed offsets: any number of
threads may read at once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, MutableMapping, Sequence
from datetime import datetime

import numpy as np

from changedet.models import Grid

__all__ = ["DateStore", "SpillMap"]


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
        self._buffer = np.empty((len(self.bands), h, w), dtype=np.float32)
        self._clear_buffer = np.empty((h, w), dtype=bool)
        self.bytes_written = 0

    # --- writing ---------------------------------------------------------------------------

    def slot(self) -> tuple[np.ndarray, np.ndarray]:
        """(B, H, W) float32 and (H, W) bool buffers for the next date (overwritten by the next)."""
        return self._buffer, self._clear_buffer

    def commit(self, when: datetime, scene_ids: tuple[str, ...]) -> None:
        """Append the date held in the slot."""
        t = len(self._times)
        _write_all(self._values.fileno(), self._buffer, t * self._buffer.nbytes)
        _write_all(self._clear.fileno(), self._clear_buffer, t * self._clear_buffer.nbytes)
        self.bytes_written += self._buffer.nbytes + self._clear_buffer.nbytes
        self._times.append(when)
        self._scene_ids.append(scene_ids)

    def release_slot(self) -> None:
        """Free the assembly buffers once every date is in."""
        self._buffer = np.empty((len(self.bands), 0, 0), dtype=np.float32)
        self._clear_buffer = np.empty((0, 0), dtype=bool)

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

    def pixels(self, dates: Sequence[int], rows: slice, bands: Sequence[int]) -> np.ndarray:
        top, bottom = self._rows(rows)
        h, w = self.grid.shape
        n_b = len(self.bands)
        out = np.empty((len(dates), len(bands), bottom - top, w), dtype=np.float32)
        fd = self._values.fileno()
        for i, t in enumerate(dates):
            for j, b in enumerate(bands):
                _read_into(fd, out[i, j], (((t * n_b + b) * h) + top) * w * 4)
        return out

    def clear_rows(self, dates: Sequence[int], rows: slice) -> np.ndarray:
        top, bottom = self._rows(rows)
        h, w = self.grid.shape
        out = np.empty((len(dates), bottom - top, w), dtype=bool)
        fd = self._clear.fileno()
        for i, t in enumerate(dates):
            _read_into(fd, out[i], (t * h + top) * w)
        return out

    # --- life ------------------------------------------------------------------------------

    def close(self) -> None:
        self._values.close()
        self._clear.close()

    def __enter__(self) -> DateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpillMap(MutableMapping[str, np.ndarray]):
    """A dict of arrays kept in an anonymous temporary file: the probe's per-scene SCL windows
    and clear masks, which would otherwise grow memory with every date. Append-only on disk (a
    replaced or deleted entry's bytes stay until `close`); bool arrays are stored one bit a pixel.
    """

    def __init__(self, *, folder: str | None = None) -> None:
        self._file = tempfile.TemporaryFile(prefix="changedet-spill-", dir=folder)  # noqa: SIM115
        self._index: dict[str, tuple[int, tuple[int, ...], np.dtype[np.generic]]] = {}
        self._end = 0

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        array = np.asarray(value)
        data = np.packbits(array, axis=None) if array.dtype == bool else array
        _write_all(self._file.fileno(), data, self._end)
        self._index[key] = (self._end, array.shape, array.dtype)
        self._end += data.nbytes

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
