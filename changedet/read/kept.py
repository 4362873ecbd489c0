"""Dates kept between runs: what a monitoring run need not read again.

One responsibility: name a date by everything its stored pixels are made from, and pack and
unpack what is kept under that name. A date of a read (`read.stack`) is the mosaic of its scenes,
in order, each masked by its clear mask; so it is a function of the scenes' assets (id, href,
scale, offset, nodata per band), their order, their clear masks (which the bright-roof rule
makes from every date's SCL: they are hashed, not assumed), the grid, the bands and the
resampling. A kept date is exactly what reading it again would give, so the monitor's next run
reads only the SCL of its known scenes (to make those clear masks) and the bands of new ones.

The store (`DateKeep`) is the monitor's period cache (`monitor.memo`); a cache, not state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from changedet.hrefs import public_href
from changedet.models import Grid, Scene

__all__ = ["KEPT_VERSION", "DateKeep", "KeptDate", "date_key"]

# Part of every key: bump it when how a date is read, masked or mosaicked changes.
KEPT_VERSION = "dates-1"


class DateKeep(Protocol):
    """Named arrays kept between runs under a key (`core.reuse.ArrayMemo`, and whether a key
    is there without reading it)."""

    def has_arrays(self, key: str) -> bool: ...

    def get_arrays(self, key: str) -> Mapping[str, np.ndarray] | None: ...

    def put_arrays(self, key: str, arrays: Mapping[str, np.ndarray]) -> None: ...


def date_key(
    members: Sequence[Scene],
    clears: Sequence[np.ndarray],
    grid: Grid,
    bands: Sequence[str],
    resampling: str,
) -> str:
    """The key of the date mosaicked from `members` in this order, each with its clear mask."""
    head = json.dumps(
        [
            KEPT_VERSION,
            grid.crs,
            list(grid.transform)[:6],
            grid.width,
            grid.height,
            list(bands),
            resampling,
            [
                [
                    s.id,
                    s.collection,
                    s.datetime.isoformat(),
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
        digest.update(np.ascontiguousarray(clear, dtype=bool).data)
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

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], n_bands: int, shape: tuple[int, int]
    ) -> KeptDate | None:
        """The kept date, or None when the arrays are not one of this shape."""
        data, clear, fp = (arrays.get(n) for n in ("data", "clear", "fingerprint"))
        if data is None or clear is None or fp is None:
            return None
        if data.dtype not in (np.uint16, np.float32) or data.shape != (n_bands, *shape):
            return None
        if clear.dtype != bool or clear.shape != shape or fp.dtype != np.uint8 or fp.size != 32:
            return None
        return cls(data, clear, fp.tobytes().hex())
