"""Known-answer tests of ids carried over from a known ledger (`core.carry`)."""

from __future__ import annotations

from datetime import date

from shapely.geometry import Polygon, box

from changedet.core.carry import Found, Known, carried_ids

CELL = "39N-500025-3949875"  # the 150 m cell x 499950..500100, y 3949800..3949950
EAST = "39N-500175-3949875"


def ids(found: list[tuple[str, Polygon]], known: dict[str, Polygon]) -> dict[str, str]:
    """carried_ids of footprints alone (nothing vanished, first-seen dates unknown)."""
    return carried_ids([Found(i, f) for i, f in found], {k: Known(f) for k, f in known.items()})


def test_a_footprint_that_moved_across_a_cell_border_keeps_its_known_id() -> None:
    # Known as CELL; this run's footprint grew east, and its place id became EAST.
    known = {CELL: box(500_060, 3_949_920, 500_095, 3_949_950)}
    found = [(EAST, box(500_060, 3_949_920, 500_110, 3_949_950))]
    assert ids(found, known) == {EAST: CELL}


def test_a_new_structure_in_the_cell_of_a_gone_one_gets_the_next_free_suffix() -> None:
    known = {
        CELL: box(500_000, 3_949_900, 500_020, 3_949_920),
        f"{CELL}-2": box(500_050, 3_949_900, 500_060, 3_949_910),
    }
    found = [(CELL, box(500_070, 3_949_860, 500_090, 3_949_880))]  # no overlap with either
    assert ids(found, known) == {CELL: f"{CELL}-3"}


def test_an_unknown_structure_keeps_its_place_id_and_a_known_one_its_own() -> None:
    known = {CELL: box(500_000, 3_949_900, 500_030, 3_949_930)}
    found = [
        (CELL, box(500_000, 3_949_900, 500_030, 3_949_940)),  # the same, a little larger
        (EAST, box(500_150, 3_949_900, 500_170, 3_949_920)),
    ]
    assert ids(found, known) == {CELL: CELL, EAST: EAST}


def test_the_same_id_overlapping_a_little_is_the_same_structure_but_another_id_is_not() -> None:
    known = {CELL: box(500_000, 3_949_900, 500_040, 3_949_940)}
    barely = box(500_030, 3_949_930, 500_070, 3_949_970)  # a sixteenth of each
    assert ids([(CELL, barely)], known) == {CELL: CELL}
    assert ids([(EAST, barely)], known) == {EAST: EAST}


def test_a_structure_that_split_keeps_the_id_on_its_larger_part() -> None:
    known = {CELL: box(500_000, 3_949_900, 500_060, 3_949_920)}
    found = [
        (CELL, box(500_000, 3_949_900, 500_025, 3_949_920)),  # 5/12 of the known one
        (f"{CELL}-2", box(500_025, 3_949_900, 500_060, 3_949_920)),  # 7/12
    ]
    assert ids(found, known) == {f"{CELL}-2": CELL, CELL: f"{CELL}-2"}


def test_without_a_known_ledger_every_place_id_stands() -> None:
    found = [(CELL, box(0, 0, 10, 10)), (EAST, box(100, 0, 110, 10))]
    assert ids(found, {}) == {CELL: CELL, EAST: EAST}


def test_a_building_rebuilt_where_a_vanished_one_stood_is_another_building() -> None:
    """The struck building vanished after March; one first seen from June stands on the same
    footprint. Even matching it a little better, the new one does not take the old id (nor
    its alerts); the vanished one, found again, keeps it."""
    footprint = box(500_000, 3_949_900, 500_040, 3_949_930)
    known = {CELL: Known(footprint, vanished_after=date(2024, 3, 31))}
    old = Found(CELL, box(500_000, 3_949_900, 500_040, 3_949_940), date(2023, 5, 1))
    rebuilt = Found(f"{CELL}-2", footprint, date(2024, 6, 1))
    assert carried_ids([old, rebuilt], known) == {CELL: CELL, f"{CELL}-2": f"{CELL}-2"}
    # Alone, it still may not: it gets the cell's next free suffix if it held the old id.
    alone = Found(CELL, footprint, date(2024, 6, 1))
    assert carried_ids([alone], known) == {CELL: f"{CELL}-2"}
    # Seen before the known one vanished: the same building.
    assert carried_ids([Found(EAST, footprint, date(2024, 3, 1))], known) == {EAST: CELL}


def test_on_equal_overlap_the_structure_that_shares_the_id_keeps_it() -> None:
    footprint = box(500_000, 3_949_900, 500_040, 3_949_930)
    known = {f"{CELL}-2": Known(footprint)}
    found = [Found(CELL, footprint), Found(f"{CELL}-2", footprint)]
    assert carried_ids(found, known) == {CELL: CELL, f"{CELL}-2": f"{CELL}-2"}
