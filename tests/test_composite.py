"""Known-answer tests for period composites."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import numpy as np
import pytest

from changedet.core.composite import composite, median_composite, sorting_network
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


@pytest.mark.parametrize("n", range(1, 13))
def test_the_sorting_network_sorts_every_zero_one_input(n: int) -> None:
    # The 0-1 principle: a comparator network that sorts every 0/1 sequence sorts every input.
    inputs = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # (2^n, n): every 0/1 sequence
    values = inputs.T.astype(np.float32).copy()  # (n, 2^n): one sequence per column
    for a, b in sorting_network(n):
        values[a], values[b] = np.minimum(values[a], values[b]), np.maximum(values[a], values[b])
    np.testing.assert_array_equal(values, np.sort(inputs.T, axis=0))


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
@pytest.mark.parametrize("n_dates", [1, 2, 3, 5, 8, 13, 16, 17, 32, 33, 40])
def test_the_median_is_np_sorts_to_the_bit_with_ties_gaps_and_any_date_count(n_dates: int) -> None:
    # The reference: the median of np.sort along time (NaN last), as composites were computed
    # before the sorting network; both sides of NETWORK_MAX.
    rng = np.random.default_rng(n_dates)
    values = rng.uniform(0, 0.4, (n_dates, 3, 9, 11)).astype(np.float32)
    values[rng.uniform(size=values.shape) < 0.1] = 0.25  # ties
    values[rng.uniform(size=values.shape) < 0.05] = np.nan  # a band missing on a clear date
    values[rng.uniform(size=values.shape) < 0.02] = np.inf  # a saturated value: unusable too
    clear = rng.uniform(size=(n_dates, 9, 11)) > 0.3
    given = values.copy(), clear.copy()
    median, count, index = median_composite(values, clear, min_clear_obs=2, reference_band=1)
    # the inputs are left as they were: the streamed composites pass views of their strip
    np.testing.assert_array_equal(values, given[0])
    np.testing.assert_array_equal(clear, given[1])

    usable = clear & np.isfinite(values).all(axis=1)
    ordered = np.sort(np.where(usable[:, None], values, np.nan), axis=0)
    n = usable.sum(axis=0)
    rows, cols = np.indices(n.shape)
    low = ordered[np.clip((n - 1) // 2, 0, None), :, rows, cols]  # (H, W, B)
    high = ordered[np.clip(n // 2, 0, n_dates - 1), :, rows, cols]
    expected = np.moveaxis(np.float32(0.5) * (low + high), -1, 0)
    expected[:, n < 2] = np.nan
    np.testing.assert_array_equal(median, expected)
    np.testing.assert_array_equal(count, n)
    assert (index[n < 2] == -1).all()
    picked = values[index, 1, rows, cols]
    assert (usable[index, rows, cols] | (n < 2)).all()
    best = np.nanmin(np.abs(np.where(usable, values[:, 1], np.nan) - median[1]), axis=0)
    np.testing.assert_array_equal(np.abs(picked - median[1])[n >= 2], best[n >= 2])
