"""Dates whose harmonisation offset is wrong, told from their pixels.

Since processing baseline 04.00, L2A digital numbers carry BOA_ADD_OFFSET = -1000 (0.1 in
reflectance). The catalog says whether a file still carries it (`catalog.items` trusts
`earthsearch:boa_offset_applied`, the baseline and `raster:bands`), and Earth Search's
`sentinel-2-l2a` is known to say it wrongly for some items (Element84/earth-search#66, #71;
cirrus-geo/cirrus-earth-search#33): such a date reads 0.1 too dark or too bright in every band.

No surface does that. Haze brightens blue far more than SWIR; wet soil darkens SWIR more than
the visible; a season moves NIR. A date whose per-band median over its clear pixels sits 0.1
above (or below) the other dates' in every band at once, the bands within a few hundredths of
each other, was read with another offset than they were. Which of the two is right the
majority does not tell (mis-flagged items come in runs); the dark end of the date does: with
the offset taken off twice its darkest pixels (shadow, water) fall below zero, and left on,
nothing in it is darker than the offset. A date is corrected only when both say so; dates 0.1
apart whose darks do not tell are named, and none of them is corrected.

Pure numpy: per-date band medians and dark ends in, corrections and doubts out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OFFSET", "OffsetCheck", "offset_errors"]

OFFSET = 0.1  # BOA_ADD_OFFSET x QUANTIFICATION: 1000 DN of 10000
# How far a date's mean shift over the bands may be from +-OFFSET, and how far its bands may
# spread around it, to be taken for an offset error (band medians of one site's clear dates
# move by a few hundredths with the season; 0.03 leaves room for that).
TOLERANCE = 0.03
MIN_DATES = 3  # the dates a side kept as it is must hold: fewer are too few to go by
# The darkest band's 1st percentile of a date read right lies between these: below, reflectance
# no surface has (the offset taken off twice); above, no shadow or water darker than the offset
# (left on). Between them a date's darks tell nothing.
DARK_FLOOR, DARK_CEILING = -0.01, 0.09


@dataclass(frozen=True)
class OffsetCheck:
    """Per date to correct (its index), the reflectance to add; `doubtful`: dates 0.1 off the
    others in every band that their darks do not confirm (none of them corrected)."""

    corrections: dict[int, float]
    doubtful: tuple[int, ...] = ()


def offset_errors(medians: np.ndarray, darks: np.ndarray) -> OffsetCheck:
    """medians: (T, B) per date and band, the median reflectance of the date's clear pixels
    (NaN for a date with too few); darks: (T,) the darkest band's 1st percentile of them.
    A suspect is OFFSET above or below the series' median in every band, within TOLERANCE, its
    bands within TOLERANCE of each other (the median taken again without the suspects, which
    pull it). The suspects are corrected when all their darks agree (below DARK_FLOOR when too
    dark, above DARK_CEILING when too bright) and MIN_DATES others are kept; else the other
    dates are, when every one of them is OFFSET the other way from the suspects, their darks
    agree and the suspects are MIN_DATES; else the suspects are doubtful and nothing is
    corrected."""
    medians = np.asarray(medians, dtype=np.float64)
    darks = np.asarray(darks, dtype=np.float64)
    judged = np.flatnonzero(np.isfinite(medians).all(axis=1) & np.isfinite(darks))
    if judged.size < MIN_DATES:
        return OffsetCheck({})
    suspects = _suspects(medians, judged, judged)
    rest = np.setdiff1d(judged, list(suspects))
    if suspects and rest.size >= MIN_DATES:
        suspects = _suspects(medians, judged, rest)
    if not suspects:  # two even groups leave no date 0.1 off the median: look at pairs
        return OffsetCheck({}, _apart(medians, judged))
    rest = np.setdiff1d(judged, list(suspects))
    if rest.size >= MIN_DATES and _confirmed(suspects, darks):
        return OffsetCheck(suspects)
    # Not the suspects: the others, then? Every one of them OFFSET the other way from the
    # suspects, and its darks saying so (a run of wrong flags longer than the right ones).
    others = _suspects(medians, rest, np.array(list(suspects)))
    if len(suspects) >= MIN_DATES and len(others) == rest.size and _confirmed(others, darks):
        return OffsetCheck(others)
    return OffsetCheck({}, tuple(sorted(suspects)))


def _confirmed(corrections: dict[int, float], darks: np.ndarray) -> bool:
    """Every date's darks say it is wrong the way its correction mends: below DARK_FLOOR when
    it is to be brightened, above DARK_CEILING when it is to be darkened."""
    return bool(corrections) and all(
        darks[t] < DARK_FLOOR if add > 0 else darks[t] > DARK_CEILING
        for t, add in corrections.items()
    )


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


def _apart(medians: np.ndarray, judged: np.ndarray) -> tuple[int, ...]:
    """The dates OFFSET apart from some other date in every band (two groups of one size)."""
    values = medians[judged]
    diff = values[:, None, :] - values[None, :, :]
    mean, spread = diff.mean(axis=2), diff.max(axis=2) - diff.min(axis=2)
    apart = (np.abs(np.abs(mean) - OFFSET) <= TOLERANCE) & (spread <= TOLERANCE)
    return tuple(int(t) for t in judged[apart.any(axis=1)])
