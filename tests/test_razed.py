"""A structure razed again is reported vanished, on real spectra: semi-real OSCD series in
which some labelled changes are undone later (`make_oscd_series(razed_share=...)`)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest

from changedet.lab.oscd import OSCDCity, load_city
from changedet.lab.score import match_structures
from changedet.lab.series import (
    OSCDSeries,
    _ground,
    _truth_geojson,
    detect_series,
    load_truth,
    make_oscd_series,
    truth_labels,
)

CITY = "nantes"  # 37 labelled changes; the series runs in about 20 s
MONTHS = 14


@pytest.fixture(scope="module")
def city(oscd_root: Path) -> OSCDCity:
    return load_city(oscd_root, CITY, with_label=True)


@pytest.fixture(scope="module")
def razed(city: OSCDCity) -> OSCDSeries:
    return make_oscd_series(city, seed=0, months=MONTHS, scenes_per_month=2, razed_share=0.5)


def _month(series: OSCDSeries, day: date) -> int:
    return (day.year - series.start.year) * 12 + day.month - series.start.month


def test_razing_comes_after_confirmation_and_the_ground_shows_it(
    razed: OSCDSeries, city: OSCDCity, tmp_path: Path
) -> None:
    gone = [r for r in razed.truth if r.razed is not None]
    assert len(gone) >= 5
    for r in gone:
        assert r.razed is not None
        assert _month(razed, r.appeared) + 2 <= _month(razed, r.razed) <= MONTHS - 4
    # The appearance plan is the one without razing; without it nothing is razed.
    plain = make_oscd_series(city, seed=0, months=MONTHS, scenes_per_month=2)
    assert [r.appeared for r in plain.truth] == [r.appeared for r in razed.truth]
    assert all(r.razed is None for r in plain.truth)
    # Standing, the region shows the second real date; razed, the first again.
    r = max(gone, key=lambda r: r.n_pixels)
    assert r.razed is not None
    mask = razed.regions == r.region_id
    standing = _ground(razed, r.razed - timedelta(days=1))[0][:, mask].mean(axis=1)
    cleared = _ground(razed, r.razed)[0][:, mask].mean(axis=1)
    after, before = (
        np.nanmean(razed.after[:, mask], axis=1),
        np.nanmean(razed.before[:, mask], axis=1),
    )
    assert np.abs(after - before).max() > 0.03  # a change to undo
    assert np.abs(standing - after).max() < 0.03 and np.abs(cleared - before).max() < 0.03
    # truth.geojson keeps the razed dates.
    path = tmp_path / "truth.geojson"
    path.write_text(json.dumps(_truth_geojson(razed)))
    assert [t.razed for t in load_truth(path, razed.grid)] == [t.razed for t in razed.truth]


def test_a_razed_structure_is_reported_vanished_and_the_others_are_not(
    razed: OSCDSeries,
) -> None:
    """Measured (default config): 9 of 9 matched razed changes vanished, within 18 days of the
    razing; none of the 23 matched changes left standing."""
    analysis = detect_series(razed)
    ledger = analysis.ledger
    found = match_structures(
        ledger.structures, ledger.footprints, razed.truth, truth_labels(razed.truth, razed.grid)
    )
    structures = ledger.structures
    gone = [(structures[s], razed.truth[t]) for s, t in found.pairs if razed.truth[t].razed]
    kept = [structures[s] for s, t in found.pairs if not razed.truth[t].razed]
    assert len(gone) >= 5 and len(kept) >= 10
    vanished = [(s, t) for s, t in gone if s.status == "vanished"]
    assert len(vanished) >= 0.8 * len(gone)
    for s, t in vanished:
        assert s.vanished_after is not None and t.razed is not None
        assert abs((s.vanished_after - t.razed).days) <= 31  # the month it went
    assert sum(s.status == "vanished" for s in kept) <= 0.05 * len(kept)


def test_rubble_stays_unlike_both_the_structure_and_the_old_ground(
    razed: OSCDSeries, city: OSCDCity
) -> None:
    # bench/vanish.py --rubble: from the day of razing a site shows a mix of the two real dates,
    # darkened, the same on every date (the season and shadows then act on it as on any ground).
    from dataclasses import replace

    from changedet.lab.series import _rubble

    rubble = replace(razed, razed_as="rubble")
    gone = next(r for r in razed.truth if r.razed is not None)
    where = (razed.regions == gone.region_id) & np.isfinite(razed.after).all(axis=0)
    ground = razed.after.astype(np.float32)
    before_razing = _rubble(rubble, gone.razed - timedelta(days=1), ground)
    np.testing.assert_array_equal(before_razing[:, where], ground[:, where])
    first, second = (
        _rubble(rubble, day, ground)[:, where]
        for day in (gone.razed, gone.razed + timedelta(days=40))
    )
    np.testing.assert_array_equal(first, second)
    old, new = razed.before[:, where], razed.after[:, where]
    low = np.float32(0.85) * np.minimum(0.2 * new + 0.8 * old, 0.5 * new + 0.5 * old)
    high = np.float32(0.85) * np.maximum(0.2 * new + 0.8 * old, 0.5 * new + 0.5 * old)
    assert (first >= low - 1e-5).all() and (first <= high + 1e-5).all()
    assert not np.allclose(first, old) and not np.allclose(first, new)
    with pytest.raises(ValueError, match="razed_as"):
        make_oscd_series(city, razed_as="ash")
