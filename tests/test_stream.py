"""The streaming detector (`core.stream`) gives what the in-memory one (`core.timeseries`) gives,
to the bit, whatever the strip height, the number of threads or where the dates live."""

from __future__ import annotations

import gc
import time
import tracemalloc
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from changedet.config import Config, load_config
from changedet.core import timeseries, track
from changedet.core.coreg import apply_shift
from changedet.core.periods import make_periods
from changedet.core.stream import StackSeries, analyse_series, series_dates
from changedet.core.timeseries import Analysis, analyse_stack, screen_dates
from changedet.core.track import PeriodObservation
from changedet.models import ChangeMap, Composite, Grid, Stack, Structure
from changedet.read.store import ArraySpill, DateStore, SpilledRows

BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")


def _same_composite(a: Composite, b: Composite) -> None:
    assert a.period == b.period and a.scene_ids == b.scene_ids
    np.testing.assert_array_equal(a.reflectance, b.reflectance)
    np.testing.assert_array_equal(a.count, b.count)
    np.testing.assert_array_equal(a.source_date, b.source_date)


def _same_analysis(a: Analysis, b: Analysis) -> None:
    assert a.date_shifts == b.date_shifts
    _same_composite(a.baseline, b.baseline)
    _same_composite(a.after, b.after)
    assert len(a.per_period) == len(b.per_period)
    for x, y in zip(a.per_period, b.per_period, strict=True):
        _same_composite(x, y)
    np.testing.assert_array_equal(a.change.score, b.change.score)
    assert [_facts(s) for s in a.structures] == [_facts(s) for s in b.structures]
    assert a.ledger.counts == b.ledger.counts and a.ledger.events == b.ledger.events


def _facts(s: Structure) -> tuple[object, ...]:
    return (
        s.id,
        s.geometry.wkt,
        s.confirmed,
        s.first_seen_start,
        s.first_seen_end,
        s.status,
        s.vanished_after,
        s.kind,
        s.n_clear_obs,
        s.confidence,
    )


def _store_of(stack: Stack, folder: Path) -> DateStore:
    store = DateStore(stack.grid, stack.bands, folder=str(folder))
    for t, when in enumerate(stack.times):
        values, clear = store.slot()
        values[...] = stack.reflectance[t]
        clear[...] = stack.clear[t]
        store.commit(when, stack.scene_ids[t])
    store.release_slot()
    return store


def _synthetic_stack(seed: int = 3) -> Stack:
    """Two months of textured ground with a new bright block, cloud blobs, one-date haze
    spikes and dates misregistered by a fraction of a pixel: every path of the detector."""
    rng = np.random.default_rng(seed)
    h, w, n_t = 72, 90, 16
    ground = ndimage.gaussian_filter(rng.normal(size=(len(BANDS), h, w)), (0, 2, 2)) * 0.05 + 0.2
    times = [datetime(2024, 1, 2) + timedelta(days=4 * t) for t in range(n_t)]
    refl = np.empty((n_t, len(BANDS), h, w), np.float32)
    clear = np.ones((n_t, h, w), bool)
    for t in range(n_t):
        scene = ground + rng.normal(scale=0.004, size=ground.shape)
        if times[t].month == 3:
            scene[:, 30:40, 40:55] += np.linspace(0.1, 0.3, len(BANDS))[:, None, None]
        if t % 3 == 1:  # a fraction of a pixel off
            scene = apply_shift(scene.astype(np.float32), (0.6, -0.4))
        if t % 4 == 2:  # a cloud
            yy, xx = np.ogrid[:h, :w]
            clear[t] &= (yy - rng.integers(h)) ** 2 + (xx - rng.integers(w)) ** 2 > 15**2
        if t % 5 == 3 or t == n_t - 1:  # haze SCL missed: a brief brightening in blue
            scene[0, 5:20, 5:25] += 0.08
        if t % 6 == 4:  # a shadow SCL missed: a brief darkening, most in SWIR
            scene[:, 50:65, 60:85] *= np.linspace(0.9, 0.6, len(BANDS))[:, None, None]
        refl[t] = scene
    clear &= np.isfinite(refl).all(axis=1)
    refl[~np.broadcast_to(clear[:, None], refl.shape)] = np.nan
    grid = Grid.from_origin("EPSG:32639", 500000.0, 3950000.0, 10.0, w, h)
    return Stack(grid, BANDS, tuple(times), tuple((f"s{t}",) for t in range(n_t)), refl, clear)


