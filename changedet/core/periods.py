"""Time-series periods: calendar months or quarters over a date range, and the baseline choice.

Periods are half-open `[start, end)` date intervals aligned to the calendar and clipped to the
requested range, so the first and last period may be shorter than a full month/quarter. Labels are
'2023-08' for months and '2023-Q3' for quarters.

The baseline is what every later period is compared with: the union of the first
`baseline_periods` periods that were clear enough (a cloudy early month is skipped, not used);
with few clear periods it shrinks, down to a two-date comparison (`plan_comparison`).
A fixed baseline keeps each period's change map independent of later data, which is what makes
ledger ids stable when a run is extended by one more period.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from changedet.errors import ConfigError, NoScenesError
from changedet.models import Period

__all__ = [
    "PERIOD_KINDS",
    "Comparison",
    "make_periods",
    "plan_comparison",
]

PERIOD_KINDS = ("month", "quarter")


def _add_months(d: date, months: int) -> date:
    total = d.year * 12 + (d.month - 1) + months
    return date(total // 12, total % 12 + 1, 1)


def make_periods(start: date, end: date, kind: str = "month") -> list[Period]:
    """Calendar periods covering `start`..`end` (both inclusive), clipped to that range.

    kind: "month" or "quarter". Raises ConfigError for an unknown kind or end < start.
    """
    if kind not in PERIOD_KINDS:
        raise ConfigError(f"period kind must be one of {', '.join(PERIOD_KINDS)}, got '{kind}'")
    if end < start:
        raise ConfigError(f"period range: end {end} is before start {start}; swap them")
    step = 1 if kind == "month" else 3
    first_month = start.month if kind == "month" else 3 * ((start.month - 1) // 3) + 1
    cursor = date(start.year, first_month, 1)
    stop = end + timedelta(days=1)  # exclusive
    periods: list[Period] = []
    while cursor < stop:
        nxt = _add_months(cursor, step)
        if kind == "month":
            label = f"{cursor.year:04d}-{cursor.month:02d}"
        else:
            label = f"{cursor.year:04d}-Q{(cursor.month - 1) // 3 + 1}"
        periods.append(Period(max(cursor, start), min(nxt, stop), label))
        cursor = nxt
    return periods


@dataclass(frozen=True)
class Comparison:
    """What a run compares: its baseline periods, and how much persistence later periods allow.

    mode: "series" (the configured baseline, and enough later clear periods to check
    persistence), "short" (fewer clear periods: the baseline and/or the persistence asked for
    shrink to what there is) or "pair" (two clear periods: one compared with the other;
    persistence cannot be checked).
    """

    baseline: tuple[int, ...]  # period indices
    clear: tuple[int, ...]  # indices of all periods clear enough
    mode: str
    min_persistence: int  # clear later periods a new structure must persist over
    wanted_baseline: int
    wanted_persistence: int

    @property
    def last(self) -> int:
        return max(self.baseline)

    def describe(self, periods: Sequence[Period]) -> str:
        """One sentence for run.json and the report."""
        base = ", ".join(periods[i].label for i in self.baseline)
        later = len(self.clear) - len(self.baseline)
        if self.mode == "pair":
            other = periods[self.clear[-1]].label
            return (
                f"two-date comparison: {other} against {base}; with one later observation "
                "persistence cannot be checked, so every structure rests on a single clear period"
            )
        text = f"baseline {base}; {later} later clear period(s) compared"
        if self.mode == "short":
            text = (
                f"short series: {text} (configured: baseline {self.wanted_baseline}, "
                f"persistence {self.wanted_persistence})"
            )
        return f"{text}; a new structure must persist over {self.min_persistence} clear period(s)"


def plan_comparison(
    periods: Sequence[Period],
    clear_fractions: Sequence[float],
    *,
    baseline_periods: int,
    min_persistence: int,
    min_clear_fraction: float = 0.2,
    min_clear_obs: int = 1,
) -> Comparison:
    """The baseline (the first `baseline_periods` periods whose clear fraction — share of AOI
    pixels with a clear observation — reaches `min_clear_fraction`) and the persistence asked
    of later periods, both shrunk when the clear periods are too few for them: a run needs only
    two clear periods, one to compare with and one to compare.

    Raises NoScenesError when fewer than two periods are clear enough (`min_clear_obs`: the
    clear dates a pixel needed in a period to count, said when it is more than one).
    """
    if len(periods) != len(clear_fractions):
        raise ValueError("periods and clear_fractions must have the same length")
    if baseline_periods < 1 or min_persistence < 1:
        raise ConfigError("time.baseline_periods and track.min_persistence must be >= 1")
    clear = tuple(i for i, f in enumerate(clear_fractions) if f >= min_clear_fraction)
    if len(clear) < 2:
        seen = ", ".join(periods[i].label for i in clear) or "none"
        # A pixel is clear in a period with min_clear_obs clear observations there.
        obs = (
            f" with change.min_clear_obs = {min_clear_obs} clear dates" if min_clear_obs > 1 else ""
        )
        lower = "change.min_clear_obs or " if min_clear_obs > 1 else ""
        raise NoScenesError(
            f"only {len(clear)} period(s) at least {min_clear_fraction:.0%} clear inside the AOI"
            f"{obs} ({seen}); a comparison needs two: widen the time range, or lower {lower}"
            "time.baseline_min_clear"
        )
    n_base = max(1, min(baseline_periods, len(clear) - min_persistence))
    persistence = min(min_persistence, len(clear) - n_base)
    full = n_base == baseline_periods and persistence == min_persistence
    mode = "series" if full else ("pair" if len(clear) == 2 else "short")
    return Comparison(clear[:n_base], clear, mode, persistence, baseline_periods, min_persistence)
