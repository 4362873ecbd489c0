"""How structures are told apart in every picture: by when they were first seen and by kind.

One responsibility: the classes the overlay map, the report and the QGIS styles share, so all
three agree. First-seen classes group structures by the month of the first period they were
present in (the month before `first_seen_end`): one class per month when there are at most
`MAX_CLASSES` months, else per quarter, half-year, year or several years (2, 5, 10 and more,
from a January of a year their length divides: 2016–2017, 2015–2019), so a legend never holds
more colours than an eye can tell apart on imagery. Colours run along matplotlib's 'plasma'
ramp, oldest dark, newest bright. Kinds are drawn apart by fill: buildings solid, ground works hatched.
Structures the analyst reviewed as false positives are in no class and no count: every picture
draws them apart, grey and crossed (`dismissed_structures`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from matplotlib import colormaps

from changedet.models import FALSE_POSITIVE, Structure

__all__ = [
    "DISMISSED_COLOUR",
    "KIND_FILLS",
    "MAX_CLASSES",
    "UNKNOWN_COLOUR",
    "DateClass",
    "class_of",
    "dismissed_structures",
    "first_seen_classes",
    "first_seen_month",
    "shown_structures",
]

MAX_CLASSES = 6
UNKNOWN_COLOUR = (0.6, 0.6, 0.6)
# A structure reviewed as a false positive: kept on the map, grey and crossed, counted nowhere.
DISMISSED_COLOUR = (0.75, 0.75, 0.75)
# QGIS fill style per Structure.kind (anything else: "dense6"); the overlay hatches the same way.
KIND_FILLS = {"building": "solid", "ground works": "b_diagonal"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class DateClass:
    """Structures first present in [start, end) (calendar months); start None = date unknown.

    A structure belongs here when start < first_seen_end <= end (first_seen_end is the end of
    the first period it was present in)."""

    start: date | None
    end: date | None
    label: str
    colour: tuple[float, float, float]
    count: int

    @property
    def key(self) -> str:
        """A stable text key: 'YYYY-MM..YYYY-MM' of the months covered, '' when unknown."""
        if self.start is None or self.end is None:
            return ""
        last = self.end - timedelta(days=1)
        return f"{self.start:%Y-%m}..{last:%Y-%m}"


def first_seen_month(s: Structure) -> date | None:
    """First day of the month of the first period the structure was present in."""
    if s.first_seen_end is None:
        return None
    last_day = s.first_seen_end - timedelta(days=1)
    return last_day.replace(day=1)


def _add_months(d: date, n: int) -> date:
    k = d.year * 12 + d.month - 1 + n
    return date(k // 12, k % 12 + 1, 1)


def _unit_start(month: date, size: int) -> date:
    """Start of the calendar unit of `size` months holding `month`: quarters, half-years,
    years, and units of several years that start in a January of a year divisible by their
    length (2016–2017, 2015–2019, the 2010s), so that units never overlap."""
    k = (month.year * 12 + month.month - 1) // size * size
    return date(k // 12, k % 12 + 1, 1)


_UNIT_MONTHS = (1, 3, 6, 12, 24, 60, 120)


def _units(months: Iterable[date], size: int) -> list[tuple[date, date]]:
    """The units of `size` months holding `months`, as (start, end) first days, oldest first."""
    return sorted({(_unit_start(m, size), _add_months(_unit_start(m, size), size)) for m in months})


def _label(start: date, end: date) -> str:
    last = _add_months(end, -1)
    if start == last:
        return f"{_MONTHS[start.month - 1]} {start.year}"
    if start.month == 1 and last.month == 12:
        return str(start.year) if start.year == last.year else f"{start.year}–{last.year}"
    if start.year == last.year:
        return f"{_MONTHS[start.month - 1]}–{_MONTHS[last.month - 1]} {start.year}"
    return f"{_MONTHS[start.month - 1]} {start.year} – {_MONTHS[last.month - 1]} {last.year}"


def _ramp(n: int) -> list[tuple[float, float, float]]:
    cmap = colormaps["plasma"]
    positions = [0.5] if n == 1 else [0.05 + 0.8 * i / (n - 1) for i in range(n)]
    return [tuple(float(v) for v in cmap(p)[:3]) for p in positions]  # type: ignore[misc]


def first_seen_classes(
    structures: Iterable[Structure], max_classes: int = MAX_CLASSES
) -> list[DateClass]:
    """At most `max_classes` first-seen classes (plus 'date unknown' at the end when needed),
    oldest first, each with the number of `structures` in it."""
    items = list(structures)
    months = sorted({m for s in items if (m := first_seen_month(s)) is not None})
    units: list[tuple[date, date]] = []
    for size in _UNIT_MONTHS:
        units = _units(months, size)
        if len(units) <= max_classes:
            break
    while len(units) > max_classes:  # centuries of structures: units of ever more decades
        size *= 2
        units = _units(months, size)
    colours = _ramp(len(units))
    out = []
    for (start, end), colour in zip(units, colours, strict=True):
        n = sum(1 for s in items if (m := first_seen_month(s)) is not None and start <= m < end)
        out.append(DateClass(start, end, _label(start, end), colour, n))
    unknown = sum(1 for s in items if s.first_seen_end is None)
    if unknown:
        out.append(DateClass(None, None, "date unknown", UNKNOWN_COLOUR, unknown))
    return out


def class_of(s: Structure, classes: Sequence[DateClass]) -> DateClass | None:
    """The class holding `s` (None when none does)."""
    month = first_seen_month(s)
    for c in classes:
        if c.start is None or c.end is None:
            if month is None:
                return c
        elif month is not None and c.start <= month < c.end:
            return c
    return None


def shown_structures(structures: Iterable[Structure]) -> list[Structure]:
    """The structures maps and styles classify and legends count: all but dropped candidates
    and those the analyst reviewed as false positives."""
    return [s for s in structures if s.status != "dropped" and s.review != FALSE_POSITIVE]


def dismissed_structures(structures: Iterable[Structure]) -> list[Structure]:
    """The structures the analyst reviewed as false positives, dropped candidates among them
    (the verdict wins, as in the QGIS style and run.json's n_false_positive): kept visible,
    drawn apart (grey, crossed), in no class and no count."""
    return [s for s in structures if s.review == FALSE_POSITIVE]
