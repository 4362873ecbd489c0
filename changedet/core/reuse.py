"""What a run of the streaming detector (`core.stream`) can take from an earlier one: each date's
co-registration shift and each period's composite.

A monitoring run adds a scene or two to a series it has seen; the shifts of the other dates and
the composites of the periods the new scenes do not fall in are what the last run computed. Each
is kept under a digest of everything it is computed from, so a reused one is exactly what
computing it again would give:
- a date: its fingerprint (`DateSeries.fingerprints`: its pixels and clear mask), its time and
  the pixels the temporal screen took out of it (they depend on the neighbouring dates);
- a shift: the date, and the dates whose median it is measured against (the baseline's);
- that median (the reference): those dates;
- a date's levels (`core.level`): the date, its shift and the composite it is levelled against;
- a composite: its period, its dates, the shift applied to each and the composite they are
  levelled against;
- both: the grid, the bands, the change settings and `VERSION`.
Keys start with what they hold ("shift-", "reference-", "levels-", "composite-"), which the memo
may count by.

The store (`ArrayMemo`) is the monitor's (`monitor.memo`); a cache, not state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from changedet.config import Config
from changedet.core.timeseries import Shift
from changedet.errors import DataError
from changedet.models import DateSeries, Period

__all__ = [
    "VERSION",
    "ArrayMemo",
    "KeptArray",
    "RemapMemo",
    "Reuse",
    "arrays_of",
    "json_array",
    "json_of",
]

# Part of every key: bump it when what a shift or a composite is computed from, or how, changes.
VERSION = "stream-2"


class ArrayMemo(Protocol):
    """Named arrays kept between runs under a key; None when absent or unreadable."""

    def get_arrays(self, key: str) -> Mapping[str, np.ndarray] | None: ...

    def put_arrays(self, key: str, arrays: Mapping[str, np.ndarray]) -> None: ...


@runtime_checkable
class RemapMemo(Protocol):
    """A memo that maps an entry it found in this run again, without reading or checking it."""

    def map_arrays(self, key: str) -> Mapping[str, np.ndarray] | None:
        """The arrays of an entry `get_arrays` gave in this run, their pages coming in as they
        are touched and going with the arrays; None for any other key."""
        ...


@dataclass(frozen=True)
class KeptArray:
    """One array of a memo entry found in this run, mapped again whenever asked for: a reused
    composite's pixels are in memory only while a stage holds them (as a spilled one's)."""

    memo: RemapMemo
    key: str
    name: str

    def array(self) -> np.ndarray:
        got = self.memo.map_arrays(self.key)
        if got is None or self.name not in got:
            raise DataError(
                f"the period cache's entry {self.key} went away during the run; run it again"
            )
        return got[self.name]

    def write_rows(self, rows: slice, values: np.ndarray) -> None:
        raise TypeError(f"{self.key} is a kept composite: read-only")


def arrays_of(memo: ArrayMemo, key: str, names: Sequence[str]) -> list[np.ndarray] | None:
    """The arrays `names` of the entry under `key`, or None when it or any of them is missing."""
    got = memo.get_arrays(key)
    if got is None:
        return None
    found = []
    for name in names:
        array = got.get(name)
        if array is None:
            return None
        found.append(array)
    return found


def json_array(value: Any) -> np.ndarray:
    """A JSON value (ids, rows) as bytes, to keep among an entry's arrays (`json_of` reads it)."""
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


def json_of(array: np.ndarray) -> Any:
    """The value `json_array` kept; ValueError when the bytes are not JSON."""
    return json.loads(bytes(array))


