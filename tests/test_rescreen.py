"""The temporal screen of a monitoring run from the last run's verdicts (`core.rescreen`): the
same answer to the bit as screening every date, on series built to trip every rule of the screen
(single spikes, spikes beside haze, cloudy pairs, shadows, first and last observations)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from changedet.config import Config
from changedet.core.rescreen import REACH, KeptScreen, keep_screen, kept_screen
from changedet.core.timeseries import screened_dates

CONFIG = Config()


def _series(rng: np.random.Generator, n_t: int, clear_p: float) -> tuple[dict, np.ndarray]:
    """(blue, swir16) (T, 12, 16) with steps, spikes, pairs and dips, and a clear mask."""
    shape = (n_t, 12, 16)
    ground = rng.uniform(0.05, 0.3, shape[1:]).astype(np.float32)
    blue = np.broadcast_to(ground, shape).copy()
    blue += rng.normal(0, 0.004, shape).astype(np.float32)
    roof = rng.random(shape[1:]) < 0.2  # a step: a new roof from some date on
    blue[rng.integers(1, n_t) :, roof] += np.float32(0.1)
    blue[rng.random(shape) < 0.08] += np.float32(0.15)  # clouds and haze SCL missed
    both = rng.random(shape) < 0.03  # a cloud on two dates in a row
    blue[both] += np.float32(0.12)
    blue[1:][both[:-1]] += np.float32(0.12)
    swir = blue * np.float32(1.3)
    swir[rng.random(shape) < 0.06] *= np.float32(0.5)  # shadows SCL missed
    clear = rng.random(shape) < clear_p
    clear[:, 0, 0] = False  # a pixel never seen
    return {"blue": blue, "swir16": swir}, clear


def _screen(bands: Mapping[str, np.ndarray], clear: np.ndarray, trailing: bool) -> np.ndarray:
    out = screened_dates(bands, clear, CONFIG, trailing=trailing)
    assert out is not None
    return out


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("trailing", [True, False])
def test_the_screen_from_kept_verdicts_is_the_screen_of_every_date(
    seed: int, trailing: bool
) -> None:
    """A series the last run saw up to date `same`, then new or changed dates: the kept
    verdicts and the screen of a window give every date's verdicts exactly."""
    rng = np.random.default_rng(seed)
    n_t = 70
    bands, clear = _series(rng, n_t, clear_p=0.75)
    same = int(rng.integers(40, n_t))
    # the last run's series: the same first `same` dates, then others (or fewer)
    old_bands = {b: v[: same + 3].copy() for b, v in bands.items()}
    old_clear = clear[: same + 3].copy()
    for v in old_bands.values():
        v[same:] += np.float32(0.2)
    old = _screen(old_bands, old_clear, trailing)
    kept = KeptScreen(same, tuple(np.flatnonzero(old[t]) for t in range(same)))
    expected = _screen(bands, clear, trailing)

    start = kept.window_start(clear)
    assert 0 < start < same - 2 * REACH  # a window, not every date
    window = {b: v[start:] for b, v in bands.items()}
    screened = _screen(window, clear[start:], trailing)
    observed = clear[start:]
    got = kept.combine(screened, observed, clear, start, slice(0, clear.shape[1]), 16)
    assert got is not None
    np.testing.assert_array_equal(got, expected)
    assert expected[:same].any() and expected[start:].any()  # the rules did fire


def test_a_pixel_seen_too_rarely_is_screened_over_every_date() -> None:
    """A pixel without 2 x REACH clear observations before the changed dates: the window
    reaches the first date, or the combination declines (the caller screens every date)."""
    rng = np.random.default_rng(5)
    bands, clear = _series(rng, 60, clear_p=0.8)
    clear[:, 3, 4] = False
    clear[::6, 3, 4] = True  # 10 observations in 60 dates
    same = 55
    kept = KeptScreen(same, tuple(np.zeros(0, np.int64) for _ in range(same)))
    assert kept.window_start(clear) == 0
    screened = _screen({b: v[30:] for b, v in bands.items()}, clear[30:], True)
    assert kept.combine(screened, clear[30:], clear, 30, slice(0, 12), 16) is None


class _Arrays:
    def __init__(self) -> None:
        self.entries: dict[str, dict[str, np.ndarray]] = {}

    def get_arrays(self, key: str) -> Mapping[str, np.ndarray] | None:
        return self.entries.get(key)

    def put_arrays(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        self.entries[key] = {k: np.array(v) for k, v in arrays.items()}


def test_kept_verdicts_are_found_by_the_dates_they_share() -> None:
    memo = _Arrays()
    spikes = [np.array([3, 9]), np.zeros(0, np.int64), np.array([1])]
    keep_screen(memo, "screen-x", ["a", "b", "c"], spikes)
    found = kept_screen(memo, "screen-x", ["a", "b", "z", "d"])
    assert found is not None and found.same == 2
    assert [s.tolist() for s in found.spikes] == [[3, 9], []]
    assert kept_screen(memo, "screen-x", ["q", "b"]) is None  # nothing shared
    assert kept_screen(memo, "screen-other", ["a"]) is None
    memo.entries["screen-x"]["offsets"] = np.zeros(2, np.int64)  # damaged: not used
    assert kept_screen(memo, "screen-x", ["a", "b"]) is None
