"""Periods and baseline choice: known calendar answers."""

from __future__ import annotations

import itertools
from datetime import date

import pytest

from changedet.core.periods import make_periods, plan_comparison
from changedet.errors import ConfigError, NoScenesError
from changedet.models import Period


def test_months_are_calendar_aligned_and_clipped() -> None:
    ps = make_periods(date(2023, 6, 15), date(2023, 9, 10), "month")
    assert [p.label for p in ps] == ["2023-06", "2023-07", "2023-08", "2023-09"]
    assert ps[0] == Period(date(2023, 6, 15), date(2023, 7, 1), "2023-06")
    assert ps[-1] == Period(date(2023, 9, 1), date(2023, 9, 11), "2023-09")  # end inclusive
    assert all(a.end == b.start for a, b in itertools.pairwise(ps))


def test_months_cross_year_boundary() -> None:
    ps = make_periods(date(2023, 11, 1), date(2024, 2, 29), "month")
    assert [p.label for p in ps] == ["2023-11", "2023-12", "2024-01", "2024-02"]
    assert ps[-1].end == date(2024, 3, 1)


def test_quarters() -> None:
    ps = make_periods(date(2023, 6, 1), date(2024, 6, 30), "quarter")
    assert [p.label for p in ps] == ["2023-Q2", "2023-Q3", "2023-Q4", "2024-Q1", "2024-Q2"]
    assert ps[0].start == date(2023, 6, 1) and ps[1] == Period(
        date(2023, 7, 1), date(2023, 10, 1), "2023-Q3"
    )


def test_single_day_range_and_errors() -> None:
    (p,) = make_periods(date(2023, 2, 28), date(2023, 2, 28), "month")
    assert p.contains(date(2023, 2, 28)) and not p.contains(date(2023, 3, 1))
    with pytest.raises(ConfigError, match="before start"):
        make_periods(date(2023, 2, 1), date(2023, 1, 1), "month")
    with pytest.raises(ConfigError, match="month, quarter"):
        make_periods(date(2023, 1, 1), date(2023, 2, 1), "week")


def test_baseline_skips_cloudy_periods() -> None:
    ps = make_periods(date(2023, 1, 1), date(2023, 6, 30), "month")
    plan = plan_comparison(ps, [0.9, 0.05, 0.6, 0.8, 1, 1], baseline_periods=2, min_persistence=2)
    assert (plan.baseline, plan.mode, plan.min_persistence) == ((0, 2), "series", 2)
    with pytest.raises(NoScenesError, match=r"0 period.*comparison needs two") as info:
        plan_comparison(ps, [0.0] * 6, baseline_periods=2, min_persistence=2)
    assert "min_clear_obs" not in str(info.value)
    # Asking many clear dates of a pixel is what left no period clear: the line names it.
    with pytest.raises(NoScenesError) as info:
        plan_comparison(ps, [0.0] * 6, baseline_periods=2, min_persistence=2, min_clear_obs=40)
    assert "with change.min_clear_obs = 40 clear dates (none)" in str(info.value)
    assert str(info.value).endswith("lower change.min_clear_obs or time.baseline_min_clear")


@pytest.mark.parametrize(
    ("clear", "baseline", "persistence", "mode"),
    [
        ([0.9, 0, 0, 0, 0, 0.8], (0,), 1, "pair"),  # a before/after pair
        ([0.9, 0.9, 0, 0, 0, 0.8], (0,), 2, "short"),  # baseline shrinks to keep persistence
        ([0.9, 0.9, 0.9, 0, 0, 0.8], (0, 1), 2, "series"),
        ([0.9, 0.9, 0.9, 0.9, 0, 0], (0, 1), 2, "series"),
    ],
)
def test_few_clear_periods_shrink_the_baseline_first_then_persistence(
    clear: list[float], baseline: tuple[int, ...], persistence: int, mode: str
) -> None:
    ps = make_periods(date(2023, 1, 1), date(2023, 6, 30), "month")
    plan = plan_comparison(ps, clear, baseline_periods=2, min_persistence=2)
    assert (plan.baseline, plan.min_persistence, plan.mode) == (baseline, persistence, mode)
    assert len(plan.clear) - len(plan.baseline) >= plan.min_persistence
    assert plan.describe(ps).startswith(
        "two-date" if mode == "pair" else ("short" if mode == "short" else "baseline")
    )


def test_one_clear_period_is_refused() -> None:
    ps = make_periods(date(2023, 1, 1), date(2023, 3, 31), "month")
    with pytest.raises(NoScenesError, match=r"only 1 period.*2023-02.*comparison needs two"):
        plan_comparison(ps, [0.1, 0.9, 0.1], baseline_periods=2, min_persistence=2)


def test_a_range_of_one_period_is_refused_with_advice_that_fits_it() -> None:
    from dataclasses import replace

    from changedet.config import Config
    from changedet.pipeline import periods_for

    config = Config()
    monthly = replace(
        config, time=replace(config.time, start=date(2024, 6, 1), end=date(2024, 6, 30))
    )
    with pytest.raises(ConfigError) as month:
        periods_for(monthly)
    assert "widen --start/--end" in str(month.value) and "time.period" not in str(month.value)
    quarterly = replace(monthly, time=replace(monthly.time, period="quarter"))
    with pytest.raises(ConfigError) as quarter:
        periods_for(quarterly)
    assert "or set time.period = 'month'" in str(quarter.value)
