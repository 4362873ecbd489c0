"""Time-series periods: calendar months or quarters over a date range, and the baseline choice.

Periods are half-open `[start, end)` date intervals aligned to the calendar and clipped to the
requested range, so the first and last period may be shorter than a full month/quarter. Labels are
'2023-08' for months and '2023-Q3' for quarters.

The baseline is what every later period is compared with: the union of the first
`baseline_periods` periods that were clear enough (a cloudy early month is skipped, not used).
A fixed baseline keeps each period's change map independent of later data, which is what makes
ledger ids stable when a run is extended by one more period.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

from changedet.errors import ConfigError, NoScenesError
from changedet.models import Period

__all__ = [
    "PERIOD_KINDS",
    "baseline_indices",
    "make_periods",
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


def baseline_indices(
    periods: Sequence[Period],
    clear_fractions: Sequence[float],
    *,
    baseline_periods: int,
    min_clear_fraction: float = 0.2,
) -> tuple[int, ...]:
    """Indices of the periods forming the baseline: the first `baseline_periods` periods whose clear
    fraction (share of AOI pixels with a clear observation) reaches `min_clear_fraction`.

    Raises NoScenesError when not even one period is clear enough.
    """
    if len(periods) != len(clear_fractions):
        raise ValueError("periods and clear_fractions must have the same length")
    if baseline_periods < 1:
        raise ConfigError("time.baseline_periods must be >= 1")
    chosen = [i for i, f in enumerate(clear_fractions) if f >= min_clear_fraction][
        :baseline_periods
    ]
    if not chosen:
        raise NoScenesError(
            f"no period is at least {min_clear_fraction:.0%} clear, so there is no baseline; "
            "start the time range earlier or lower read.min_aoi_clear_fraction"
        )
    return tuple(chosen)
