"""New structures per period, with the range the data cannot pin down (pure Python/numpy).

For all structures and for new buildings alike, per period:
- `new`: confirmed structures first present in that period;
- best estimate (`cumulative`): a structure first seen after unobserved (cloudy) periods may have
  appeared in any of them, so its count is spread evenly over the periods its first-seen
  interval spans, and the spread counts are summed and rounded;
- `high` adds confirmed structures whose first-seen interval has opened (they may already stand,
  not yet seen), extra pieces of persistent splits, and candidates too recent to decide; for
  buildings also structures whose kind the pixels could not tell ("other");
- `low` removes confirmed structures only ever seen merged into one object with an older one,
  and those confirmed on fewer periods than the configured persistence asks (a pair or a short
  series asked less: one clear period cannot tell a structure from a transient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from changedet.core.kinds import BUILDING, OTHER
from changedet.models import Period, PeriodCount

__all__ = ["CountEntry", "period_counts"]


@dataclass(frozen=True)
class CountEntry:
    """What counting needs to know about one structure."""

    born: int  # period index of its first presence
    last_absent: int | None  # period index of the last clear period it was absent (None: unknown)
    confirmed: bool
    kind: str
    split_extra: int = 0  # extra pieces of a persistent split (may be several structures)
    merged_only: bool = False  # only ever seen merged with an older confirmed structure
    pending: bool = False  # an unconfirmed candidate with too few later periods to decide
    thin: bool = False  # confirmed on fewer periods than configured (too few clear periods)


@dataclass(frozen=True)
class _Series:
    new: list[int]
    cumulative: list[int]
    low: list[int]
    high: list[int]


def _best_estimate(entries: Sequence[CountEntry], n: int) -> np.ndarray:
    weight = np.zeros(n)
    for e in entries:
        first = e.born if e.last_absent is None else min(e.last_absent + 1, e.born)
        weight[first : e.born + 1] += 1.0 / (e.born + 1 - first)
    return np.floor(np.cumsum(weight) + 0.5 + 1e-9).astype(int)


def _high(entries: Sequence[CountEntry], k: int, maybe: Callable[[CountEntry], bool]) -> int:
    high = 0
    for e in entries:
        if e.confirmed and maybe(e):
            opened = e.last_absent is None or e.last_absent <= k
            high += int(e.born <= k or opened) + (e.split_extra if e.born <= k else 0)
        elif e.pending and maybe(e) and e.born <= k:
            high += 1
    return high


def _series(
    entries: Sequence[CountEntry],
    n: int,
    counted: Callable[[CountEntry], bool],
    maybe: Callable[[CountEntry], bool],
) -> _Series:
    """Counts of the confirmed entries `counted` selects; the high end also takes `maybe` ones."""
    confirmed = [e for e in entries if e.confirmed and counted(e)]
    cumulative = _best_estimate(confirmed, n)
    out = _Series([], [], [], [])
    seen = 0
    for k in range(n):
        new = sum(1 for e in confirmed if e.born == k)
        seen += new
        low = seen - sum(1 for e in confirmed if (e.merged_only or e.thin) and e.born <= k)
        best = int(cumulative[k])
        out.new.append(new)
        out.cumulative.append(best)
        out.low.append(max(0, min(low, best)))
        out.high.append(max(_high(entries, k, maybe), best))
    return out


def period_counts(
    entries: Sequence[CountEntry], periods: Sequence[Period], clear_fractions: Sequence[float]
) -> tuple[PeriodCount, ...]:
    """One PeriodCount per period: all new structures and new buildings, each with its range."""
    n = len(periods)
    every = _series(entries, n, lambda e: True, lambda e: True)
    buildings = _series(
        entries, n, lambda e: e.kind == BUILDING, lambda e: e.kind in (BUILDING, OTHER)
    )
    return tuple(
        PeriodCount(
            period=p,
            new_confirmed=every.new[k],
            cumulative=every.cumulative[k],
            cumulative_low=every.low[k],
            cumulative_high=every.high[k],
            clear_fraction=round(float(clear_fractions[k]), 4),
            buildings_new=buildings.new[k],
            buildings=buildings.cumulative[k],
            buildings_low=buildings.low[k],
            buildings_high=buildings.high[k],
        )
        for k, p in enumerate(periods)
    )
