"""Per-pixel masks kept for every period, at a bit a pixel: what the tracker and the ledger
look back at (which pixels were observed, which held change) grows with the number of periods,
so it is kept packed, and read at the pixels asked for."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PackedMask"]


@dataclass(frozen=True, eq=False)
class PackedMask:
    """A flat bool mask of `size` pixels as `np.packbits` bits (big-endian in each byte)."""

    bits: np.ndarray  # uint8
    size: int
    n_set: int

    @classmethod
    def of(cls, mask: np.ndarray) -> PackedMask:
        flat = np.ascontiguousarray(mask, dtype=bool).ravel()
        return cls(np.packbits(flat), flat.size, int(np.count_nonzero(flat)))

    def __getitem__(self, flat: np.ndarray) -> np.ndarray:
        """The mask at the flat pixel indices `flat` (an integer array), as bools."""
        index = np.asarray(flat, dtype=np.intp)
        if index.size and (index.min() < 0 or index.max() >= self.size):
            raise IndexError(f"pixel index out of range for a mask of {self.size} pixels")
        shift = (7 - (index & 7)).astype(np.uint8)
        out: np.ndarray = ((self.bits[index >> 3] >> shift) & 1).astype(bool)
        return out

    def mean(self) -> float:
        """The share of pixels set."""
        return self.n_set / self.size if self.size else 0.0

    def unpacked(self) -> np.ndarray:
        """The flat bool mask."""
        out: np.ndarray = np.unpackbits(self.bits, count=self.size).view(bool)
        return out