CONFIG = replace(
    Config(),
    time=replace(Config().time, start=date(2024, 1, 1), end=date(2024, 3, 31), baseline_periods=1),
    change=replace(Config().change, level_block_px=16),  # every path: levelling too
)


@pytest.mark.parametrize(
    ("strip_bytes", "workers", "spilled"),
    [(1, 1, False), (1, 1, True), (200_000, 2, True), (1 << 30, 2, False)],
)
def test_streaming_matches_the_in_memory_detector(
    strip_bytes: int, workers: int, spilled: bool
) -> None:
    stack = _synthetic_stack()
    periods = make_periods(CONFIG.time.start, CONFIG.time.end, "month")
    inside = np.ones(stack.grid.shape, bool)
    expected = analyse_stack(stack, inside=inside, periods=periods, config=CONFIG)
    assert any(s is not None and abs(s[0]) > 0.25 for s in expected.date_shifts)
    got = analyse_series(
        StackSeries(stack),
        inside=inside,
        periods=periods,
        config=CONFIG,
        strip_bytes=strip_bytes,
        workers=workers,
        spill=ArraySpill() if spilled else None,
    )
    _same_analysis(expected, got)


def test_spilled_composites_leave_memory_when_let_go() -> None:
    """With a spill, the period composites are kept in a file and made when asked for: the
    analysis holds none of their pixels (numpy's allocations, traced), each one asked for
    is a new read-only array, and letting it go gives its pixels back."""
    stack = _synthetic_stack()
    periods = make_periods(CONFIG.time.start, CONFIG.time.end, "month")
    inside = np.ones(stack.grid.shape, bool)

    def held(spill: ArraySpill | None) -> tuple[int, Analysis]:
        tracemalloc.start()
        try:
            analysis = analyse_series(
                StackSeries(stack), inside=inside, periods=periods, config=CONFIG, spill=spill
            )
            gc.collect()
            return tracemalloc.get_traced_memory()[0], analysis
        finally:
            tracemalloc.stop()

    in_memory, _ = held(None)
    spilled, analysis = held(ArraySpill())
    one = analysis.per_period[0]
    per_composite = one.reflectance.nbytes + one.count.nbytes + one.source_date.nbytes
    assert in_memory - spilled >= 0.9 * len(periods) * per_composite
    again = analysis.per_period[0]
    assert again is not one and not again.reflectance.flags.writeable
    np.testing.assert_array_equal(again.reflectance, one.reflectance)
    with pytest.raises(ValueError, match="read-only"):
        again.count[0, 0] = 1


