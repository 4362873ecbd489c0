"""What a monitoring run's temporal screen takes from the last run's: the verdicts on every
observation too far from the dates that changed to be touched by them.

The screen (`core.mask.temporal_spikes`, `temporal_dips`) decides on a pixel's observation from
at most `REACH` clear observations of that pixel on either side: a spike compares an observation
with its two neighbours before and after, the second pass skips the first pass's spikes (never
two in a row) and the cloudy pairs look one neighbour further. So when this run's series is the
last run's up to date `same` (the dates after it new or changed), the last run's verdict on an
observation with `REACH` clear observations of its pixel between it and `same` still holds. A
strip is screened from the date (`window_start`) that leaves every pixel 2 x `REACH` clear
observations before `same`: the first `REACH` of them in the window keep the last run's
verdicts, every later observation takes this run's, each then decided by as much of its series
as a screen of every date uses (`combine`). A strip with a pixel seen too rarely is screened
whole. The same answer to the bit (tests/test_rescreen.py).

Kept in the period cache (`ArrayMemo`) under a digest of the grid, bands and screen settings;
one entry per AOI, replaced by every run; a cache, not state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from changedet.config import MaskConfig
from changedet.core.reuse import ArrayMemo, arrays_of, json_array, json_of
from changedet.models import DateSeries

__all__ = ["REACH", "KeptScreen", "date_ids", "keep_screen", "kept_screen", "screen_key"]

VERSION = "rescreen-1"  # bump when the screen decides from more (or other) observations
REACH = 8  # clear observations each side a verdict depends on (see the module docstring)


def screen_key(series: DateSeries, mask_config: MaskConfig, trailing: bool) -> str:
    grid = series.grid
    facts = repr((VERSION, grid, series.bands, mask_config, trailing))
    return "screen-" + hashlib.sha256(facts.encode()).hexdigest()


def date_ids(series: DateSeries) -> list[str]:
    """Each date by its pixels and clear mask (`DateSeries.fingerprints`) and its time."""
    return [
        f"{fp}@{t.isoformat()}" for fp, t in zip(series.fingerprints(), series.times, strict=True)
    ]


@dataclass(frozen=True)
class KeptScreen:
    """The last run's spikes of the leading dates this run shares with it (`same` of them)."""

    same: int
    spikes: tuple[np.ndarray, ...]  # per shared date, sorted flat pixel indices

    def window_start(self, clear: np.ndarray) -> int:
        """The first date the screen of a strip (`clear`: (T, rows, W), every date) must
        look at: every pixel seen on some date has 2 x REACH clear observations from it to
        `same`. 0 (the whole series) when a pixel has fewer."""
        need = 2 * REACH
        seen_ever = clear.any(axis=0)
        count = np.zeros(clear.shape[1:], np.int32)
        for t in range(self.same - 1, -1, -1):
            count += clear[t]
            # a look every few dates: a window a date or three longer is as exact
            if t % 4 == 0 and not (seen_ever & (count < need)).any():
                return t
        return 0

    def combine(
        self,
        screened: np.ndarray,
        observed: np.ndarray,
        clear: np.ndarray,
        start: int,
        rows: slice,
        width: int,
    ) -> np.ndarray | None:
        """The screen of a strip's every date from its screen of dates `start`.. (`screened`,
        decided on `observed`: where every screened band had a clear value) and the kept
        verdicts; None when a pixel lacks the observations that makes exact (screen it whole).
        clear: (T, rows, W) of every date."""
        before_same = observed[: self.same - start]
        if (clear.any(axis=0) & (before_same.sum(axis=0) < 2 * REACH)).any():
            return None
        out = np.zeros(clear.shape, dtype=bool)
        lo, hi = rows.start * width, rows.stop * width
        for t in range(self.same):
            index = self.spikes[t]
            part = index[np.searchsorted(index, lo) : np.searchsorted(index, hi)]
            out[t].reshape(-1)[part - lo] = True
        # observations of the pixel in the window before each date: from REACH on, the window
        # holds what the verdict depends on; before that, the kept verdict is exact
        seen = np.cumsum(observed, axis=0, dtype=np.int32)
        seen -= observed
        window = out[start:]
        np.copyto(window, screened, where=seen >= REACH)
        return out


def kept_screen(memo: ArrayMemo, key: str, ids: Sequence[str]) -> KeptScreen | None:
    """The kept spikes of the dates `ids` begins with (None: nothing shared, or unreadable)."""
    arrays = arrays_of(memo, key, ("ids", "offsets", "spikes"))
    if arrays is None:
        return None
    listed, offsets, spikes = arrays
    try:
        kept_ids = json_of(listed)
    except ValueError:
        return None
    if not isinstance(kept_ids, list) or offsets.shape != (len(kept_ids) + 1,):
        return None
    same = 0
    while same < min(len(ids), len(kept_ids)) and ids[same] == kept_ids[same]:
        same += 1
    if same == 0 or offsets[-1] != spikes.size:
        return None
    by_date = tuple(
        np.asarray(spikes[offsets[t] : offsets[t + 1]], dtype=np.int64) for t in range(same)
    )
    return KeptScreen(same, by_date)


def keep_screen(
    memo: ArrayMemo, key: str, ids: Sequence[str], spikes: Sequence[np.ndarray]
) -> None:
    """Keep this run's spikes (per date, sorted flat indices) for the next run."""
    offsets = np.zeros(len(spikes) + 1, dtype=np.int64)
    np.cumsum([s.size for s in spikes], out=offsets[1:])
    biggest = max((int(s.max()) for s in spikes if s.size), default=0)
    dtype = np.int32 if biggest < 2**31 else np.int64
    memo.put_arrays(
        key,
        {
            "ids": json_array(list(ids)),
            "offsets": offsets,
            "spikes": np.concatenate([s.astype(dtype) for s in spikes])
            if spikes
            else np.zeros(0, dtype),
        },
    )
