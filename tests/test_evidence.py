"""Dated evidence per structure (`core.evidence`): the last clear acquisition before it appeared,
the last clear one of the period it was first present in, composites when no acquisition is
clear there; windows moved by the measured co-registration shift."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date

import numpy as np
import pytest

from changedet.core.evidence import chip_order, chip_window, stack_dates, structure_evidence
from changedet.models import RunResult, Stack

ROOF_MIN = 0.4  # the factory's roofs are 0.45 in every band; the ground stays under 0.3


@pytest.fixture(scope="module")
def result(make_run_result: Callable[..., RunResult]) -> RunResult:
    return make_run_result()


def _roof_share(rgb: np.ndarray) -> float:
    return float((np.nan_to_num(rgb, nan=0.0) > ROOF_MIN).all(axis=0).mean())


def test_before_and_after_are_the_nearest_clear_acquisitions(
    result: RunResult, make_run_result
) -> None:
    stack, months = make_run_result.dated(result)
    found = structure_evidence(
        stack_dates(stack),
        result.structures,
        composites=months,
        baseline=result.before,
        latest=result.after,
    )
    got = {e.structure_id: (e.before.when, e.after.when) for e in found}
    assert got == {
        # Present from Oct 2023: the last clear date before October, the last in October.
        "s-0001": (date(2023, 9, 20), date(2023, 10, 18)),
        # Present from Dec 2023; 2023-12-20 is cloudy over the depot, so 2023-12-05.
        "s-0002": (date(2023, 10, 18), date(2023, 12, 5)),
        # Present from May 2024; the cloud of 2023-12-20 does not reach the shed.
        "s-0003": (date(2023, 12, 20), date(2024, 5, 12)),
    }
    for e in found:
        assert e.before.source == e.after.source == "acquisition"
        assert e.before.label == e.before.when.isoformat()  # the date is what the chip shows
        assert e.after.scene_ids == (f"S2A_39SWV_{e.after.when:%Y%m%d}_0_L2A",)
        # The roof is in the after picture, not in the before one.
        s = next(s for s in result.structures if s.id == e.structure_id)
        top, left, side = chip_window(s.geometry, result.grid)
        assert e.window == result.grid.window(top, left, side, side)
        assert e.before.rgb.shape == e.after.rgb.shape == (3, side, side)
        assert _roof_share(e.after.rgb) > 0 and _roof_share(e.before.rgb) == 0


def test_a_composite_stands_in_where_no_acquisition_is_clear(
    result: RunResult, make_run_result
) -> None:
    stack, months = make_run_result.dated(result)
    cloudy = np.array(stack.clear)
    cloudy[:, 15:35, 60:90] = False  # every date cloudy over the depot
    stack = replace(stack, clear=cloudy)
    (depot,) = structure_evidence(
        stack_dates(stack),
        [s for s in result.structures if s.id == "s-0002"],
        composites=months,
        baseline=result.before,
        latest=result.after,
    )
    # Before: the latest clear composite ending by December (October's); after: December's.
    assert (depot.before.source, depot.before.label) == ("composite", "composite 2023-10")
    assert (depot.after.source, depot.after.label) == ("composite", "composite 2023-12")
    assert depot.before.when is None and depot.after.when is None
    assert _roof_share(depot.after.rgb) > 0 and _roof_share(depot.before.rgb) == 0
    # With no month composite before it either, the baseline stands in.
    (only_baseline,) = structure_evidence(
        stack_dates(stack),
        [s for s in result.structures if s.id == "s-0002"],
        composites=months[1:],
        baseline=result.before,
        latest=result.after,
    )
    assert only_baseline.before.label == "composite 2023-06..07"


def test_the_corrected_shift_is_applied_to_the_window(result: RunResult, make_run_result) -> None:
    stack, months = make_run_result.dated(result)
    moved = np.array(stack.reflectance)
    moved[2] = np.roll(moved[2], 1, axis=-2)  # 2023-10-18 lands one row too far south
    shifted = replace(stack, reflectance=moved)
    hall = [s for s in result.structures if s.id == "s-0001"]
    kwargs = {"composites": months, "baseline": result.before, "latest": result.after}
    straight = structure_evidence(stack_dates(stack), hall, **kwargs)[0]
    corrected = structure_evidence(
        stack_dates(shifted), hall, shifts=[None, None, (-1.0, 0.0)], threshold_px=0.25, **kwargs
    )[0]
    small = structure_evidence(
        stack_dates(shifted), hall, shifts=[None, None, (-1.0, 0.0)], threshold_px=2.0, **kwargs
    )[0]
    assert corrected.after.when == straight.after.when == date(2023, 10, 18)
    np.testing.assert_allclose(corrected.after.rgb[:, 1:-1], straight.after.rgb[:, 1:-1], atol=1e-6)
    # A shift under the threshold was not corrected for detection, so not here either.
    assert not np.allclose(small.after.rgb[:, 1:-1], straight.after.rgb[:, 1:-1], equal_nan=True)


def test_limit_takes_the_most_confident_and_windows_reach_past_the_edge(
    result: RunResult, make_run_result
) -> None:
    stack, months = make_run_result.dated(result)
    found = structure_evidence(
        stack_dates(stack),
        result.structures,
        composites=months,
        baseline=result.before,
        latest=result.after,
        limit=2,
    )
    assert [e.structure_id for e in found] == ["s-0002", "s-0001"]  # confidence 0.93, 0.81
    # A structure in the grid's corner: its window reaches beyond the grid, NaN there.
    corner = replace(
        result.structures[0], geometry=make_run_result.px_box(result.grid, (0, 0, 2, 2))
    )
    (e,) = structure_evidence(
        stack_dates(stack), [corner], composites=months, baseline=result.before, latest=result.after
    )
    top, left, side = chip_window(corner.geometry, result.grid)
    assert top < 0 and left < 0 and e.before.rgb.shape == (3, side, side)
    assert np.isnan(e.before.rgb[:, :-top, :]).all()


def test_the_pipeline_hands_over_dated_evidence(make_aoi, make_stack, fake_io, tmp_path) -> None:
    from changedet.aoi import grid_for
    from changedet.config import load_config
    from changedet.pipeline import run_aoi

    aoi = make_aoi()
    dates = [date(2023, m, d) for m in range(1, 8) for d in (3, 18)]
    stack: Stack = make_stack(
        grid_for(aoi), dates=dates, squares=[(date(2023, 5, 1), (20, 20, 6, 6))]
    )
    base = load_config(None)
    config = replace(
        base,
        time=replace(base.time, start=date(2023, 1, 1), end=date(2023, 7, 31)),
        change=replace(base.change, coregister=False),
    )
    io = fake_io(stack)
    run_aoi(aoi, config, out_root=tmp_path, io=io)
    (handed,) = io.write.results
    assert handed.structures and len(handed.evidence) == len(handed.structures)
    roof = next(e for e in handed.evidence)
    assert roof.before.when is not None and roof.before.when < date(2023, 5, 1)
    assert roof.after.when is not None and date(2023, 5, 1) <= roof.after.when
    assert handed.config["track"]["min_persistence"] == config.track.min_persistence


def test_chips_go_to_confirmed_structures_first_and_never_to_dropped_candidates(
    result: RunResult, make_run_result
) -> None:
    s1, s2, s3 = sorted(result.structures, key=lambda s: s.id)
    structures = [
        replace(s1, confirmed=False, confidence=0.99),  # a live candidate, very confident
        replace(s2, confirmed=True, confidence=0.40),
        replace(s3, confirmed=False, confidence=0.95, status="dropped"),
    ]
    assert [s.id for s in chip_order(structures)] == [s2.id, s1.id]
    stack, months = make_run_result.dated(result)
    found = structure_evidence(
        stack_dates(stack),
        structures,
        composites=months,
        baseline=result.before,
        latest=result.after,
        limit=1,
    )
    assert [e.structure_id for e in found] == [s2.id]
