"""The time-series detector: a masked stack over periods → structures in a ledger, and berms.

Steps (pure: arrays in, arrays out):
1. `choose_baseline`: the first `time.baseline_periods` periods clear enough inside the AOI
   (`time.baseline_min_clear`) form the baseline; later periods are compared with it; with few
   clear periods the baseline and the persistence asked shrink, down to two dates;
2. `coregister_dates` (core.coreg): every date lined up with the baseline dates' median, never
   with later dates, so appending a period does not move what came before;
   with `[change] level_block_px`, every date then levelled to the baseline (`level_stack`,
   core.level: haze and veils over kilometres taken off);
3. composites: one per period, one for the baseline span and one "after" span of as many
   periods as the baseline at the end;
4. `observe_periods`: each later period's change against the baseline (`detect_structures`, in
   the configured structure mode) → objects; baseline periods are "absent" evidence;
5. the ledger (`build_ledger`) and, when enabled, berms around the new structures.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from changedet.config import Config
from changedet.core.berms import berm_evidence, extract_berms, link_berms, ring_test
from changedet.core.change import (
    BAND_CHANGE_UNOBSERVED,
    CHANGE_VERSION,
    COREG_BANDS,
    BeforeRange,
    before_range,
    detect_change,
)
from changedet.core.composite import composite
from changedet.core.coreg import coregister_dates
from changedet.core.kinds import BUILDING
from changedet.core.ledger import Ledger, build_ledger
from changedet.core.level import date_levels, subtract_levels
from changedet.core.mask import DIP_BAND, temporal_dips, temporal_spikes
from changedet.core.objects import extract_objects
from changedet.core.periods import Comparison, plan_comparison
from changedet.core.track import PeriodHead, PeriodObservation, StateMemo
from changedet.models import (
    Berm,
    ChangeMap,
    Composite,
    Composites,
    Period,
    Progress,
    Stack,
    Structure,
    no_progress,
)

__all__ = [
    "Analysis",
    "Baseline",
    "PeriodMemo",
    "StageTimer",
    "after_span",
    "analyse_composites",
    "analyse_stack",
    "baseline_from_fractions",
    "choose_baseline",
    "date_shift_threshold",
    "dates_in",
    "level_stack",
    "screen_bands",
    "screen_dates",
    "screened_dates",
    "screens_last_date",
    "span",
]

Shift = tuple[float, float] | None


class StageTimer:
    """Wall time per named stage, summed over repeated entries (`timings` is what run.json shows)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t0)

    def add(self, stage: str, seconds: float) -> None:
        self.timings[stage] = max(0.0, round(self.timings.get(stage, 0.0) + seconds, 3))

    def move(self, source: str, stage: str, seconds: float) -> None:
        """Count `seconds` timed as `source` as `stage`'s (a stage that waited on another)."""
        self.add(source, -seconds)
        self.add(stage, seconds)


@dataclass(frozen=True)
class Baseline:
    """Which periods form the baseline, the span they cover, and the comparison they allow."""

    span: Period
    comparison: Comparison
    description: str  # one sentence for run.json and the report

    @property
    def indices(self) -> tuple[int, ...]:
        """The baseline periods, as indices into the run's periods."""
        return self.comparison.baseline

    @property
    def last(self) -> int:
        return self.comparison.last


@dataclass(frozen=True)
class Analysis:
    """What the time-series core made of one stack (no I/O)."""

    baseline: Composite
    after: Composite
    change: ChangeMap  # baseline against `after`, the overall picture
    per_period: Sequence[Composite]  # a tuple, or `Composites` made when asked for
    ledger: Ledger
    structures: tuple[Structure, ...]  # the ledger's structures with berm flags set
    berms: tuple[Berm, ...]
    date_shifts: tuple[Shift, ...] = ()  # per stack date, before correction
    plan: Baseline | None = None  # which periods were compared, and how

    @property
    def footprints(self) -> np.ndarray:
        """(H, W) int32: i + 1 where `structures[i]` stands, 0 elsewhere."""
        return self.ledger.footprints


