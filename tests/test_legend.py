"""First-seen classes of the maps, QGIS styles and KML over runs of many years."""

from __future__ import annotations

from datetime import date
from itertools import pairwise

import pytest
from shapely.geometry import box

from changedet.models import Structure
from changedet.outputs.legend import MAX_CLASSES, class_of, first_seen_classes


def _first_seen_in(months: list[date]) -> list[Structure]:
    """One structure first present in each month of `months` (first_seen_end: the next day)."""
    return [
        Structure(
            id=f"s{i}",
            geometry=box(i, 0, i + 1, 1),
            area_m2=100.0,
            confidence=0.9,
            first_seen_start=date(m.year, m.month, 1),
            first_seen_end=date(m.year + m.month // 12, m.month % 12 + 1, 1),
            confirmed=True,
        )
        for i, m in enumerate(months)
    ]


@pytest.mark.parametrize(
    ("first", "years", "labels"),
    [
        # 8 years: two-year units from an even year (the units of 2 years all started in
        # January of the structure's own year, and overlapped: 8 classes of 10 years each)
        (2017, 8, ["2016–2017", "2018–2019", "2020–2021", "2022–2023", "2024–2025"]),
        (2005, 20, ["2005–2009", "2010–2014", "2015–2019", "2020–2024"]),
        (1981, 40, ["1980–1989", "1990–1999", "2000–2009", "2010–2019", "2020–2029"]),
        # a century: past the decades, units of twenty years
        (1900, 100, ["1900–1919", "1920–1939", "1940–1959", "1960–1979", "1980–1999"]),
    ],
)
def test_classes_over_years_do_not_overlap_and_count_each_structure_once(
    first: int, years: int, labels: list[str]
) -> None:
    structures = _first_seen_in([date(first + k, 6, 1) for k in range(years)])
    classes = first_seen_classes(structures)
    assert len(classes) <= MAX_CLASSES
    assert sum(c.count for c in classes) == len(structures)
    for earlier, later in pairwise(classes):
        assert earlier.end is not None and later.start is not None
        assert earlier.end <= later.start, (earlier.label, later.label)
    assert all(class_of(s, classes) is not None for s in structures)
    assert [c.label for c in classes] == labels


def test_one_year_keeps_its_months_and_quarters() -> None:
    months = [date(2023, m, 1) for m in (1, 2, 3, 4, 5, 6)]
    assert [c.label for c in first_seen_classes(_first_seen_in(months))] == [
        "Jan 2023",
        "Feb 2023",
        "Mar 2023",
        "Apr 2023",
        "May 2023",
        "Jun 2023",
    ]
    quarters = first_seen_classes(_first_seen_in([date(2023, m, 1) for m in range(1, 13)]))
    assert [c.label for c in quarters] == [
        "Jan–Mar 2023",
        "Apr–Jun 2023",
        "Jul–Sep 2023",
        "Oct–Dec 2023",
    ]
    assert [c.count for c in quarters] == [3, 3, 3, 3]
