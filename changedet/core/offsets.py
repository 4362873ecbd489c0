"""Dates whose harmonisation offset is wrong, told from their pixels.

Since processing baseline 04.00, L2A digital numbers carry BOA_ADD_OFFSET = -1000 (0.1 in
reflectance). The catalog says whether a file still carries it (`catalog.items` trusts
`earthsearch:boa_offset_applied`, the baseline and `raster:bands`), and Earth Search's
`sentinel-2-l2a` is known to say it wrongly for some items (Element84/earth-search#66, #71;
cirrus-geo/cirrus-earth-search#33): such a date reads 0.1 too dark or too bright in every band.

No surface does that. Haze brightens blue far more than SWIR; wet soil darkens SWIR more than
the visible; a season moves NIR. A date whose per-band median over its clear pixels sits 0.1
above (or below) the series' median in every band at once, the bands within a few hundredths
of each other, is a date read with the wrong offset. Pure numpy: per-date medians in, the
correction to add to each such date out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OFFSET", "OffsetCheck", "offset_errors"]

OFFSET = 0.1  # BOA_ADD_OFFSET x QUANTIFICATION: 1000 DN of 10000
# How far a date's mean shift over the bands may be from +-OFFSET, and how far its bands may
# spread around it, to be taken for an offset error (measured band medians move by a few
# thousandths between clear dates of one season over arid ground; 0.03 leaves room for that).
TOLERANCE = 0.03
MIN_DATES = 3  # below this, no median of the series to compare with


@dataclass(frozen=True)
class OffsetCheck:
    """Per suspect date (its index), the reflectance to add; `inconsistent`: too many dates
    disagree to tell which offset is right (nothing corrected)."""

    corrections: dict[int, float]
    inconsistent: int = 0


def offset_errors(medians: np.ndarray) -> OffsetCheck:
    """medians: (T, B) per date and band, the median reflectance of the date's clear pixels
    (NaN for a date with too few). A date is a suspect when every band is OFFSET above (or
    below) the series' median band for band, within TOLERANCE, and the bands agree within
    TOLERANCE. Corrected only while suspects are under a third of the dates judged: were more
    of them off, the series' median itself would be in doubt."""
    medians = np.asarray(medians, dtype=np.float64)
    judged = np.flatnonzero(np.isfinite(medians).all(axis=1))
    if judged.size < MIN_DATES:
        return OffsetCheck({})
    corrections = _suspects(medians, judged, judged)
    # Again against the dates not suspected: several dates off pull the first median.
    rest = np.setdiff1d(judged, list(corrections))
    if corrections and rest.size >= MIN_DATES:
        corrections = _suspects(medians, judged, rest)
    if 3 * len(corrections) >= judged.size:
        return OffsetCheck({}, inconsistent=len(corrections))
    return OffsetCheck(corrections)


def _suspects(medians: np.ndarray, judged: np.ndarray, reference: np.ndarray) -> dict[int, float]:
    """The dates of `judged` OFFSET off the median of the `reference` dates in every band."""
    shift = medians[judged] - np.median(medians[reference], axis=0)
    mean = shift.mean(axis=1)
    spread = shift.max(axis=1) - shift.min(axis=1)
    found: dict[int, float] = {}
    for sign in (1.0, -1.0):
        off = (np.abs(mean - sign * OFFSET) <= TOLERANCE) & (spread <= TOLERANCE)
        found.update({int(t): -sign * OFFSET for t in judged[off]})
    return found
