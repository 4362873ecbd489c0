"""Known-answer tests of the structure ledger on small synthetic change objects."""

from __future__ import annotations

import pickle
from dataclasses import replace
from datetime import date

import numpy as np
import pytest

from changedet.config import KindConfig, TrackConfig
from changedet.core.change import BAND_CHANGE_UNOBSERVED
from changedet.core.kinds import roof_periods, roof_stood
from changedet.core.ledger import Ledger, anchor_cell, build_ledger, place_id
from changedet.core.periods import make_periods
from changedet.core.timeseries import (
    SAME_CHANGE_BASELINE_DATES,
    _building_footprints,
    _lasting_change_codes,
)
from changedet.core.track import (
    SAME_CHANGE_Z,
    PeriodHead,
    PeriodObservation,
    footprint_geometry,
    rasterize_objects,
)
from changedet.models import ChangeMap, ChangeObject, Composite, Grid

GRID = Grid.from_origin("EPSG:32639", 500_000.0, 3_950_000.0, 10.0, 40, 40)
PERIODS = make_periods(date(2023, 1, 1), date(2023, 10, 31), "month")  # 10 months
CFG = TrackConfig()


def box(r0: int, c0: int, h: int, w: int) -> np.ndarray:
    m = np.zeros(GRID.shape, dtype=bool)
    m[r0 : r0 + h, c0 : c0 + w] = True
    return m


A = box(5, 5, 3, 4)  # 12 px
B = box(20, 20, 4, 4)  # 16 px
C = box(5, 10, 3, 4)  # beside A with a one-pixel gap


def obj(mask: np.ndarray, label: int = 1, confidence: float = 0.8) -> ChangeObject:
    geom = footprint_geometry(mask, GRID)
    n = int(mask.sum())
    return ChangeObject(label, geom, n * 100.0, n, confidence, 4.0, 0.9)


def series(
    presence: dict[int, list[np.ndarray]],
    *,
    cloudy: tuple[int, ...] = (),
    n: int = len(PERIODS),
) -> list[PeriodObservation]:
    """Period 0 is the baseline; presence maps period index → masks of objects seen then."""
    out = []
    for k in range(n):
        observed = np.zeros(GRID.shape, bool) if k in cloudy else np.ones(GRID.shape, bool)
        objs = tuple(obj(m, i + 1) for i, m in enumerate(presence.get(k, [])))
        out.append(
            PeriodObservation(PERIODS[k], objs, observed, scene_ids=(f"S{k}",), baseline=(k == 0))
        )
    return out


def run(observations: list[PeriodObservation], **kw: object):  # type: ignore[no-untyped-def]
    return build_ledger(observations, grid=GRID, config=CFG, min_area_m2=400.0, **kw)