def test_the_change_of_only_a_few_periods_is_held_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each period's change is computed a few periods ahead of the tracker taking it and let go
    once tracked: however many periods, only a few scores are alive at any time."""
    rng = np.random.default_rng(4)
    h, w, n_t = 40, 48, 36
    ground = ndimage.gaussian_filter(rng.normal(size=(len(BANDS), h, w)), (0, 2, 2)) * 0.05 + 0.2
    times = tuple(datetime(2024, 1, 3) + timedelta(days=10 * t) for t in range(n_t))
    refl = (ground + rng.normal(scale=0.004, size=(n_t, *ground.shape))).astype(np.float32)
    refl[n_t // 2 :, :, 10:20, 10:22] += np.float32(0.15)  # a building from mid-year
    grid = Grid.from_origin("EPSG:32639", 500000.0, 3950000.0, 10.0, w, h)
    clear = np.ones((n_t, h, w), bool)
    stack = Stack(grid, BANDS, times, tuple((f"s{t}",) for t in range(n_t)), refl, clear)
    config = replace(CONFIG, time=replace(CONFIG.time, end=date(2024, 12, 31)))
    periods = make_periods(config.time.start, config.time.end, "month")
    alive: list[weakref.ref[np.ndarray]] = []
    most = 0
    detect = timeseries.detect_change

    def counted(*args: object, **kwargs: object) -> ChangeMap:
        nonlocal most
        cmap = detect(*args, **kwargs)  # type: ignore[arg-type]
        gc.collect()
        most = max(most, sum(r() is not None for r in alive))
        alive.append(weakref.ref(cmap.structures[0]))
        return cmap

    monkeypatch.setattr(timeseries, "detect_change", counted)
    observe = track._Tracker.observe

    def slowly(self: track._Tracker, k: int, o: PeriodObservation) -> None:
        time.sleep(0.1)  # a tracker slower than the pool: what is computed ahead waits
        observe(self, k, o)

    monkeypatch.setattr(track._Tracker, "observe", slowly)
    got = analyse_series(
        StackSeries(stack), inside=np.ones(grid.shape, bool), periods=periods, config=config
    )
    assert len(alive) == len(periods) + 1  # every period and the overall comparison
    assert 1 <= most <= 5 < len(periods)  # the overall's, those taken ahead and one tracked
    assert [s.first_seen_end for s in got.ledger.confirmed] == [periods[6].end]  # July


def test_spilled_arrays_read_back_as_written_from_strips_on_threads() -> None:
    spill = ArraySpill()
    rng = np.random.default_rng(1)
    bands = rng.random((3, 37, 11)).astype(np.float32)
    days = rng.integers(0, 20000, (37, 11))  # int64, stored as the int32 asked for
    spilled_bands, spilled_days = (
        spill.reserve(bands.shape, np.float32),
        spill.reserve(days.shape, np.int32),
    )
    empty = spill.reserve((2, 0, 5), np.float32)
    strips = [slice(r, min(r + 5, 37)) for r in range(0, 37, 5)]

    def write(rows: slice) -> None:
        spilled_bands.write_rows(rows, bands[:, rows])
        spilled_days.write_rows(rows, days[rows])

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(write, strips[::-1]))
    np.testing.assert_array_equal(spilled_bands.array(), bands)
    assert spilled_days.array().dtype == np.int32
    np.testing.assert_array_equal(spilled_days.array(), days)
    assert empty.array().shape == (2, 0, 5)
    empty.write_rows(slice(0, 0), np.zeros((2, 0, 5)))
    # a shape that does not fit raises, as an assignment would, and spills into no neighbour
    with pytest.raises(ValueError, match="broadcast"):
        spilled_bands.write_rows(slice(0, 5), np.ones((3, 5, 22), np.float32))
    with pytest.raises(ValueError, match="broadcast"):
        spilled_bands.write_rows(slice(0, 5), np.ones((4, 5, 11), np.float32))
    np.testing.assert_array_equal(spilled_bands.array(), bands)
    np.testing.assert_array_equal(spilled_days.array(), days)


def test_a_brightening_on_the_last_date_waits_only_where_one_period_cannot_confirm() -> None:
    stack = _synthetic_stack()
    periods = make_periods(CONFIG.time.start, CONFIG.time.end, "month")
    haze = (slice(5, 20), slice(5, 25))
    # three months, a one-month baseline and two to confirm: the last date's haze waits
    screened = screen_dates(stack, CONFIG, periods)
    assert not screened.clear[-1][haze].any() and stack.clear[-1][haze].all()
    # a two-month baseline leaves one month to confirm in: the last date is kept
    short = replace(CONFIG, time=replace(CONFIG.time, baseline_periods=2))
    assert screen_dates(stack, short, periods).clear[-1][haze].all()
    # as it is when the run holds too few periods with dates for two to confirm
    assert screen_dates(stack, CONFIG, periods[:2]).clear[-1][haze].all()


def test_the_screen_takes_out_shadows_scl_missed_and_nothing_when_off() -> None:
    stack = _synthetic_stack()
    periods = make_periods(CONFIG.time.start, CONFIG.time.end, "month")
    shadow = (slice(50, 65), slice(60, 85))
    shaded = [t for t in range(len(stack.times)) if t % 6 == 4]
    screened = screen_dates(stack, CONFIG, periods).clear
    for t in shaded:
        assert not screened[t][shadow][stack.clear[t][shadow]].any()
    assert screened[1][shadow].all()
    off = replace(CONFIG, mask=replace(CONFIG.mask, spike_tolerance=0.0, dip_tolerance=0.0))
    np.testing.assert_array_equal(screen_dates(stack, off, periods).clear, stack.clear)


def test_dates_on_disk_read_back_as_they_went_in(tmp_path: Path) -> None:
    stack = _synthetic_stack(seed=5)
    with _store_of(stack, tmp_path) as store:
        assert store.times == stack.times and store.scene_ids == stack.scene_ids
        rows = slice(7, 31)
        np.testing.assert_array_equal(
            store.pixels([3, 0, 9], rows, [5, 1]), stack.reflectance[[3, 0, 9]][:, [5, 1], rows]
        )
        np.testing.assert_array_equal(store.clear_rows([2, 4], rows), stack.clear[[2, 4], rows])
        window = (slice(10, 20), slice(30, 45))
        np.testing.assert_array_equal(
            series_dates(store).read(4, window), series_dates(StackSeries(stack)).read(4, window)
        )
        periods = make_periods(CONFIG.time.start, CONFIG.time.end, "month")
        inside = np.ones(stack.grid.shape, bool)
        _same_analysis(
            analyse_stack(stack, inside=inside, periods=periods, config=CONFIG),
            analyse_series(store, inside=inside, periods=periods, config=CONFIG, strip_bytes=1),
        )
    assert not list(tmp_path.iterdir())  # anonymous files: nothing left behind


@pytest.mark.oscd
def test_streaming_matches_on_a_semi_real_series(oscd_root: Path, tmp_path: Path) -> None:
    from changedet.lab.oscd import load_city
    from changedet.lab.series import make_oscd_series, series_stack

    config = load_config()  # levelling on (32 px), the default
    series = make_oscd_series(load_city(oscd_root, "paris", with_label=True), seed=0, months=8)
    stack = series_stack(series, [a.index for a in series.acquisitions], config=config)
    periods = make_periods(series.start, series.end, config.time.period)
    inside = np.ones(stack.grid.shape, bool)
    expected = analyse_stack(stack, inside=inside, periods=periods, config=config)
    with _store_of(stack, tmp_path) as store:
        got = analyse_series(
            store, inside=inside, periods=periods, config=config, strip_bytes=4 << 20
        )
    _same_analysis(expected, got)


def test_the_streaming_reader_gives_the_in_memory_readers_pixels() -> None:
    """The demo's COGs read both ways: the same dates, pixels and clear masks to the bit, and
    the dates on disk as uint16 DNs (half of float32) wherever that is exact."""
    from changedet.aoi import aoi_mask, crop_to_footprints, grid_for, load_aois
    from changedet.pipeline import PipelineIO, _search
    from changedet.read.stack import read_series, read_stack

    repo = Path(__file__).resolve().parents[1]
    config = load_config(repo / "configs" / "demo-khojir.toml")
    (aoi,) = load_aois(repo / "aoi" / "khojir.geojson")
    found = _search(aoi, config, PipelineIO.default(), lambda *a: None)
    grid = crop_to_footprints(grid_for(aoi), aoi, found.scenes)
    args = {
        "bands": config.read.bands,
        "aoi_mask": aoi_mask(aoi, grid),
        "read_config": config.read,
        "mask_config": config.mask,
    }
    stack = read_stack(found.scenes, grid, **args).stack
    streamed = read_series(found.scenes, grid, **args).stack
    assert isinstance(stack, Stack) and isinstance(streamed, DateStore)
    with streamed:
        assert streamed.times == stack.times and streamed.scene_ids == stack.scene_ids
        everything = slice(0, grid.height)
        dates, bands = range(len(stack.times)), range(len(stack.bands))
        np.testing.assert_array_equal(streamed.pixels(dates, everything, bands), stack.reflectance)
        np.testing.assert_array_equal(streamed.clear_rows(dates, everything), stack.clear)
        as_float32 = stack.reflectance.nbytes + stack.clear.nbytes
        assert streamed.bytes_written < 0.6 * as_float32


class _DictMemo:
    """A period memo in a dict, counting what was found and what was computed."""

    def __init__(self) -> None:
        self.entries: dict[str, PeriodObservation] = {}
        self.hits: list[str] = []

    def get(self, key: str) -> PeriodObservation | None:
        found = self.entries.get(key)
        if found is not None:
            self.hits.append(found.period.label)
        return found

    def put(self, key: str, observation: PeriodObservation) -> None:
        self.entries[key] = observation


def test_the_period_memo_gives_back_only_periods_whose_every_input_is_the_same() -> None:
    stack = _synthetic_stack()
    periods = make_periods(CONFIG.time.start, CONFIG.time.end, "month")  # Jan is the baseline
    inside = np.ones(stack.grid.shape, bool)
    memo = _DictMemo()

    def run(s: Stack) -> Analysis:
        memo.hits.clear()
        return analyse_stack(s, inside=inside, periods=periods, config=CONFIG, memo=memo)

    first = run(stack)  # the baseline's January too: where it already differs from the baseline
    assert memo.hits == [] and len(memo.entries) == 3
    _same_analysis(run(stack), first)
    assert memo.hits == ["2024-01", "2024-02", "2024-03"]
    # The last March date changes: March is computed again, the rest comes from the memo.
    march = stack.reflectance.copy()
    march[-1, :, 50:60, 10:20] += np.float32(0.2)
    run(replace(stack, reflectance=march))
    assert memo.hits == ["2024-01", "2024-02"]
    # A baseline date changes: every period is compared against another baseline.
    january = stack.reflectance.copy()
    january[0, :, 50:60, 10:20] += np.float32(0.2)
    run(replace(stack, reflectance=january))
    assert memo.hits == []


def test_a_new_change_detector_finds_nothing_in_the_period_memo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A period's change kept by an older detector (`CHANGE_VERSION`) is not taken for the new
    one's answer: the same inputs miss."""
    stack = _synthetic_stack()
    periods = make_periods(CONFIG.time.start, CONFIG.time.end, "month")
    inside = np.ones(stack.grid.shape, bool)
    memo = _DictMemo()
    analyse_stack(stack, inside=inside, periods=periods, config=CONFIG, memo=memo)
    monkeypatch.setattr(timeseries, "CHANGE_VERSION", "change-next")
    analyse_stack(stack, inside=inside, periods=periods, config=CONFIG, memo=memo)
    assert memo.hits == [] and len(memo.entries) == 6