def span(periods: Sequence[Period]) -> Period:
    """One period covering `periods`, labelled by its first and last (e.g. '2024-05..2024-06')."""
    first, last = periods[0], periods[-1]
    label = first.label if first == last else f"{first.label}..{last.label}"
    return Period(first.start, last.end, label)


def date_shift_threshold(config: Config, n_reference_dates: int) -> float:
    """Above which measured shift a date is resampled onto the baseline dates' median.

    `date_coreg_threshold_px` when that median is made of several dates: both sides of every
    comparison are then medians of resampled dates. `coreg_threshold_px` when it is one date (a
    before/after pair): only the after date would be resampled, and resampling a small shift
    blurs it more than it aligns it."""
    cc = config.change
    return cc.date_coreg_threshold_px if n_reference_dates >= 2 else cc.coreg_threshold_px


def dates_in(times: Sequence[datetime], period: Period) -> list[int]:
    """The indices of the `times` that fall in `period`."""
    return [i for i, t in enumerate(times) if period.contains(t.date())]


def choose_baseline(
    stack: Stack, periods: Sequence[Period], *, inside: np.ndarray, config: Config
) -> Baseline:
    """The first periods clear enough inside the AOI (decided on masks alone), shrunk down to a
    two-date comparison when few periods are clear (`core.periods.plan_comparison`).

    Raises NoScenesError when fewer than two periods are clear enough.
    """
    min_obs = config.change.min_clear_obs
    clear = [
        float((stack.clear[dates_in(stack.times, p)].sum(axis=0)[inside] >= min_obs).mean())
        if inside.any()
        else 0.0
        for p in periods
    ]
    return baseline_from_fractions(periods, clear, config=config)


def baseline_from_fractions(
    periods: Sequence[Period], clear: Sequence[float], *, config: Config
) -> Baseline:
    """`choose_baseline` from each period's clear share (the streaming detector, `core.stream`,
    measures it strip by strip)."""
    plan = plan_comparison(
        periods,
        clear,
        baseline_periods=config.time.baseline_periods,
        min_persistence=config.track.min_persistence,
        min_clear_fraction=config.time.baseline_min_clear,
        min_clear_obs=config.change.min_clear_obs,
    )
    first, last = min(plan.baseline), plan.last
    return Baseline(span(periods[first : last + 1]), plan, plan.describe(periods))


def screens_last_date(periods_with_dates: int, config: Config) -> bool:
    """Whether the spike screen may call a pixel's last observation a spike (`trailing` of
    `core.mask.temporal_spikes`): only when a structure needs two or more clear periods to be
    confirmed and the series has periods enough for that, so that holding a brightening on the
    last date back until the next scene cannot cost a structure the run could confirm. A pair
    or a short series, whose persistence may shrink to one period, keeps its last date."""
    persistence = config.track.min_persistence
    return persistence >= 2 and periods_with_dates >= config.time.baseline_periods + persistence


def screen_bands(config: Config) -> tuple[str, ...]:
    """The bands the temporal screen looks at: blue for spikes, SWIR for dips, where on."""
    tests = (("blue", config.mask.spike_tolerance), (DIP_BAND, config.mask.dip_tolerance))
    return tuple(band for band, tolerance in tests if tolerance > 0)


def screen_dates(stack: Stack, config: Config, periods: Sequence[Period] = ()) -> Stack:
    """The stack with observations that are brief brightenings in blue (cloud edges, thin cloud
    and haze SCL missed; `core.mask.temporal_spikes`) or brief darkenings in SWIR (shadows SCL
    missed; `core.mask.temporal_dips`) no longer clear. `periods`: the run's periods
    (`screens_last_date`)."""
    if len(stack.times) < 3:
        return stack
    days = [t.date() for t in stack.times]
    with_dates = sum(any(p.contains(d) for d in days) for p in periods)
    screened = screened_dates(
        {b: stack.band(b) for b in screen_bands(config) if b in stack.bands},
        stack.clear,
        config,
        trailing=screens_last_date(with_dates, config),
    )
    return stack if screened is None else replace(stack, clear=stack.clear & ~screened)