def test_two_buildings_counted_with_first_seen_intervals() -> None:
    pres = {k: [A] for k in range(3, 10)}
    for k in range(6, 10):
        pres[k] = [A, B]
    ledger = run(series(pres))
    conf = ledger.confirmed
    assert len(conf) == 2 and not ledger.candidates
    a = next(s for s in conf if s.area_m2 == 1200.0)
    b = next(s for s in conf if s.area_m2 == 1600.0)
    # Absent in period 2 (all clear), present in 3 → [start of 2, end of 3).
    assert (a.first_seen_start, a.first_seen_end) == (PERIODS[2].start, PERIODS[3].end)
    assert (b.first_seen_start, b.first_seen_end) == (PERIODS[5].start, PERIODS[6].end)
    assert a.source_scenes[:2] == ("S2", "S3")
    assert a.n_clear_obs == 7 and b.n_clear_obs == 4
    cum = [c.cumulative for c in ledger.counts]
    assert cum == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert [c.new_confirmed for c in ledger.counts] == [0, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    # The high bound counts a structure from the period its interval opens (it may stand then).
    assert [c.cumulative_high for c in ledger.counts] == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert all(c.cumulative_low == c.cumulative for c in ledger.counts)
    # Footprint raster matches the structures.
    assert (ledger.footprints > 0).sum() == 28
    idx = ledger.structures.index(a) + 1
    assert np.array_equal(ledger.footprints == idx, A)
    ev = [(e["period"], e["event"]) for e in ledger.events if e["structure_id"] == a.id]
    assert ev == [("2023-04", "new"), ("2023-05", "confirmed")]


class _Stream:
    """Observations handed out one at a time (an `ObservationStream`), in a shuffled order."""

    def __init__(self, observations: list[PeriodObservation], order: list[int]) -> None:
        self.listed = [observations[i] for i in order]
        self.taken: list[int] = []

    @property
    def heads(self) -> list[PeriodHead]:
        return [PeriodHead.of(o) for o in self.listed]

    def take(self, k: int) -> PeriodObservation:
        self.taken.append(k)
        return self.listed[k]


def test_a_stream_of_observations_is_taken_once_each_in_date_order() -> None:
    pres = {k: [A] for k in range(3, 10)}
    for k in range(6, 10):
        pres[k] = [A, B]
    observations = series(pres)
    order = [4, 0, 9, 2, 7, 1, 3, 8, 6, 5]
    stream = _Stream(observations, order)
    streamed, listed = run(stream), run(observations)  # type: ignore[arg-type]
    assert stream.taken == [order.index(k) for k in range(len(observations))]
    assert streamed.structures == listed.structures and streamed.counts == listed.counts
    assert streamed.events == listed.events and len(streamed.confirmed) == 2


def test_cloudy_period_widens_interval_and_high_bound() -> None:
    pres = {k: [B] for k in range(5, 10)}
    ledger = run(series(pres, cloudy=(4,)))
    (b,) = ledger.confirmed
    # Period 4 unobserved: the last clear absence is period 3.
    assert (b.first_seen_start, b.first_seen_end) == (PERIODS[3].start, PERIODS[5].end)
    highs = [c.cumulative_high for c in ledger.counts]
    assert highs[3] == 1 and highs[4] == 1
    # Best estimate spreads b over the periods it may have appeared in (4 unobserved, 5 seen):
    # 0.5 at period 4 rounds half up; the low bound stays with what was seen.
    assert [c.cumulative for c in ledger.counts][3:7] == [0, 1, 1, 1]
    assert ledger.counts[4].cumulative_low == 0 and ledger.counts[4].new_confirmed == 0


def test_count_spread_over_two_cloudy_periods() -> None:
    pres = {k: [B] for k in range(6, 10)}
    ledger = run(series(pres, cloudy=(4, 5)))
    # b may have appeared in period 4, 5 or 6: a third each → 0.33, 0.67, 1.0.
    assert [c.cumulative for c in ledger.counts][3:8] == [0, 0, 1, 1, 1]
    assert [c.new_confirmed for c in ledger.counts][3:8] == [0, 0, 0, 1, 0]
    assert ledger.counts[4].clear_fraction == 0.0 and ledger.counts[3].clear_fraction == 1.0


def test_single_period_noise_is_a_candidate_never_counted() -> None:
    pres = {k: [A] for k in range(2, 10)}
    pres[4] = [A, B]  # B only once
    ledger = run(series(pres))
    assert len(ledger.confirmed) == 1
    (cand,) = ledger.candidates
    assert cand.area_m2 == 1600.0 and cand.status == "dropped" and not cand.confirmed
    assert ledger.counts[-1].cumulative == 1 and ledger.counts[-1].cumulative_high == 1
    assert any(e["event"] == "dropped" and e["structure_id"] == cand.id for e in ledger.events)


def test_last_period_candidate_is_pending_in_high_bound_only() -> None:
    pres = {k: [A] for k in range(2, 10)}
    pres[9] = [A, B]
    ledger = run(series(pres))
    last = ledger.counts[-1]
    assert last.cumulative == 1 and last.cumulative_high == 2
    assert len(ledger.candidates) == 1 and ledger.candidates[0].status == "active"


BORN_WITH = np.array([2.0, 1.0, -1.0, 3.0, 0.0, 0.0])  # per-band change, noise units


def _faint_candidate(later: np.ndarray | None) -> list[PeriodObservation]:
    """A seen once in period 2 with the change BORN_WITH, then no object and a score below
    continue_z; each later period's per-band change at A is `later` (None: no change codes)."""
    faint = np.where(A, CFG.continue_z - 1.0, -2.0).astype(np.float32)
    out = []
    for k, o in enumerate(series({2: [A]})):
        change = BORN_WITH if k == 2 else later
        if k < 2 or change is None:
            out.append(replace(o, score=faint) if k > 2 else o)
            continue
        codes = np.zeros((len(BORN_WITH), *GRID.shape), np.int8)
        codes[:, A] = np.round(change * 8).astype(np.int8)[:, None]
        out.append(replace(o, score=faint, band_change=codes))
    return out


@pytest.mark.parametrize(
    ("later", "kept"),
    [
        (BORN_WITH, True),  # the change it was first seen with, all of it
        (0.75 * BORN_WITH, True),  # above the default share, 0.7
        (0.6 * BORN_WITH, False),  # below it
        (np.array([-1.0, 2.0, 0.0, 0.0, 1.0, 1.0]), False),  # another change (orthogonal)
        (np.zeros(6), False),  # the change gone
        (None, False),  # no codes: the score alone decides
    ],
)
def test_a_candidate_that_keeps_its_change_is_present_though_its_score_fades(
    later: np.ndarray | None, kept: bool
) -> None:
    """A faint candidate whose score falls below continue_z is still present where its pixels
    keep the change vector it was born with (a noisy month lowers every z, not the change):
    present in every later period, it is confirmed; otherwise it is dropped."""
    (a,) = run(_faint_candidate(later)).structures
    assert a.confirmed is kept and a.status == ("active" if kept else "dropped")
    (off,) = build_ledger(
        _faint_candidate(later),
        grid=GRID,
        config=replace(CFG, same_change=0.0),
        min_area_m2=400.0,
    ).structures
    assert not off.confirmed and off.status == "dropped"


def test_a_lasting_change_must_stand_out_from_its_own_noise() -> None:
    """A vector too short for its pixel count is noise, however well it repeats."""
    length = float(np.linalg.norm(BORN_WITH))
    needed = SAME_CHANGE_Z * 1.2533 / np.sqrt(int(A.sum()))  # 12 px
    weak = BORN_WITH * (0.9 * needed / length)
    strong = BORN_WITH * (1.3 * needed / length)
    for born, kept in ((weak, False), (strong, True)):
        obs = _faint_candidate(born)
        codes = obs[2].band_change
        assert codes is not None
        codes[:, A] = np.round(born * 8).astype(np.int8)[:, None]
        (a,) = run(obs).structures
        assert a.confirmed is kept


def test_change_codes_are_kept_only_where_the_baseline_rests_on_enough_dates() -> None:
    """A baseline seen on few dates repeats its own noise in every later period: there a
    lasting change is no evidence, and the codes say unobserved. Off, none are kept."""
    codes = np.ones((2, *GRID.shape), np.int8)
    empty = np.zeros(GRID.shape, np.float32)
    cmap = ChangeMap(GRID, empty, empty, empty > 0, 8.0, band_change=codes)
    count = np.full(GRID.shape, SAME_CHANGE_BASELINE_DATES, np.uint16)
    count[:10] = SAME_CHANGE_BASELINE_DATES - 1
    nan = np.full((2, *GRID.shape), np.nan, np.float32)
    baseline = Composite(GRID, ("red", "nir"), PERIODS[0], nan, count, count.astype(np.int32))
    kept = _lasting_change_codes(cmap, baseline)
    assert kept is not None
    assert (kept[:, :10] == BAND_CHANGE_UNOBSERVED).all() and (kept[:, 10:] == 1).all()
    # off, the change map carries no codes (`detect_change(..., with_band_change=False)`)
    off = replace(cmap, band_change=None)
    assert _lasting_change_codes(off, baseline) is None


def test_confirmed_structure_that_disappears_is_flagged_vanished() -> None:
    pres = {k: [A] for k in range(2, 6)}
    ledger = run(series(pres))
    (a,) = ledger.structures
    assert a.confirmed and a.status == "vanished"
    assert a.vanished_after == PERIODS[5].end
    (ev,) = [e for e in ledger.events if e["event"] == "vanished"]
    assert ev["period"] == PERIODS[8].label  # third clear absence in a row
    assert ledger.counts[-1].cumulative == 1  # it was built: still counted


def test_a_structure_absent_lately_but_not_yet_vanished_says_since_when() -> None:
    """Razed two months before the run's end, a building read "active, 0 vanished"."""
    (gone,) = run(series({k: [A] for k in range(2, 8)})).structures  # absent in 8 and 9
    assert gone.confirmed and gone.status == "active"
    assert gone.absent_since == PERIODS[8].start
    (once,) = run(series({k: [A] for k in range(2, 9)})).structures  # absent in 9 alone: noise
    assert once.status == "active" and once.absent_since is None
    (standing,) = run(series({k: [A] for k in range(2, 10)})).structures
    assert standing.status == "active" and standing.absent_since is None
    (vanished,) = run(series({k: [A] for k in range(2, 6)})).structures
    assert vanished.status == "vanished" and vanished.absent_since is None
    # Faint between (its place still held change): absent since the absence began, not since
    # it was last an object; faint again at the end, it stands.
    faint = np.where(A, CFG.absent_below_z, -2.0).astype(np.float32)
    gone_later = np.where(A, CFG.absent_below_z - 0.5, -2.0).astype(np.float32)

    def scored(scores: dict[int, np.ndarray]) -> list[PeriodObservation]:
        obs = series({k: [A] for k in range(2, 6)})
        return [replace(o, score=scores[k]) if k in scores else o for k, o in enumerate(obs)]

    (faded,) = run(scored({6: faint, 7: faint, 8: gone_later, 9: gone_later})).structures
    assert faded.status == "active" and faded.absent_since == PERIODS[8].start
    (back,) = run(scored({6: gone_later, 7: gone_later, 8: faint, 9: faint})).structures
    assert back.status == "active" and back.absent_since is None


def test_a_change_seen_in_two_periods_then_gone_is_a_transient_not_a_structure() -> None:
    """Confirmed in periods 2 and 3, gone in the three after: present in 2 of its 5 clear
    periods, so its confidence (0.8 x 2/5) is under min_confidence: a dropped candidate, never
    counted. Four periods standing (0.8 x 4/7) is a structure that vanished."""
    pres = {k: [A] for k in (2, 3)}
    ledger = run(series(pres))
    (a,) = ledger.structures
    assert not a.confirmed and a.status == "dropped" and a.vanished_after is None
    assert a.confidence < CFG.min_confidence
    assert [e["event"] for e in ledger.events] == ["new", "dropped"]
    assert ledger.counts[-1].cumulative == 0
    # the same with the floor off: confirmed, then vanished, as before it existed
    kept = build_ledger(
        series(pres), grid=GRID, config=replace(CFG, min_confidence=0.0), min_area_m2=400.0
    )
    (b,) = kept.structures
    assert b.confirmed and b.status == "vanished" and kept.counts[-1].cumulative == 1
    (stood,) = run(series({k: [A] for k in range(2, 6)})).structures
    assert stood.confirmed and stood.status == "vanished"


def test_a_faint_structure_does_not_vanish() -> None:
    """Without objects after period 5, a confirmed structure whose place keeps scoring at
    least absent_below_z (a wet winter fades it) stays active; scoring below it, it vanishes."""
    pres = {k: [A] for k in range(2, 6)}

    def fading(level: float) -> list[PeriodObservation]:
        score = np.where(A, level, -2.0).astype(np.float32)
        return [replace(o, score=score) if k >= 6 else o for k, o in enumerate(series(pres))]

    (faint,) = run(fading(CFG.absent_below_z)).structures
    assert faint.confirmed and faint.status == "active"
    (gone,) = run(fading(CFG.absent_below_z - 0.5)).structures
    assert gone.status == "vanished" and gone.vanished_after == PERIODS[5].end


def test_short_gap_does_not_vanish() -> None:
    pres = {k: [A] for k in (2, 3, 4, 7, 8, 9)}  # absent in 5 and 6 only
    ledger = run(series(pres))
    (a,) = ledger.structures
    assert a.status == "active" and a.confirmed


def test_persistent_split_raises_high_bound() -> None:
    left, right = box(20, 20, 4, 3), box(20, 24, 4, 3)
    pres = {2: [box(20, 20, 4, 7)]}
    for k in range(3, 10):
        pres[k] = [left, right]
    ledger = run(series(pres))
    assert len(ledger.confirmed) == 1
    assert ledger.counts[-1].cumulative == 1 and ledger.counts[-1].cumulative_high == 2


def test_new_building_merged_into_old_blob_is_a_new_structure() -> None:
    pres = {k: [A] for k in range(2, 10)}
    merged = A | C | box(5, 9, 3, 1)  # C touches A through the gap column
    for k in range(6, 10):
        pres[k] = [merged]
    ledger = run(series(pres))
    assert len(ledger.confirmed) == 2
    new = [s for s in ledger.confirmed if s.first_seen_end == PERIODS[6].end]
    assert len(new) == 1 and new[0].area_m2 >= 1200.0
    assert ledger.counts[-1].cumulative == 2


def test_ground_seen_in_part_in_its_first_period_is_one_structure() -> None:
    """Ground works built within a period show in that month's median composite only in part:
    the rest, whole from the next period on, is the same structure, not a neighbour. A
    neighbour that appears after the place was seen clear and unchanged is a new one."""
    whole = A | C | box(5, 9, 3, 1)
    ledger = run(series({3: [A], **{k: [whole] for k in range(4, 10)}}))
    (a,) = ledger.confirmed
    assert a.area_m2 == 2700.0 and a.first_seen_end == PERIODS[3].end
    neighbour = run(series({3: [A], 4: [A], **{k: [whole] for k in range(5, 10)}}))
    assert len(neighbour.confirmed) == 2
    # Beside a hall, ground seen a period after it (its apron, its berms) is a structure of its own.
    roof = {"spectral_flattening": 0.5}
    hall = replace(obj(A), evidence=roof)
    site = {3: [hall], **{k: [replace(obj(whole), evidence=roof)] for k in range(4, 10)}}
    assert len(run(_observations(site)).confirmed) == 2


def test_small_growth_stays_with_its_structure() -> None:
    pres = {k: [A] for k in range(2, 5)}
    for k in range(5, 10):
        pres[k] = [A | box(8, 5, 1, 4)]  # one more row: 4 px of growth, below the MMU
    ledger = run(series(pres))
    (a,) = ledger.structures
    assert a.confirmed and a.area_m2 == 1600.0


def test_a_faint_edge_seen_in_two_periods_is_part_of_the_footprint() -> None:
    """A structure present in eight periods whose edge row shows in two of them: the edge is
    part of its footprint (two periods confirm a structure, and so a pixel of it); in one,
    it is not."""
    edge = box(8, 5, 1, 4)
    twice = {k: [A | edge] if k in (4, 7) else [A] for k in range(2, 10)}
    (a,) = run(series(twice)).structures
    assert a.area_m2 == 1600.0
    once = {k: [A | edge] if k == 4 else [A] for k in range(2, 10)}
    (a,) = run(series(once)).structures
    assert a.area_m2 == 1200.0


def test_noise_before_a_building_does_not_take_its_date() -> None:
    pres = {2: [B]}  # one-off noise where B will stand
    for k in range(6, 10):
        pres[k] = [B]
    ledger = run(series(pres))
    (b,) = ledger.confirmed
    assert b.first_seen_end == PERIODS[6].end and b.first_seen_start == PERIODS[5].start
    assert len(ledger.candidates) == 1


def test_ids_are_stable_on_rerun_and_when_extended() -> None:
    pres = {k: [A] for k in range(2, 10)}
    for k in range(5, 10):
        pres[k] = [A, B]
    full = run(series(pres))
    again = run(series(pres))
    shorter = run(series(pres, n=9))
    assert [s.id for s in full.structures] == [s.id for s in again.structures]
    assert [s.id for s in shorter.structures] == [s.id for s in full.structures]
    assert len({s.id for s in full.structures}) == 2
    assert all(s.id.startswith("39N-500") for s in full.structures)  # named by where they stand
    # Extending can only confirm more, never change what was known about existing ids.
    short_by_id = {s.id: s for s in shorter.structures}
    for s in full.structures:
        assert s.first_seen_start == short_by_id[s.id].first_seen_start
        assert s.first_seen_end == short_by_id[s.id].first_seen_end


def test_label_image_input_matches_rasterised_polygons() -> None:
    objs = (obj(A, 7), obj(B, 3))
    labels = np.zeros(GRID.shape, np.int32)
    labels[A], labels[B] = 7, 3
    raster = rasterize_objects(objs, GRID)
    assert np.array_equal(raster > 0, A | B)
    obs_poly = [
        PeriodObservation(PERIODS[k], objs if k else (), np.ones(GRID.shape, bool))
        for k in range(5)
    ]
    obs_lab = [
        PeriodObservation(
            PERIODS[k], objs if k else (), np.ones(GRID.shape, bool), labels=labels if k else None
        )
        for k in range(5)
    ]
    a, b = run(obs_poly), run(obs_lab)
    assert [s.id for s in a.structures] == [s.id for s in b.structures]
    assert np.array_equal(a.footprints, b.footprints)


def test_observed_shape_mismatch_is_refused() -> None:
    bad = [PeriodObservation(PERIODS[0], (), np.ones((3, 3), bool))]
    with pytest.raises(ValueError, match="observed shape"):
        run(bad)


def _on(grid: Grid, mask_on_grid: np.ndarray, row_off: int, col_off: int) -> np.ndarray:
    """`mask_on_grid` (on GRID) placed on a larger grid whose origin is (row_off, col_off) pixels
    up-left of GRID's: the same ground, another AOI outline."""
    out = np.zeros(grid.shape, bool)
    out[row_off : row_off + GRID.height, col_off : col_off + GRID.width] = mask_on_grid
    return out


def test_ids_name_the_place_whatever_the_grid() -> None:
    """The same structures seen on a larger grid (another AOI drawn around them) get the same
    ids: they are named by where they stand on the zone's lattice, not by the run."""
    pres = {k: [A] for k in range(2, 8)}
    pres.update({k: [A, B] for k in range(5, 8)})
    small = run(series(pres, n=8))
    big_grid = Grid.from_origin("EPSG:32639", 500_000.0 - 70.0, 3_950_000.0 + 130.0, 10.0, 57, 61)
    big_obs = []
    for o in series(pres, n=8):
        objs = tuple(
            ChangeObject(b.label, b.geometry, b.area_m2, b.n_pixels, b.confidence, 4.0, 0.9)
            for b in o.objects
        )
        big_obs.append(
            PeriodObservation(
                o.period, objs, _on(big_grid, o.observed, 13, 7), o.scene_ids, baseline=o.baseline
            )
        )
    big = build_ledger(big_obs, grid=big_grid, config=CFG, min_area_m2=400.0)
    assert sorted(s.id for s in small.structures) == sorted(s.id for s in big.structures)
    # A (rows 5-7, cols 5-8 of GRID) stands in the 150 m cell x 499950..500100,
    # y 3949800..3949950: its id is the centre of that cell.
    a = next(s for s in small.structures if s.area_m2 == 1200.0)
    assert a.id == "39N-500025-3949875"
    assert place_id((3333, 26332), GRID) == "39N-500025-3949875"


def test_a_structure_built_where_one_vanished_gets_its_own_id() -> None:
    pres = {k: [A] for k in range(1, 4)}  # built, then gone from period 4 (vanished at 6)
    pres.update({k: [A] for k in range(7, 10)})  # a new one on the same place
    ledger = run(series(pres))
    first, second = ledger.structures
    assert first.status == "vanished" and second.status == "active"
    assert second.id == f"{first.id}-2" or first.id == f"{second.id}-2"


def test_within_keeps_and_counts_only_structures_anchored_inside() -> None:
    pres = {k: [A, B] for k in range(2, 10)}
    ledger = run(series(pres))
    assert ledger.counts[-1].cumulative == 2
    inside = box(0, 0, 15, 15)  # holds A, not B
    mine = ledger.within(inside)
    (a,) = mine.structures
    assert a.area_m2 == 1200.0 and mine.counts[-1].cumulative == 1
    assert set(np.unique(mine.footprints)) == {0, 1}
    assert all(e["structure_id"] == a.id for e in mine.events)


def test_within_keeps_a_known_structure_whose_anchor_moved_out() -> None:
    """An AOI's known structure (`known_pixels`: where it stands inside the AOI) stays the AOI's when
    its outline reaches out and its anchor pixel lies outside; others still need their anchor."""
    pres = {k: [A, B] for k in range(2, 10)}
    ledger = run(series(pres))
    inside = box(0, 0, 15, 15) & ~box(6, 0, 10, 30)  # A's anchor (its middle row) is out
    assert ledger.within(inside).structures == ()
    known = A & inside  # A was reported here before: its rows inside
    mine = ledger.within(inside, known)
    (a,) = mine.structures  # B, anchored outside and on no known pixel, stays out
    assert a.area_m2 == 1200.0 and mine.counts[-1].cumulative == 1


def test_change_too_weak_for_an_object_is_not_taken_for_absence() -> None:
    """A place scoring at least absent_below_z in a clear period without an object there may
    already hold the structure: the first-seen interval opens before that period, not after it.
    A score just below it is absence."""
    pres = {k: [B] for k in range(6, 10)}
    quiet = np.full(GRID.shape, -2.0, np.float32)  # unchanged ground

    def with_scores(level: float) -> list[PeriodObservation]:
        weak = np.where(B, level, -2.0).astype(np.float32)
        return [
            replace(o, score=weak if k in (4, 5) else quiet) if k > 0 else o
            for k, o in enumerate(series(pres))
        ]

    (b,) = run(with_scores(CFG.absent_below_z)).confirmed
    assert (b.first_seen_start, b.first_seen_end) == (PERIODS[3].start, PERIODS[6].end)
    (below,) = run(with_scores(CFG.absent_below_z - 0.5)).confirmed
    assert below.first_seen_start == PERIODS[5].start
    (plain,) = run(series(pres)).confirmed  # no scores: absent in period 5
    assert plain.first_seen_start == PERIODS[5].start


def _pieces(flattening: float | None = None) -> dict[int, list[ChangeObject]]:
    """A and C (a one-pixel gap apart) seen together from period 3 on."""
    evidence = {} if flattening is None else {"spectral_flattening": flattening}
    a = replace(obj(A, 1), evidence=evidence)
    c = replace(obj(C, 2), evidence=evidence)
    return {k: [a, c] for k in range(3, 10)}


def _observations(presence: dict[int, list[ChangeObject]]) -> list[PeriodObservation]:
    return [replace(o, objects=tuple(presence.get(k, ()))) for k, o in enumerate(series({}))]


def test_ground_pieces_first_seen_together_close_by_are_one_site() -> None:
    """Two ground pieces 10 m apart that appear in the same period are one site; with
    site_gap_px = 0, or when they appear in different periods, they stay two structures."""
    (site,) = run(_observations(_pieces())).confirmed
    assert site.area_m2 == 2400.0
    apart = build_ledger(
        _observations(_pieces()),
        grid=GRID,
        config=replace(CFG, site_gap_px=0),
        min_area_m2=400.0,
    )
    assert sorted(s.area_m2 for s in apart.confirmed) == [1200.0, 1200.0]
    a, c = _pieces()[3]
    later = {k: [a] if k < 5 else [a, c] for k in range(3, 10)}
    assert len(run(_observations(later)).confirmed) == 2


def test_roof_like_pieces_close_by_stay_apart() -> None:
    """Neighbouring halls that appear together are counted one by one."""
    roofs = run(_observations(_pieces(flattening=0.5))).confirmed
    assert sorted(s.area_m2 for s in roofs) == [1200.0, 1200.0]


def _grown_together(born_c: int, flattening: float | None = None) -> list[PeriodObservation]:
    """A from period 3, C from `born_c`, joined from the period after by A's growth (the
    one-pixel gap between them filled)."""
    a, c = _pieces(flattening)[3]
    joined = replace(obj(A | box(5, 9, 3, 1), 1), evidence=a.evidence)
    return _observations(
        {k: [a] if k < born_c else [a, c] if k == born_c else [joined, c] for k in range(3, 10)}
    )


def test_ground_pieces_a_period_apart_that_grow_together_are_one_site() -> None:
    """A ground piece seen a period after its neighbour (the rest of a site one month's
    composite showed in part), the two joined as they grow: one site, dated by the older
    piece. Two periods apart, or roof-like, they stay two structures."""
    (site,) = run(_grown_together(4)).confirmed
    assert site.area_m2 == 2700.0 and site.first_seen_end == PERIODS[3].end
    assert sorted(s.area_m2 for s in run(_grown_together(5)).confirmed) == [1200.0, 1500.0]
    assert len(run(_grown_together(4, flattening=0.5)).confirmed) == 2


# A's 150 m cell holds rows 5-19 and columns 0-9 of GRID.
D = box(10, 1, 2, 4)  # 8 px, in A's cell
E = box(10, 0, 4, 5)  # 20 px, in A's cell


@pytest.mark.parametrize(
    ("confirmed", "candidate"), [(A, D), (D, A), (E, A), (A, E)], ids=["A", "D", "E", "A'"]
)
def test_a_confirmed_structure_takes_the_plain_id_of_its_cell_before_a_candidate(
    confirmed: np.ndarray, candidate: np.ndarray
) -> None:
    """Whichever of two pieces of one id cell is only a passing candidate (seen once, gone
    since), the confirmed structure is named after the cell without a suffix."""
    pres: dict[int, list[np.ndarray]] = {k: [confirmed] for k in range(3, 10)}
    pres[2] = [candidate]
    ledger = run(series(pres))
    (kept,) = ledger.confirmed
    (passing,) = ledger.candidates
    assert kept.id == "39N-500025-3949875" and passing.id == f"{kept.id}-2"


@pytest.mark.parametrize(("larger", "smaller"), [(A, D), (E, A)], ids=["A>D", "E>A"])
def test_of_two_structures_in_one_cell_the_larger_takes_the_plain_id(
    larger: np.ndarray, smaller: np.ndarray
) -> None:
    pres = {k: [smaller] for k in range(2, 10)}  # the smaller one stands first
    pres.update({k: [smaller, larger] for k in range(5, 10)})
    ids = {s.area_m2: s.id for s in run(series(pres)).confirmed}
    assert ids[larger.sum() * 100.0] == "39N-500025-3949875"
    assert ids[smaller.sum() * 100.0] == "39N-500025-3949875-2"


def _straddling(k: int, trial: int) -> tuple[int, tuple[int, int]]:
    """A 4 x 7 px hall with `k` of its columns east of a cell border, on a grid moved by whole
    cells for each trial (other cells, other draws): (the eastern cell's x index, its cell)."""
    x0, y0 = 500_000.0 + 150.0 * trial, 3_950_000.0 + 150.0 * (7 * trial % 997)
    grid = Grid.from_origin("EPSG:32639", x0, y0, 10.0, 20, 20)
    hall = np.zeros(grid.shape, dtype=bool)
    # Rows 5-19 lie in one cell row; column 10 starts a cell.
    hall[6:10, 10 - (7 - k) : 10 + k] = True
    east = (500_100 + 150 * trial) // 150
    return east, anchor_cell(np.flatnonzero(hall), grid)


@pytest.mark.parametrize("k", [1, 3])
def test_the_id_cell_is_drawn_with_odds_of_the_pixels_it_holds(k: int) -> None:
    """A hall across a cell border is named after the cell east of it in about k/7 of 600
    placements: a few pixels over a border seldom move the id, and never always."""
    draws = [_straddling(k, t) for t in range(600)]
    east_share = np.mean([cell[0] == east for east, cell in draws])
    assert abs(east_share - k / 7) < 0.06


def test_a_column_crossing_a_cell_border_keeps_most_ids() -> None:
    """The hall moving east by one column (one pixel in seven changes cell) keeps its id in most
    placements: the odds move by a seventh, not over a threshold."""
    kept = np.mean([_straddling(1, t)[1] == _straddling(2, t)[1] for t in range(600)])
    assert kept > 0.8


class _PickledStates:
    """A `StateMemo` in memory that keeps copies, as the monitor's period cache does on disk."""

    def __init__(self) -> None:
        self.states: dict[str, bytes] = {}
        self.taken: list[str] = []

    def get_state(self, key: str) -> object | None:
        if key not in self.states:
            return None
        self.taken.append(key)
        return pickle.loads(self.states[key])

    def put_state(self, key: str, state: object) -> None:
        self.states[key] = pickle.dumps(state)

    def has_state(self, key: str) -> bool:
        return key in self.states


def _same_ledger(a: Ledger, b: Ledger) -> None:
    assert a.structures == b.structures
    assert a.counts == b.counts and a.events == b.events and a.entries == b.entries
    assert np.array_equal(a.footprints, b.footprints)


def test_a_run_goes_on_from_the_kept_state_of_the_same_first_periods() -> None:
    pres = {k: [A] for k in range(2, 10)}
    pres.update({4: [A, C], 6: [A, B], 7: [A, B], 8: [A, B], 9: [B]})  # noise, growth, vanishing
    full = series(pres)
    named = [replace(o, made_from=f"period {k}".encode()) for k, o in enumerate(full)]
    states = _PickledStates()

    # A monitoring run over the first eight periods keeps the states before its three newest.
    _same_ledger(run(named[:8], memo=states), run(full[:8]))
    assert len(states.states) == 3 and not states.taken

    # The next run, two periods on, goes on from the latest of them: the same ledger as
    # tracking all, and the states before its own three newest periods kept.
    _same_ledger(run(named, memo=states), run(full))
    assert len(states.taken) == 1 and len(states.states) == 5

    # Another seventh period (other objects, so another digest): the state before it applies.
    states.taken.clear()
    changed = {**pres, 6: [A]}
    other = [replace(o, made_from=f"period {k}".encode()) for k, o in enumerate(series(changed))]
    other[6] = replace(other[6], made_from=b"period 6, another composite")
    _same_ledger(run(other, memo=states), run(series(changed)))
    assert len(states.taken) == 1
    tracker = pickle.loads(states.states[states.taken[0]])
    assert len(tracker.had_change) == 6  # it had seen periods 0-5
    # Other settings never take a kept state; nor do observations without digests.
    states.taken.clear()
    strict = build_ledger(
        named, grid=GRID, config=replace(CFG, min_persistence=4), min_area_m2=400.0, memo=states
    )
    _same_ledger(
        strict,
        build_ledger(full, grid=GRID, config=replace(CFG, min_persistence=4), min_area_m2=400.0),
    )
    assert not states.taken
    run(full, memo=states)
    assert not states.taken


def test_a_state_kept_by_a_tracker_of_other_fields_is_not_taken() -> None:
    from changedet.core.track import _TRACKER_FIELDS, _Tracker

    tracker = _Tracker(GRID, CFG, 400.0, float("inf"))
    assert set(vars(tracker)) == _TRACKER_FIELDS
    assert set(vars(pickle.loads(pickle.dumps(tracker)))) == _TRACKER_FIELDS
    older = tracker.__getstate__()
    del older["last_clear"]
    with pytest.raises(ValueError, match="not a tracker state"):
        _Tracker.__new__(_Tracker).__setstate__(older)


def _site_then_roof(roof_in: range) -> list[PeriodObservation]:
    """Ground graded over B from period 2; in the periods `roof_in` a hall stands on half of it
    (`objects.split_roofs` made it an object of its own beside the rest of the site)."""
    soil = {"spectral_flattening": 0.02, "bsi_gain": 0.05}
    pad = replace(obj(B, 1), evidence=soil)
    roof = replace(obj(box(20, 20, 2, 4), 1), evidence={"spectral_flattening": 0.4})
    rest = replace(obj(box(22, 20, 2, 4), 2), evidence=soil)
    return _observations({k: [roof, rest] if k in roof_in else [pad] for k in range(2, 10)})


def test_a_hall_on_ground_graded_earlier_is_a_building_dated_by_its_roof() -> None:
    """Four periods of graded ground and four of a roof on half of it: the site's median
    flattening is the ground's, but a roof stood, so it is a building, first seen when the roof
    was. Its outline stays the site's; the hall's pixels are kept for the berm ring test."""
    ledger = run(_site_then_roof(range(6, 10)), kinds=KindConfig())
    (site,) = ledger.confirmed
    assert site.kind == "building" and site.area_m2 == 1600.0
    assert site.evidence["spectral_flattening"] == pytest.approx(0.4)
    assert site.first_seen_end == PERIODS[6].end
    (hall,) = ledger.halls
    assert hall is not None
    assert np.array_equal(hall, np.flatnonzero(box(20, 20, 2, 4)))
    # What the berm ring test is run around: the hall; the site's ground is where berms lie.
    assert np.array_equal(_building_footprints(ledger, [0]) == 1, box(20, 20, 2, 4))


@pytest.mark.parametrize("roof_in", [range(6, 7), range(4, 6)], ids=["once", "then gone"])
def test_a_roof_seen_once_or_not_since_does_not_make_a_building(roof_in: range) -> None:
    ledger = run(_site_then_roof(roof_in), kinds=KindConfig())
    (site,) = ledger.confirmed
    assert site.kind == "ground works" and ledger.halls == (None,)
    assert site.evidence["spectral_flattening"] == pytest.approx(0.02)


def test_a_roof_stands_when_seen_in_half_the_periods_since_its_first() -> None:
    """Periods, not objects, are counted: a period's roof comes with the rest of its site."""
    roofs = roof_periods([(k, {"spectral_flattening": f}) for k, f in ROOF_EVIDENCE], 0.15)
    assert roofs == {6: 0.3, 7: 0.2}
    seen = [k for k, _ in ROOF_EVIDENCE]
    assert roof_stood(roofs, seen, 2)  # 2 of the periods 6, 7, 8
    assert not roof_stood(roofs, [*seen, 9, 10], 2)  # 2 of 5
    assert not roof_stood(roofs, seen, 3)


ROOF_EVIDENCE = [
    (4, 0.02),
    (6, 0.3),
    (6, 0.02),
    (6, 0.01),
    (7, 0.2),
    (7, 0.03),
    (8, 0.04),
    (8, 0.02),
]


def test_with_the_polygon_a_cut_structure_belongs_where_its_centre_lies() -> None:
    """An AOI polygon that cuts a structure near its middle holds it when it holds the structure's
    centre (the point its lat/lon publish), decided in metres, not by pixel centres: A spans
    x 500,050..500,090 m, its centre at 500,070."""
    import shapely

    pres = {k: [A, B] for k in range(2, 10)}
    ledger = run(series(pres))
    every_pixel = np.ones(GRID.shape, dtype=bool)  # without the polygon all would stay
    for east_edge, holds in ((500_072.0, True), (500_068.0, False)):
        polygon = shapely.box(499_900.0, 3_949_800.0, east_edge, 3_950_100.0)
        mine = ledger.within(every_pixel, polygon=polygon)
        assert [s.area_m2 for s in mine.structures] == ([1200.0] if holds else []), east_edge