class _DictArrays:
    """Shifts and composites kept in a dict; what was asked for and not found is listed."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, np.ndarray]] = {}
        self.asked: list[str] = []
        self.missed: list[str] = []

    def get_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        self.asked.append(key)
        found = self.entries.get(key)
        if found is None:
            self.missed.append(key)
        return None if found is None else {k: v.copy() for k, v in found.items()}

    def put_arrays(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        self.entries[key] = {k: np.array(v) for k, v in arrays.items()}


def test_kept_shifts_and_composites_give_what_computing_them_again_gives(tmp_path: Path) -> None:
    stack = _synthetic_stack()
    periods = make_periods(CONFIG.time.start, CONFIG.time.end, "month")
    inside = np.ones(stack.grid.shape, bool)
    kept = _DictArrays()

    def run(s: Stack, reuse: _DictArrays | None) -> Analysis:
        kept.asked.clear()
        kept.missed.clear()
        with _store_of(s, tmp_path) as store:
            return analyse_series(
                store,
                inside=inside,
                periods=periods,
                config=CONFIG,
                strip_bytes=1,
                reuse=reuse,
                spill=ArraySpill(),
            )

    fresh = run(stack, None)
    _same_analysis(run(stack, kept), fresh)  # everything computed, and kept
    n_kept = len(kept.entries)
    # a shift and levels per date, a composite per period, January's composite before
    # levelling (what the dates are levelled against), the median shifts are measured against,
    # the screen's verdicts; the baseline is January, the "after" span March
    assert n_kept == 2 * len(stack.times) + len(periods) + 3
    assert sum(k.startswith("levels-") for k in kept.entries) == len(stack.times)
    _same_analysis(run(stack, kept), fresh)
    assert kept.asked and not kept.missed and len(kept.entries) == n_kept
    # The last date changes: its shift, March and the "after" span are computed again (and a
    # date whose spikes it decides); January (the baseline), its median and February come from
    # the memo.
    march = stack.reflectance.copy()
    march[-1, :, 50:60, 10:20] += np.float32(0.2)
    changed = replace(stack, reflectance=march)
    with_kept = run(changed, kept)
    reference = [k for k in kept.asked if k.startswith("reference-")]
    assert len(reference) == 1 and reference[0] not in kept.missed
    assert any(k.startswith("shift-") for k in kept.missed)
    levelled_again = [k for k in kept.missed if k.startswith("levels-")]
    assert 1 <= len(levelled_again) < len(stack.times)
    _same_analysis(with_kept, run(changed, None))
    run(changed, kept)
    assert not kept.missed
    # A baseline date changes: every date is measured against another median.
    january = stack.reflectance.copy()
    january[1, :, 50:60, 10:20] += np.float32(0.2)
    changed = replace(stack, reflectance=january)
    with_kept = run(changed, kept)
    assert [k for k in kept.missed if k.startswith("reference-")]
    _same_analysis(with_kept, run(changed, None))


def test_kept_composites_are_mapped_from_the_period_cache_not_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A monitoring run's reused composites stay in the period cache's files: mapped again when
    a stage asks for one, neither held for the run nor copied into the spill."""
    from changedet.monitor.memo import DiskMemo

    stack = _synthetic_stack()
    periods = make_periods(CONFIG.time.start, CONFIG.time.end, "month")
    inside = np.ones(stack.grid.shape, bool)
    writes: list[slice] = []
    write = SpilledRows.write_rows

    def counted(self: SpilledRows, rows: slice, values: np.ndarray) -> None:
        writes.append(rows)
        write(self, rows, values)

    monkeypatch.setattr(SpilledRows, "write_rows", counted)

    def run(memo: DiskMemo | None) -> Analysis:
        with _store_of(stack, tmp_path) as store:
            return analyse_series(
                store, inside=inside, periods=periods, config=CONFIG, reuse=memo, spill=ArraySpill()
            )

    fresh = run(None)
    assert writes
    run(DiskMemo(tmp_path / "memo"))  # computes and keeps every composite
    writes.clear()
    memo = DiskMemo(tmp_path / "memo")
    again = run(memo)
    assert memo.array_hits["composite"] == len(periods) + 3 and not writes
    _same_analysis(again, fresh)
    assert memo.map_arrays("composite-unknown") is None  # only entries checked in this run