def screened_dates(
    bands: Mapping[str, np.ndarray], clear: np.ndarray, config: Config, *, trailing: bool
) -> np.ndarray | None:
    """(T, H, W) bool: the clear observations the temporal screen takes out (spikes in blue,
    dips in SWIR; None when neither test runs), of `bands` (T, H, W) reflectance by name, those
    of `screen_bands` the data has."""
    out: np.ndarray | None = None
    for band, reflectance in bands.items():
        values = np.where(clear, reflectance, np.float32(np.nan))
        if band == DIP_BAND:
            found = temporal_dips(
                values, tolerance=config.mask.dip_tolerance, relative=config.mask.dip_relative
            )
        else:
            found = temporal_spikes(
                values, tolerance=config.mask.spike_tolerance, trailing=trailing
            )
        out = found if out is None else out | found
    return out


def _coregister(
    stack: Stack, baseline: Baseline, config: Config
) -> tuple[Stack, tuple[Shift, ...]]:
    cc = config.change
    band = next((b for b in COREG_BANDS if b in stack.bands), None)
    if not cc.coregister or band is None:
        return stack, ()
    refs = dates_in(stack.times, baseline.span)
    return coregister_dates(
        stack,
        band=band,
        threshold_px=date_shift_threshold(config, len(refs)),
        max_px=cc.max_shift_px,
        reference_dates=refs,
    )


def level_stack(stack: Stack, baseline: Baseline, config: Config) -> Stack:
    """Every date levelled to the baseline composite (`core.level`); as it is when levelling
    is off or there is nothing to level against."""
    block = config.change.level_block_px
    if block <= 0 or len(stack.times) < 2:
        return stack
    reference = composite(stack, baseline.span, min_clear_obs=config.change.min_clear_obs)
    reflectance = stack.reflectance.copy()
    for t in range(len(stack.times)):
        levels = date_levels(stack.reflectance[t], stack.clear[t], reference.reflectance, block)
        subtract_levels(reflectance[t], levels, slice(0, stack.grid.height), block)
    return replace(stack, reflectance=reflectance)


class _PeriodStream:
    """The periods' observations (`_observe_periods`) as the tracker takes them: each computed
    on the pool a few periods ahead of it, or found in the memo, and let go once taken, so a
    history of many periods holds the change of a few at a time (`ObservationStream`)."""

    AHEAD = 2  # periods computed ahead of the one taken: the pool's two threads stay busy

    def __init__(
        self,
        heads: Sequence[PeriodHead],
        observe: Callable[[int], PeriodObservation],
        *,
        keys: Sequence[str],
        memo: PeriodMemo | None,
        pool: Executor,
        progress: Progress,
    ) -> None:
        self._heads, self._observe, self._keys = heads, observe, keys
        self._memo, self._pool, self._progress = memo, pool, progress
        self._pending: dict[int, PeriodObservation | Future[PeriodObservation]] = {}
        self._taken: set[int] = set()
        self.waited = 0.0  # seconds the tracker waited for a period's change

    @property
    def heads(self) -> Sequence[PeriodHead]:
        return self._heads

    def _ask(self, i: int) -> None:
        """Start period i: from the memo (asked from this thread), else on the pool."""
        if i >= len(self._heads) or i in self._pending or i in self._taken:
            return
        seen = self._memo.get(self._keys[i]) if self._memo is not None else None
        self._pending[i] = seen if seen is not None else self._pool.submit(self._observe, i)

    def take(self, k: int) -> PeriodObservation:
        t0 = time.perf_counter()
        for i in range(k, k + 1 + self.AHEAD):
            self._ask(i)
        got = self._pending.pop(k)
        self._taken.add(k)
        if isinstance(got, Future):
            got = got.result()
            if self._memo is not None:
                self._memo.put(self._keys[k], got)
        self._progress("change per period", len(self._taken), len(self._heads))
        self.waited += time.perf_counter() - t0
        return replace(got, made_from=self._heads[k].made_from)