@dataclass(frozen=True)
class Reuse:
    """The keys of one run's dates, and the memo they are looked up in."""

    memo: ArrayMemo
    dates: tuple[bytes, ...]  # per date, the digest of what it is
    settings: bytes  # the digest of the grid, bands and change settings

    @classmethod
    def of(
        cls, memo: ArrayMemo, series: DateSeries, spikes: Sequence[np.ndarray], config: Config
    ) -> Reuse:
        """spikes: per date, the sorted flat indices the temporal screen took out."""
        fingerprints = series.fingerprints()
        dates = tuple(
            _digest(fp.encode(), series.times[t].isoformat().encode(), _bytes(spikes[t]))
            for t, fp in enumerate(fingerprints)
        )
        facts = (VERSION, series.grid, series.bands, config.change)
        return cls(memo, dates, _digest(repr(facts).encode()))

    # --- shifts ----------------------------------------------------------------------------

    def _shift_key(self, reference: bytes, t: int) -> str:
        return "shift-" + _digest(self.settings, b"shift", reference, self.dates[t]).hex()

    def _reference(self, refs: Sequence[int], band: str) -> bytes:
        return _digest(band.encode(), *(self.dates[t] for t in refs))

    def shifts(self, refs: Sequence[int], band: str) -> dict[int, Shift]:
        """The dates' shifts kept from earlier runs (measured in `band` against `refs`)."""
        reference = self._reference(refs, band)
        found: dict[int, Shift] = {}
        for t in range(len(self.dates)):
            got = self.memo.get_arrays(self._shift_key(reference, t))
            value = None if got is None else got.get("shift")
            if value is not None and value.shape == (2,) and value.dtype == np.float64:
                found[t] = None if np.isnan(value).any() else (float(value[0]), float(value[1]))
        return found

    def keep_shifts(self, refs: Sequence[int], band: str, shifts: Mapping[int, Shift]) -> None:
        reference = self._reference(refs, band)
        for t, shift in shifts.items():
            value = np.array([np.nan, np.nan] if shift is None else shift, dtype=np.float64)
            self.memo.put_arrays(self._shift_key(reference, t), {"shift": value})

    def _reference_key(self, refs: Sequence[int], band: str) -> str:
        return "reference-" + _digest(self.settings, self._reference(refs, band)).hex()

    def reference(
        self, refs: Sequence[int], band: str, shape: tuple[int, int]
    ) -> np.ndarray | None:
        """The median of `band` over the dates `refs` that shifts are measured against, kept
        from an earlier run (None: absent, or not of this grid)."""
        got = self.memo.get_arrays(self._reference_key(refs, band))
        found = None if got is None else got.get("reference")
        if found is None or found.shape != shape or found.dtype != np.float32:
            return None
        return found

    def keep_reference(self, refs: Sequence[int], band: str, reference: np.ndarray) -> None:
        self.memo.put_arrays(self._reference_key(refs, band), {"reference": reference})

    # --- levels ----------------------------------------------------------------------------

    def _levels_key(
        self, against: bytes, corrected: Mapping[int, tuple[float, float]], t: int
    ) -> str:
        applied = repr(corrected.get(t)).encode()
        return "levels-" + _digest(self.settings, b"levels", against, applied, self.dates[t]).hex()

    def levels(
        self, against: bytes, corrected: Mapping[int, tuple[float, float]], n_dates: int
    ) -> dict[int, np.ndarray]:
        """The dates' levels kept from earlier runs (levelled against the composite whose key
        is `against`, each shifted as `corrected` says)."""
        found: dict[int, np.ndarray] = {}
        for t in range(n_dates):
            got = self.memo.get_arrays(self._levels_key(against, corrected, t))
            value = None if got is None else got.get("levels")
            if value is not None and value.ndim == 3 and value.dtype == np.float32:
                found[t] = value
        return found

    def keep_levels(
        self,
        against: bytes,
        corrected: Mapping[int, tuple[float, float]],
        levels: Mapping[int, np.ndarray],
    ) -> None:
        for t, value in levels.items():
            self.memo.put_arrays(self._levels_key(against, corrected, t), {"levels": value})

    # --- composites ------------------------------------------------------------------------

    def composite_key(
        self,
        period: Period,
        dates: Sequence[int],
        corrected: Mapping[int, tuple[float, float]],
        levelled_against: bytes = b"",
    ) -> str:
        """levelled_against: the key of the composite the dates are levelled to (none: b"")."""
        applied = repr((period, [corrected.get(t) for t in dates])).encode()
        parts = (applied, levelled_against, *(self.dates[t] for t in dates))
        digest = _digest(self.settings, b"composite", *parts)
        return "composite-" + digest.hex()

    def composite(
        self, key: str, n_bands: int, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(reflectance, count, source_date) kept under `key`, or None (absent, or not of this
        grid and bands)."""
        expected = {
            "reflectance": ((n_bands, *shape), np.float32),
            "count": (shape, np.uint16),
            "source_date": (shape, np.int32),
        }
        arrays = arrays_of(self.memo, key, list(expected))
        if arrays is None:
            return None
        for array, (want_shape, want_dtype) in zip(arrays, expected.values(), strict=True):
            if array.shape != want_shape or array.dtype != want_dtype:
                return None
        reflectance, count, source_date = arrays
        return reflectance, count, source_date

    def kept_composite(self, key: str) -> tuple[KeptArray, KeptArray, KeptArray] | None:
        """The composite `composite(key)` gave, as arrays mapped again when asked for; None
        when the memo cannot map its entries again."""
        if not isinstance(self.memo, RemapMemo):
            return None
        memo = self.memo
        return (
            KeptArray(memo, key, "reflectance"),
            KeptArray(memo, key, "count"),
            KeptArray(memo, key, "source_date"),
        )

    def keep_composite(
        self, key: str, reflectance: np.ndarray, count: np.ndarray, source_date: np.ndarray
    ) -> None:
        arrays = {"reflectance": reflectance, "count": count, "source_date": source_date}
        self.memo.put_arrays(key, arrays)


def _bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=np.int64).tobytes()


def _digest(*parts: bytes) -> bytes:
    digest = hashlib.blake2b(digest_size=20)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))  # no two part lists hash alike
        digest.update(part)
    return digest.digest()