def test_a_period_without_dates_is_no_observation_when_the_rest_is_kept(tmp_path: Path) -> None:
    """A monitor run early in a month with no scene yet, everything else kept: that month's
    composite was never filled (np.empty), and its garbage read as ground (false withdrawals,
    a clear share of 0.999 for a month nobody saw)."""
    stack = _synthetic_stack()
    config = replace(CONFIG, time=replace(CONFIG.time, end=date(2024, 4, 30)))
    periods = make_periods(config.time.start, config.time.end, "month")
    inside = np.ones(stack.grid.shape, bool)
    expected = analyse_stack(stack, inside=inside, periods=periods, config=config)
    april = expected.per_period[-1]
    assert april.period.label == "2024-04" and not april.scene_ids
    assert np.isnan(april.reflectance).all() and (april.source_date == -1).all()
    kept = _DictArrays()
    with _store_of(stack, tmp_path) as store:
        # The run before ended with March; this one adds April, empty, and keeps the rest.
        analyse_series(
            store, inside=inside, periods=periods[:-1], config=CONFIG, strip_bytes=1, reuse=kept
        )
        got = analyse_series(
            store,
            inside=inside,
            periods=periods,
            config=config,
            strip_bytes=1,
            reuse=kept,
            spill=ArraySpill(),
        )
    _same_analysis(expected, got)


def test_a_dates_fingerprint_follows_its_pixels_and_clear_mask(tmp_path: Path) -> None:
    stack = _synthetic_stack(seed=5)
    with _store_of(stack, tmp_path) as store:
        prints = store.fingerprints()
        assert len(set(prints)) == len(stack.times)
    clear = stack.clear.copy()
    clear[4, 0, 0] = not clear[4, 0, 0]
    refl = stack.reflectance.copy()
    refl[9, 2, 5, 5] += np.float32(1e-3)
    with _store_of(replace(stack, clear=clear, reflectance=refl), tmp_path) as store:
        again = store.fingerprints()
    assert [t for t in range(len(prints)) if prints[t] != again[t]] == [4, 9]