def _observe_periods(
    baseline_composite: Composite,
    per_period: Sequence[Composite],
    baseline: Baseline,
    *,
    inside: np.ndarray,
    config: Config,
    progress: Progress,
    memo: PeriodMemo | None = None,
    baseline_range: BeforeRange | None = None,
    made_from: Sequence[bytes] | None = None,
    pool: Executor,
) -> _PeriodStream:
    """Baseline periods as "absent" evidence, then each later period's objects of new structures.
    baseline_range: `before_range` of the baseline composite, when computed already; made_from:
    see `analyse_composites`; pool: the threads the periods are computed on."""
    cc = config.change
    # Every period's key (its change, or for a baseline period its "absent" evidence, and what
    # the tracker's kept states are named by); the baseline and the mask are digested once.
    keys = [""] * len(per_period)
    if memo is not None:
        if made_from is None:
            # one composite at a time: a spilled one's pixels leave memory once digested
            made_from = [_digest(c.reflectance, c.count) for c in per_period]
            made_from.append(_digest(baseline_composite.reflectance, baseline_composite.count))
        shared = hashlib.blake2b(made_from[-1] + _digest(inside), digest_size=20).digest()
        keys = [
            _memo_key(shared, d, c, config)
            for d, c in zip(made_from[: len(per_period)], per_period, strict=True)
        ]
    n_base = baseline.last + 1

    def observe(i: int) -> PeriodObservation:
        comp = per_period[i]
        cmap = detect_change(
            baseline_composite,
            comp,
            cc,
            known_before=baseline_range,
            with_band_change=i >= n_base and config.track.same_change > 0,
        )
        if i < n_base:
            # A baseline period holds no new structure, but where its composite already differs
            # from the baseline's median something may have stood then: its clear pixels count
            # as "absent" only where they score below `absent_below_z` (`Tracker.observe`), so
            # a structure built during a long baseline is not dated after it. A baseline of one
            # period is that period's own composite: its score is 0 everywhere and says nothing
            # (taken as change, it left every later structure's first-seen start unknown).
            return PeriodObservation(
                period=comp.period,
                objects=(),
                observed=(comp.count >= cc.min_clear_obs) & inside,
                scene_ids=comp.scene_ids,
                baseline=True,
                score=None if baseline.indices == (i,) else cmap.structures[0],
            )
        observed = np.isfinite(cmap.structures[0]) & inside
        objects = extract_objects(cmap, cc, kinds=config.kinds) if observed.any() else []
        return PeriodObservation(
            period=comp.period,
            objects=tuple(objects),
            observed=observed,
            scene_ids=comp.scene_ids,
            score=cmap.structures[0],
            band_change=_lasting_change_codes(cmap, baseline_composite),
        )

    # Each period against the same baseline: independent, so on the pool's threads (numpy and
    # scipy release the GIL in the heavy steps), a few ahead of the tracker taking them.
    heads = [
        PeriodHead(c.period, c.scene_ids, i < n_base, key.encode() if key else None)
        for i, (c, key) in enumerate(zip(per_period, keys, strict=True))
    ]
    progress("change per period", 0, len(heads))
    return _PeriodStream(heads, observe, keys=keys, memo=memo, pool=pool, progress=progress)


# A baseline resting on fewer dates at a pixel repeats its own noise in every later period, so
# there a change that lasts is no sign of a structure (`TrackConfig.same_change`).
SAME_CHANGE_BASELINE_DATES = 3


def _lasting_change_codes(cmap: ChangeMap, baseline: Composite) -> np.ndarray | None:
    """The period's per-band change codes for the tracker's same-change test, set unobserved (in
    place) where the baseline rests on fewer than SAME_CHANGE_BASELINE_DATES dates; None when
    the map has none (the test is off)."""
    codes = cmap.band_change
    if codes is None:
        return None
    codes[:, baseline.count < SAME_CHANGE_BASELINE_DATES] = BAND_CHANGE_UNOBSERVED
    return codes


class PeriodMemo(Protocol):
    """Where a period's change against the baseline can be kept between runs (the monitor keeps
    it on disk), keyed by everything it is computed from: a period whose composite did not
    change is not computed again."""

    def get(self, key: str) -> PeriodObservation | None: ...

    def put(self, key: str, observation: PeriodObservation) -> None: ...


def _digest(*arrays: np.ndarray) -> bytes:
    digest = hashlib.blake2b(digest_size=20)
    for array in arrays:
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).data)  # the buffer itself: no copy
    return digest.digest()


