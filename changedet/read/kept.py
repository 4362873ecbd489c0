"""Dates kept between runs: what a monitoring run need not read again.

One responsibility: name a date by everything its stored pixels are made from, and pack and
unpack what is kept under that name. A date of a read (`read.stack`) is the mosaic of its scenes,
in order, each masked by its clear mask; so it is a function of the scenes' assets (id, href,
scale, offset, nodata per band), their order, their clear masks (which the bright-roof rule
makes from every date's SCL: their digests, made when the masks were, are named), the grid, the
bands and the resampling. A kept date is exactly what reading it again would give, so the
monitor's next run reads the bands of new scenes only, and the SCL of new scenes only while the
bright-roof pixels stay (`read.verdicts`).

The store (`DateKeep`) is the monitor's period cache (`monitor.memo`); a cache, not state.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from changedet.hrefs import public_href
from changedet.models import Grid, Scene

__all__ = [
    "KEPT_VERSION",
    "ArrayAt",
    "DateKeep",
    "KeptDate",
    "KeptFile",
    "OpenArrays",
    "date_key",
    "grid_facts",
]

# Part of every key: bump it when how a date is read, masked or mosaicked changes.
KEPT_VERSION = "dates-2"


ArrayAt = tuple[int, np.dtype[Any], tuple[int, ...]]  # where an array starts in a file, its type
OpenArrays = tuple[int, dict[str, ArrayAt]]  # an open file (the receiver closes it), its arrays


class DateKeep(Protocol):
    """Named arrays kept between runs under a key (as `core.reuse.ArrayMemo`): whether a key is
    there, and the checked file of an entry, open, so that a date is read from it where it lies
    instead of copied (`get_arrays`: the probe's verdicts, `read.verdicts`)."""

    def has_arrays(self, key: str) -> bool: ...

    def get_arrays(self, key: str) -> Mapping[str, np.ndarray] | None: ...

    def open_arrays(self, key: str) -> OpenArrays | None: ...

    def put_arrays(self, key: str, arrays: Mapping[str, np.ndarray]) -> None: ...


def grid_facts(grid: Grid) -> list[Any]:
    """A grid as JSON can name it in a key: CRS, transform, width, height."""
    return [grid.crs, list(grid.transform)[:6], grid.width, grid.height]


def date_key(
    members: Sequence[Scene],
    clears: Sequence[bytes],
    grid: Grid,
    bands: Sequence[str],
    resampling: str,
) -> str:
    """The key of the date mosaicked from `members` in this order, each with its clear mask,
    given by its digest (`read.verdicts.clear_digest`)."""
    head = json.dumps(
        [
            KEPT_VERSION,
            *grid_facts(grid),
            list(bands),
            resampling,
            [
                [
                    s.id,
                    s.collection,
                    s.datetime.isoformat(),
                    s.processing_baseline,  # reprocessed in place: same id and hrefs
                    s.updated,
                    [
                        [public_href(a.href), a.scale, a.offset, a.nodata]
                        for a in (s.assets[b] for b in bands)
                    ],
                ]
                for s in members
            ],
        ]
    )
    digest = hashlib.sha256(head.encode())
    for clear in clears:
        digest.update(clear)
    return "date-" + digest.hexdigest()


@dataclass(frozen=True)
class KeptDate:
    """One stored date: its DNs (uint16) or reflectance (float32), (B, H, W); its clear mask;
    and the fingerprint the date store gives those bytes (`read.store`)."""

    data: np.ndarray
    clear: np.ndarray
    fingerprint: str

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "data": self.data,
            "clear": self.clear,
            "fingerprint": np.frombuffer(bytes.fromhex(self.fingerprint), np.uint8),
        }


@dataclass(frozen=True)
class KeptFile:
    """A kept date where it lies: the open file (closed by whoever takes it), where its data
    and clear mask start, the data's type, and its fingerprint."""

    fd: int
    data_at: int
    dtype: np.dtype[Any]
    clear_at: int
    fingerprint: str

    @classmethod
    def of(cls, opened: OpenArrays, n_bands: int, shape: tuple[int, int]) -> KeptFile | None:
        """The kept date in `opened`, or None (its file closed) when it is not one of this
        grid and bands."""
        fd, where = opened
        data, clear, fp = (where.get(n) for n in ("data", "clear", "fingerprint"))
        if (
            _fits(data, (np.uint16, np.float32), (n_bands, *shape))
            and _fits(clear, (np.bool_,), shape)
            and _fits(fp, (np.uint8,), (32,))
        ):
            assert data is not None and clear is not None and fp is not None
            digest = os.pread(fd, 32, fp[0])
            if len(digest) == 32:
                return cls(fd, data[0], data[1], clear[0], digest.hex())
        os.close(fd)
        return None


def _fits(at: ArrayAt | None, dtypes: tuple[type, ...], shape: tuple[int, ...]) -> bool:
    return at is not None and at[1] in [np.dtype(t) for t in dtypes] and at[2] == shape
