"""Known-answer tests for period composites."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import numpy as np
import pytest

from changedet.core.composite import composite, median_composite
from changedet.models import Grid, Period, Stack

GRID = Grid.from_origin("EPSG:32639", 500_000.0, 3_950_000.0, 10.0, 4, 3)


@pytest.fixture
def june_stack(make_stack: Callable[..., Stack]) -> Callable[..., Stack]:
    """(values (T, 2, 3, 4), clear (T, 3, 4), days of June 2023) → a blue/red stack, scene S<day>."""

    def build(values: np.ndarray, clear: np.ndarray, days: list[int]) -> Stack:
        return make_stack(
            GRID,
            bands=("blue", "red"),
            dates=[date(2023, 6, d) for d in days],
            reflectance=values,
            clear=clear,
            scene_ids=[f"S{d}" for d in days],
        )

    return build


def test_median_of_clear_observations_count_and_source_date(
    june_stack: Callable[..., Stack],
) -> None:
    t = 5
    values = np.zeros((t, 2, 3, 4), np.float32)
    for i, v in enumerate([0.10, 0.50, 0.20, 0.40, 0.30]):
        values[i, 0] = v
        values[i, 1] = 2 * v
    clear = np.ones((t, 3, 4), bool)
    clear[1, 0, 0] = False  # the 0.5 is a cloud here: median of 0.1, 0.2, 0.4, 0.3 = 0.25
    values[3, :, 2, 3] = np.nan  # missing: median of 0.1, 0.5, 0.2, 0.3 = 0.25
    stack = june_stack(values, clear, [1, 3, 5, 7, 9])
    comp = composite(stack, Period(date(2023, 6, 1), date(2023, 7, 1), "2023-06"))
    assert comp.reflectance.shape == (2, 3, 4)
    np.testing.assert_allclose(comp.reflectance[0, 1, 1], 0.30)
    np.testing.assert_allclose(comp.reflectance[1, 1, 1], 0.60)
    np.testing.assert_allclose(comp.reflectance[0, 0, 0], 0.25)
    np.testing.assert_allclose(comp.reflectance[0, 2, 3], 0.25)
    assert comp.count[1, 1] == 5 and comp.count[0, 0] == 4 and comp.count[2, 3] == 4
    # red (band 1) is the reference band; 0.3 came from 2023-06-09.
    assert comp.source_date[1, 1] == (date(2023, 6, 9) - date(1970, 1, 1)).days
    assert comp.scene_ids == ("S1", "S3", "S5", "S7", "S9")


def test_only_dates_inside_the_period_are_used(june_stack: Callable[..., Stack]) -> None:
    values = np.stack([np.full((2, 3, 4), v, np.float32) for v in (0.1, 0.2, 0.9)])
    stack = june_stack(values, np.ones((3, 3, 4), bool), [1, 2, 20])
    comp = composite(stack, Period(date(2023, 6, 1), date(2023, 6, 10), "early"))
    np.testing.assert_allclose(comp.reflectance, 0.15)
    assert (comp.count == 2).all() and comp.scene_ids == ("S1", "S2")


def test_min_clear_obs_and_empty_pixels(june_stack: Callable[..., Stack]) -> None:
    values = np.full((3, 2, 3, 4), 0.2, np.float32)
    clear = np.ones((3, 3, 4), bool)
    clear[:, 0, 0] = False
    clear[1:, 0, 1] = False  # one observation only
    stack = june_stack(values, clear, [1, 2, 3])
    period = Period(date(2023, 6, 1), date(2023, 7, 1), "m")
    comp = composite(stack, period, min_clear_obs=2)
    assert np.isnan(comp.reflectance[:, 0, 0]).all() and np.isnan(comp.reflectance[:, 0, 1]).all()
    assert comp.source_date[0, 0] == -1 and comp.source_date[0, 1] == -1
    assert comp.count[0, 0] == 0 and comp.count[0, 1] == 1
    np.testing.assert_allclose(comp.reflectance[:, 1:, :], 0.2)


def test_matches_nanmedian_on_random_data() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, (7, 3, 20, 30)).astype(np.float32)
    clear = rng.uniform(size=(7, 20, 30)) > 0.4
    median, count, _ = median_composite(values, clear)
    masked = np.where(clear[:, None], values, np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(masked, axis=0)
    np.testing.assert_allclose(median, expected, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(count, clear.sum(axis=0))