def _memo_key(shared: bytes, made_from: bytes, comp: Composite, config: Config) -> str:
    """A digest of every input of one period's change: `shared` (the baseline composite's and the
    mask's), the period's composite (`made_from`), its scenes, the change and kind settings and
    the version of the change detector."""
    digest = hashlib.blake2b(shared, digest_size=20)
    digest.update(made_from)
    facts = (
        CHANGE_VERSION,
        comp.period,
        comp.scene_ids,
        comp.bands,
        comp.grid,
        config.change,
        config.kinds,
        config.track.same_change > 0,  # whether the change codes are kept
    )
    digest.update(repr(facts).encode())
    return digest.hexdigest()


def _building_footprints(ledger: Ledger, buildings: list[int]) -> np.ndarray:
    """(H, W) int32: buildings[j] -> j + 1 on its footprint, or on its hall where it stands on a
    site graded earlier (`Ledger.halls`): the berms ringing a hall lie on the site's ground."""
    halls = ledger.halls or (None,) * len(ledger.structures)
    lut = np.zeros(len(ledger.structures) + 1, dtype=np.int32)
    for j, i in enumerate(buildings, start=1):
        if halls[i] is None:  # a hall's site is left out...
            lut[i + 1] = j
    footprints = lut[ledger.footprints]
    flat = footprints.reshape(-1)
    for j, i in enumerate(buildings, start=1):
        hall = halls[i]
        if hall is not None:  # ...and its hall put in, where no other building stands
            flat[hall[flat[hall] == 0]] = j
    return footprints


def _with_berms(
    ledger: Ledger, baseline: Composite, after: Composite, config: Config
) -> tuple[tuple[Structure, ...], tuple[Berm, ...]]:
    """The ledger's structures with the berm flags of its buildings, and the berm lines. A berm
    is ground works itself (and may be one of the structures): only buildings are tested for a
    ring of it."""
    if not config.berms.enabled:
        return ledger.structures, ()
    buildings = [i for i, s in enumerate(ledger.structures) if s.kind == BUILDING]
    footprints = _building_footprints(ledger, buildings)
    # New roofs' own edges look like ridges: keep them out of the berm evidence.
    evidence = berm_evidence(baseline, after, exclude=footprints > 0)
    grid = baseline.grid
    tested = ring_test(
        [ledger.structures[i] for i in buildings],
        evidence,
        grid,
        config.berms,
        footprints=footprints,
    )
    structures = list(ledger.structures)
    for i, s in zip(buildings, tested, strict=True):
        structures[i] = s
    berms = tuple(link_berms(extract_berms(evidence, grid, config.berms), structures, config.berms))
    return tuple(structures), berms


def analyse_stack(
    stack: Stack,
    *,
    inside: np.ndarray,
    periods: list[Period],
    config: Config,
    progress: Progress = no_progress,
    timer: StageTimer | None = None,
    memo: PeriodMemo | None = None,
    aoi_polygon: Any | None = None,
) -> Analysis:
    """Period composites → baseline → change of each later period against it → objects of new
    structures → ledger → berms. `memo`: periods already computed (see `PeriodMemo`).

    The stack's grid is a context window around the AOI, `inside` the AOI polygon's pixels on
    it: every statistic and the baseline choice use the whole window, so the structures inside
    the AOI do not depend on how tightly it is drawn; the ledger keeps those whose centre lies in
    `aoi_polygon` (grid CRS), or without it whose anchor pixel lies in `inside`
    (`Ledger.within`), and its clear fractions are the AOI's.
    """
    timer = timer or StageTimer()
    cc = config.change
    with timer("screen"):
        stack = screen_dates(stack, config, periods)
    context: np.ndarray = np.any(stack.clear, axis=0)  # pixels with data in the window
    baseline = choose_baseline(stack, periods, inside=context, config=config)
    with timer("coregister"):
        stack, date_shifts = _coregister(stack, baseline, config)
    with timer("composite"):
        stack = level_stack(stack, baseline, config)
        per_period = [composite(stack, p, min_clear_obs=cc.min_clear_obs) for p in periods]
        before = composite(stack, baseline.span, min_clear_obs=cc.min_clear_obs)
        after = composite(
            stack, after_span(periods, baseline, stack.times), min_clear_obs=cc.min_clear_obs
        )
        progress("composite", 1, 1)
    return analyse_composites(
        before,
        after,
        per_period,
        baseline,
        inside=inside,
        context=context,
        config=config,
        progress=progress,
        timer=timer,
        date_shifts=date_shifts,
        memo=memo,
        aoi_polygon=aoi_polygon,
    )


def after_span(periods: Sequence[Period], baseline: Baseline, times: Sequence[datetime]) -> Period:
    """The run's "after": as many clear periods as the baseline has, at the end, never
    overlapping it; ending with the last period that holds an acquisition, so its label does
    not run over months the data never reached (a run past the catalog's last scene)."""
    clear = baseline.comparison.clear
    first = max(clear[-len(baseline.indices)], baseline.last + 1)
    held = [k for k in range(first, len(periods)) if dates_in(times, periods[k])]
    return span(periods[first : (held[-1] if held else first) + 1])


def analyse_composites(
    before: Composite,
    after: Composite,
    per_period: Sequence[Composite],
    baseline: Baseline,
    *,
    inside: np.ndarray,
    context: np.ndarray,
    config: Config,
    progress: Progress = no_progress,
    timer: StageTimer | None = None,
    date_shifts: tuple[Shift, ...] = (),
    memo: PeriodMemo | None = None,
    made_from: Sequence[bytes] | None = None,
    known_pixels: np.ndarray | None = None,
    aoi_polygon: Any | None = None,
) -> Analysis:
    """The steps after the composites (change per period → ledger → berms), shared by
    `analyse_stack` and the streaming detector (`core.stream`). `context`: the window's pixels
    with a clear observation; `inside`: the AOI polygon's; `memo`: periods computed before;
    `made_from`: per composite of `per_period`, then of `before`, a digest of what it was made
    from (`core.reuse`), which stands for its pixels in the memo's keys (else they are hashed);
    `known_pixels`: where the AOI's known structures stand inside it; `aoi_polygon`: the AOI in
    the grid's CRS, whose structures are those with their centre in it (`Ledger.within`)."""
    timer = timer or StageTimer()
    cc = config.change
    grid = before.grid
    # Two threads for the comparisons with the baseline (each holds a few full-grid float32
    # layers: not more, whatever the machine).
    with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 2)) as pool:
        t0 = time.perf_counter()
        before_ranges = before_range(before, cc)  # every comparison below is against `before`
        # The overall comparison first, on the same threads as the periods: a monitoring run
        # that recomputes one period then computes both at once.
        overall = pool.submit(detect_change, before, after, cc, known_before=before_ranges)
        observations = _observe_periods(
            before,
            per_period,
            baseline,
            inside=context,
            config=config,
            progress=progress,
            memo=memo,
            baseline_range=before_ranges,
            made_from=made_from,
            pool=pool,
        )
        timer.add("change", time.perf_counter() - t0)  # (run.json lists change before track)
        with timer("track"):
            # Few clear periods allow less persistence than configured (`Baseline.comparison`).
            track = replace(config.track, min_persistence=baseline.comparison.min_persistence)
            window_ledger = build_ledger(
                observations,  # each period's change computed as the tracker takes it
                grid=grid,
                config=track,
                kinds=config.kinds,
                min_area_m2=cc.min_area_m2,
                aoi_mask=inside,
                memo=memo if isinstance(memo, StateMemo) else None,
                asked_persistence=baseline.comparison.wanted_persistence,
            )
            ledger = window_ledger.within(inside, known_pixels, polygon=aoi_polygon)
        t1 = time.perf_counter()
        change = overall.result()
        # the time the tracker waited for the periods' change is the change stage's
        timer.move("track", "change", observations.waited)
        timer.add("change", time.perf_counter() - t1)
    with timer("berms"):
        # Berm evidence excludes every structure's footprint in the window, not just the AOI's.
        flagged, berms = _with_berms(window_ledger, before, after, config)
        kept = {s.id for s in ledger.structures}
        structures = tuple(s for s in flagged if s.id in kept)
    return Analysis(
        before,
        after,
        change,
        per_period if isinstance(per_period, Composites) else tuple(per_period),
        ledger,
        structures,
        berms,
        date_shifts,
        baseline,
    )
