"""The time-series detector a few rows at a time: memory bounded however many dates there are.

Gives what `core.timeseries.analyse_stack` gives on the same data (tests/test_stream.py checks it
to the bit), but reads its dates from a `DateSeries` (on disk: `read.store`) and never holds
every date of the grid at once. Everything temporal is per pixel, so it is computed on strips of
rows over every date; only co-registration needs whole images, one band of one date at a time.

1. screen (strips, every date): the temporal spike screen needs each pixel's whole series (its
   previous and next clear observation may be months away); the few spikes are kept as pixel
   indices per date. Counted on the way: each date's clear pixels and each period's AOI pixels
   observed `min_clear_obs` times, which choose the baseline (`baseline_from_fractions`);
2. reference (strips, baseline dates, co-registration band): their median;
3. shifts (date by date, one band of the whole grid): `measure_shift` against the reference;
4. levels (the baseline's composite as in 5, then date by date, every band, in strips of whole
   block rows): each date's levels against it (`core.level`), as `level_stack` levels the stack;
5. composites (strips grown by the rows the shifts reach, every date): each date's strip is
   shifted as `coregister_dates` shifts the whole date and levelled, then every period's, the
   baseline's and the "after" span's median is written into its composite: preallocated, or
   with a `Spill`, written to it strip by strip (the analysis's `per_period` then makes each
   composite when asked for, and memory does not grow with the periods).

With `reuse` (the monitor's period cache), steps 2–5 take what an earlier run computed from the
same inputs (`core.reuse`): the reference median of unchanged baseline dates (2 is skipped when
no date is new), the shifts and levels of known dates, and the composites of periods none of
whose dates changed; 4 and 5 read only the dates whose levels or composites are left. Step 1
takes the earlier run's verdicts that the new dates cannot reach and screens only each strip's
recent dates (`core.rescreen`).

The strip height follows a byte budget, so a strip holds fewer rows when there are more dates.
Strips run on a small thread pool (numpy's sort and arithmetic release the GIL).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

import numpy as np

from changedet.config import Config
from changedet.core.change import COREG_BANDS
from changedet.core.composite import REFERENCE_BANDS, median_composite
from changedet.core.coreg import ShiftReference, apply_shift
from changedet.core.evidence import RGB, DateSource
from changedet.core.level import block_levels, filled, subtract_levels
from changedet.core.mask import one_or_nan
from changedet.core.rescreen import date_ids, keep_screen, kept_screen, screen_key
from changedet.core.reuse import ArrayMemo, Reuse
from changedet.core.timeseries import (
    Analysis,
    Baseline,
    PeriodMemo,
    StageTimer,
    after_span,
    analyse_composites,
    baseline_from_fractions,
    date_shift_threshold,
    dates_in,
    screen_bands,
    screened_dates,
    screens_last_date,
)
from changedet.models import (
    Composite,
    Composites,
    DateSeries,
    Grid,
    Period,
    Progress,
    Spill,
    SpilledArray,
    Stack,
    no_progress,
)

__all__ = ["StackSeries", "analyse_series", "as_series", "series_dates"]

Shift = tuple[float, float] | None
T = TypeVar("T")

_EPOCH = date(1970, 1, 1)
STRIP_BYTES = 96 * 1024 * 1024  # pixels of one strip over every date (per worker)
_MIN_CLEAR_TO_MEASURE = 0.3  # as coregister_dates: a date less clear than this is not measured


@dataclass(frozen=True)
class StackSeries:
    """An in-memory `Stack` read as a `DateSeries` (the fakes, the lab, tests)."""

    stack: Stack

    @property
    def grid(self) -> Grid:
        return self.stack.grid

    @property
    def bands(self) -> tuple[str, ...]:
        return self.stack.bands

    @property
    def times(self) -> tuple[datetime, ...]:
        return self.stack.times

    @property
    def scene_ids(self) -> tuple[tuple[str, ...], ...]:
        return self.stack.scene_ids

    def pixels(self, dates: Sequence[int], rows: slice, bands: Sequence[int]) -> np.ndarray:
        source = self.stack.reflectance
        out = np.empty((len(dates), len(bands), *source[0, 0, rows].shape), dtype=np.float32)
        for i, t in enumerate(dates):
            for j, b in enumerate(bands):
                out[i, j] = source[t, b, rows]
        return out

    def clear_rows(self, dates: Sequence[int], rows: slice) -> np.ndarray:
        return self.stack.clear[list(dates), rows]

    def fingerprints(self) -> tuple[str, ...]:
        out = []
        for t in range(len(self.stack.times)):
            digest = hashlib.sha256(np.ascontiguousarray(self.stack.reflectance[t]).data)
            digest.update(np.ascontiguousarray(self.stack.clear[t]).data)
            out.append(digest.hexdigest())
        return tuple(out)


def as_series(source: Stack | DateSeries) -> DateSeries:
    return StackSeries(source) if isinstance(source, Stack) else source


def series_dates(series: DateSeries) -> DateSource:
    """The dates of a series as the evidence picker reads them (`core.evidence.stack_dates`)."""
    rgb = [series.bands.index(b) for b in RGB]

    def read(t: int, window: tuple[slice, slice]) -> np.ndarray:
        rows, cols = window
        pixels = series.pixels([t], rows, rgb)[0][:, :, cols]
        pixels[:, ~series.clear_rows([t], rows)[0][:, cols]] = np.nan
        return pixels

    return DateSource(series.grid, series.times, series.scene_ids, read)


# --- strips ----------------------------------------------------------------------------------


def _strips(height: int, rows: int) -> list[slice]:
    return [slice(top, min(top + rows, height)) for top in range(0, height, rows)]


def _strip_rows(series: DateSeries, n_dates: int, n_bands: int, budget: int) -> int:
    per_row = max(n_dates * n_bands * series.grid.width * 4, 1)
    return max(min(budget // per_row, series.grid.height), 8)


def _run(
    work: Callable[[slice], T], strips: Sequence[slice], workers: int
) -> Iterator[tuple[slice, T]]:
    """`work` over every strip, `workers` at a time; results in strip order."""
    if workers <= 1 or len(strips) <= 1:
        for rows in strips:
            yield rows, work(rows)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="changedet-strip") as pool:
        yield from zip(strips, pool.map(work, strips), strict=True)


@dataclass
class _Screened:
    """What the screen pass learnt: spikes per date (flat pixel indices), clear pixels per date,
    and per period the AOI pixels observed often enough."""

    spikes: list[list[np.ndarray]]
    clear_pixels: np.ndarray  # (T,) int64
    observed: np.ndarray  # (P,) int64, of the context pixels
    context: np.ndarray  # (H, W) pixels with a clear observation on some date

    def spike_index(self, t: int) -> np.ndarray:
        return np.concatenate(self.spikes[t]) if self.spikes[t] else np.zeros(0, np.int64)


@dataclass
class _Context:
    series: DateSeries
    periods: list[Period]
    config: Config
    inside: np.ndarray
    workers: int
    budget: int
    dates_in: list[list[int]] = field(default_factory=list)
    spikes: list[np.ndarray] = field(default_factory=list)  # per date, sorted flat indices

    def __post_init__(self) -> None:
        self.dates_in = [dates_in(self.series.times, p) for p in self.periods]

    def screened_clear(self, dates: Sequence[int], rows: slice) -> np.ndarray:
        """The reader's clear mask of `dates` on `rows` without the screened spikes."""
        clear = self.series.clear_rows(dates, rows)
        if not self.spikes:
            return clear
        width = self.series.grid.width
        lo, hi = rows.start * width, rows.stop * width
        for i, t in enumerate(dates):
            index = self.spikes[t]
            part = index[np.searchsorted(index, lo) : np.searchsorted(index, hi)]
            if part.size:
                clear[i].reshape(-1)[part - lo] = False
        return clear


def _screen(ctx: _Context, memo: ArrayMemo | None) -> _Screened:
    """Pass 1: the temporal screen (as `timeseries.screen_dates`) and the counts. With `memo`
    (the monitor's period cache), the verdicts of the last run that still hold are taken and
    only the recent dates of a strip are screened (`core.rescreen`); this run's are kept."""
    series, config = ctx.series, ctx.config
    n_t = len(series.times)
    trailing = screens_last_date(sum(bool(d) for d in ctx.dates_in), config)
    bands = [b for b in screen_bands(config) if b in series.bands] if n_t >= 3 else []
    indices = [series.bands.index(b) for b in bands]
    width = series.grid.width
    min_obs = config.change.min_clear_obs
    remember = memo if bands else None  # the screen's verdicts, taken and kept there
    key = "" if remember is None else screen_key(series, config.mask, trailing)
    ids = [] if remember is None else date_ids(series)
    kept = None if remember is None else kept_screen(remember, key, ids)

    def screen(clear: np.ndarray, rows: slice, start: int) -> np.ndarray | None:
        """The screen of a strip's dates from `start` (0: every date; else combined with the
        kept verdicts, or of every date when they do not suffice)."""
        values = series.pixels(range(start, n_t), rows, indices)
        named = {b: values[:, i] for i, b in enumerate(bands)}
        screened = screened_dates(named, clear[start:], config, trailing=trailing)
        if kept is None or start == 0 or screened is None:
            return screened
        observed = clear[start:] & np.isfinite(values).all(axis=1)
        done = kept.combine(screened, observed, clear, start, rows, width)
        return screen(clear, rows, 0) if done is None else done

    def work(rows: slice) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        clear = series.clear_rows(range(n_t), rows)
        found: list[np.ndarray] = []
        start = 0 if kept is None else kept.window_start(clear)
        screened = screen(clear, rows, start) if indices else None
        if screened is not None:
            clear &= ~screened
            found = [np.flatnonzero(s) + rows.start * width for s in screened]
        context: np.ndarray = np.any(clear, axis=0)
        observed = np.array(
            [np.count_nonzero((clear[d].sum(axis=0) >= min_obs) & context) for d in ctx.dates_in],
            dtype=np.int64,
        )
        return found, clear.sum(axis=(1, 2), dtype=np.int64), observed, context

    strips = _strips(series.grid.height, _strip_rows(series, n_t, 4 + 4 * len(bands), ctx.budget))
    result = _Screened(
        [[] for _ in range(n_t)],
        np.zeros(n_t, np.int64),
        np.zeros(len(ctx.periods), np.int64),
        np.empty(series.grid.shape, dtype=bool),
    )
    for rows, (found, clear_pixels, observed, context) in _run(work, strips, ctx.workers):
        for t, index in enumerate(found):
            if index.size:
                result.spikes[t].append(index)
        result.clear_pixels += clear_pixels
        result.observed += observed
        result.context[rows] = context
    if remember is not None:
        keep_screen(remember, key, ids, [result.spike_index(t) for t in range(n_t)])
    return result


def _baseline(ctx: _Context, screened: _Screened) -> Baseline:
    """As `choose_baseline` on the context pixels (`analyse_stack` passes them as `inside`)."""
    n_context = np.count_nonzero(screened.context)
    fractions = [float(n) / n_context if n_context else 0.0 for n in screened.observed]
    return baseline_from_fractions(ctx.periods, fractions, config=ctx.config)


# --- co-registration -------------------------------------------------------------------------


def _shifts(
    ctx: _Context, refs: Sequence[int], screened: _Screened, reuse: Reuse | None
) -> tuple[Shift, ...]:
    """Passes 2 and 3: the median of the co-registration band over the baseline's dates `refs`,
    and every date's shift against it (as `core.coreg.coregister_dates`); those `reuse` has kept are not
    measured again, and without any to measure the median is not made."""
    series, cc = ctx.series, ctx.config.change
    band = next((b for b in COREG_BANDS if b in series.bands), None)
    if not cc.coregister or band is None:
        return ()
    n_t = len(series.times)
    if n_t < 2 or not refs:
        return tuple((0.0, 0.0) for _ in range(n_t))
    known = reuse.shifts(refs, band) if reuse is not None else {}
    todo = [t for t in range(n_t) if t not in known]
    if todo:
        measured = _measure(ctx, series.bands.index(band), refs, todo, screened, reuse)
        known.update(measured)
        if reuse is not None:
            reuse.keep_shifts(refs, band, measured)
    return tuple(known[t] for t in range(n_t))


def _measure(
    ctx: _Context,
    b: int,
    refs: Sequence[int],
    todo: Sequence[int],
    screened: _Screened,
    reuse: Reuse | None = None,
) -> dict[int, Shift]:
    """The shifts of the dates `todo` in band `b` against the median of the dates `refs`
    (the median `reuse` has kept, or made and kept)."""
    series = ctx.series
    band = series.bands[b]
    kept = None if reuse is None else reuse.reference(refs, band, series.grid.shape)
    reference = _reference_median(ctx, b, refs) if kept is None else kept
    if reuse is not None and kept is None:
        reuse.keep_reference(refs, band, reference)
    meter = ShiftReference(reference)
    h, w = series.grid.shape

    def measure(t: int) -> Shift:
        if screened.clear_pixels[t] / (h * w) < _MIN_CLEAR_TO_MEASURE:
            return None
        everything = slice(0, h)
        clear = ctx.screened_clear([t], everything)[0]
        image = np.where(clear, series.pixels([t], everything, [b])[0, 0], np.float32(np.nan))
        return meter.measure(image)

    if ctx.workers <= 1:
        return {t: measure(t) for t in todo}
    with ThreadPoolExecutor(max_workers=ctx.workers, thread_name_prefix="changedet-coreg") as pool:
        return dict(zip(todo, pool.map(measure, todo), strict=True))


def _reference_median(ctx: _Context, b: int, refs: Sequence[int]) -> np.ndarray:
    """The median of band `b` over the dates `refs`, strip by strip."""
    series = ctx.series
    h, w = series.grid.shape
    reference = np.empty((h, w), dtype=np.float32)

    def median_rows(rows: slice) -> np.ndarray:
        values = series.pixels(refs, rows, [b])
        return median_composite(values, ctx.screened_clear(refs, rows))[0][0]

    strips = _strips(h, _strip_rows(series, len(refs), 3, ctx.budget))
    for rows, part in _run(median_rows, strips, ctx.workers):
        reference[rows] = part
    return reference


def _corrected(
    shifts: Sequence[Shift], config: Config, n_reference_dates: int
) -> dict[int, tuple[float, float]]:
    """The shifts `coregister_dates` applies: above the threshold, up to the maximum."""
    low, high = date_shift_threshold(config, n_reference_dates), config.change.max_shift_px
    return {
        t: s for t, s in enumerate(shifts) if s is not None and low < float(np.hypot(*s)) <= high
    }


# --- composites ------------------------------------------------------------------------------


Pixels = np.ndarray | SpilledArray  # a composite's array: in memory, or in a `Spill`


def _held(pixels: Pixels) -> np.ndarray:
    return pixels if isinstance(pixels, np.ndarray) else pixels.array()


def _write_rows(pixels: Pixels, rows: slice, values: np.ndarray) -> None:
    if isinstance(pixels, np.ndarray):
        pixels[..., rows, :] = values
    else:
        pixels.write_rows(rows, values)


@dataclass
class _Target:
    """One composite being filled strip by strip (in memory, or in a `Spill`)."""

    period: Period
    dates: list[int]
    reflectance: Pixels
    count: Pixels
    source_date: Pixels
    days: np.ndarray  # days since 1970 of `dates`, then -1 (index -1 = no composite)

    @classmethod
    def empty(
        cls, period: Period, dates: list[int], series: DateSeries, spill: Spill | None = None
    ) -> _Target:
        """Unfilled when it has dates (every strip writes it); a period without any is filled
        now, as no observation: no strip may come (nothing else to compute), and its garbage
        was read as a composite (an incremental run early in a month without a scene yet)."""
        bands, grid = (len(series.bands), *series.grid.shape), series.grid.shape
        days = np.array([*((series.times[t].date() - _EPOCH).days for t in dates), -1], np.int32)
        layers: list[tuple[tuple[int, ...], type[np.generic], float]] = [
            (bands, np.float32, np.nan),
            (grid, np.uint16, 0),
            (grid, np.int32, -1),
        ]
        if spill is not None:
            arrays: list[Pixels] = [spill.reserve(shape, kind) for shape, kind, _ in layers]
            if not dates:
                height = series.grid.height
                for out, (shape, kind, fill) in zip(arrays, layers, strict=True):
                    _write_rows(out, slice(0, height), np.full(shape, fill, kind))
        elif dates:
            arrays = [np.empty(shape, kind) for shape, kind, _ in layers]
        else:
            arrays = [np.full(shape, fill, kind) for shape, kind, fill in layers]
        reflectance, count, source_date = arrays
        return cls(period, dates, reflectance, count, source_date, days)

    def composite(
        self, grid: Grid, bands: tuple[str, ...], ids: tuple[str, ...], made_from: bytes | None
    ) -> Composite:
        return Composite(
            grid,
            bands,
            self.period,
            _held(self.reflectance),
            _held(self.count),
            _held(self.source_date),
            ids,
            made_from,
        )

    def keep(
        self,
        arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
        mapped: tuple[SpilledArray, SpilledArray, SpilledArray] | None = None,
    ) -> None:
        """Take a composite computed before (the monitor's period cache). With a spill, not
        held: `mapped`, its cache entry mapped again whenever asked for, or else copied into
        the spill (memory does not grow with the periods in a monitoring run either)."""
        if isinstance(self.reflectance, np.ndarray):
            self.reflectance, self.count, self.source_date = arrays
        elif mapped is not None:
            self.reflectance, self.count, self.source_date = mapped
        else:
            whole = slice(0, arrays[1].shape[0])
            for out, values in zip(
                (self.reflectance, self.count, self.source_date), arrays, strict=True
            ):
                _write_rows(out, whole, values)

    def scene_ids(self, series: DateSeries) -> tuple[str, ...]:
        return tuple(dict.fromkeys(sid for t in self.dates for sid in series.scene_ids[t]))


def _shifted_strip(
    ctx: _Context,
    rows: slice,
    dates: Sequence[int],
    corrected: dict[int, tuple[float, float]],
    halo: int,
    levels: Mapping[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The pixels and usable mask of `dates` on `rows`, co-registered: the strip is read with
    `halo` more rows each side (what a shift's bilinear taps reach), shifted, then cut back;
    then levelled by the dates' `levels` (`core.level`), where given."""
    h = ctx.series.grid.height
    top, bottom = max(rows.start - halo, 0), min(rows.stop + halo, h)
    grown = slice(top, bottom)
    values = ctx.series.pixels(dates, grown, range(len(ctx.series.bands)))
    clear = ctx.screened_clear(dates, grown)
    for i, t in enumerate(dates):
        if t not in corrected:
            continue
        moved = apply_shift(values[i] * one_or_nan(clear[i]), corrected[t])
        values[i] = moved
        clear[i] = np.isfinite(moved).all(axis=0)
    inner = slice(rows.start - top, rows.stop - top)
    values, clear = values[:, :, inner], clear[:, inner]
    block = ctx.config.change.level_block_px
    for i, t in enumerate(dates):
        if levels and t in levels:
            subtract_levels(values[i], levels[t], rows, block)
    return values, clear


def _as_slice(index: list[int]) -> slice | list[int]:
    """Consecutive indices as a slice: a target whose dates lie together in the strip (a
    period; the closing span, often every date read) takes a view of it, not a copy."""
    if index and index == list(range(index[0], index[0] + len(index))):
        return slice(index[0], index[0] + len(index))
    return index


def _halo(corrected: Mapping[int, tuple[float, float]], dates: Sequence[int]) -> int:
    """The rows a strip of `dates` is read beyond its own for their shifts' bilinear taps."""
    return max((math.ceil(abs(corrected[t][0])) + 1 for t in dates if t in corrected), default=0)


def _composites(
    ctx: _Context,
    targets: Sequence[_Target],
    corrected: dict[int, tuple[float, float]],
    progress: Progress,
    levels: Mapping[int, np.ndarray] | None = None,
) -> None:
    """Pass 5: every target's median composite, strip by strip, reading only their dates
    (levelled by `levels`, where given)."""
    series = ctx.series
    dates = sorted({t for target in targets for t in target.dates})
    if not dates:
        return
    at = {t: i for i, t in enumerate(dates)}
    picks = [_as_slice([at[t] for t in target.dates]) for target in targets]
    halo = _halo(corrected, dates)
    bands = series.bands
    ref_band = next((bands.index(b) for b in REFERENCE_BANDS if b in bands), 0)
    min_obs = ctx.config.change.min_clear_obs

    def work(rows: slice) -> None:
        values, clear = _shifted_strip(ctx, rows, dates, corrected, halo, levels)
        for target, pick in zip(targets, picks, strict=True):
            median, count, index = median_composite(
                values[pick],
                clear[pick],
                min_clear_obs=min_obs,
                reference_band=ref_band,
            )
            _write_rows(target.reflectance, rows, median)
            _write_rows(target.count, rows, count)
            _write_rows(target.source_date, rows, target.days[index])

    # the strip, plus about half as much again for the sort of the largest target
    strips = _strips(
        series.grid.height, _strip_rows(series, len(dates), 2 * len(bands), ctx.budget)
    )
    for done, _ in enumerate(_run(work, strips, ctx.workers), start=1):
        progress("composite", done, len(strips))


@dataclass(frozen=True)
class _Levelled:
    """Each date's levels (`core.level.date_levels`), and the key of the composite they are
    levelled against (empty without reuse)."""

    levels: dict[int, np.ndarray]
    against: bytes


def _fill_composites(
    ctx: _Context,
    targets: Sequence[_Target],
    corrected: dict[int, tuple[float, float]],
    reuse: Reuse | None,
    progress: Progress,
    levelled: _Levelled | None = None,
) -> list[bytes] | None:
    """Every target's composite: those `reuse` has kept from it, the others computed (and
    kept). Returns each target's key (None without `reuse`)."""
    levels = levelled.levels if levelled is not None else None
    if reuse is None:
        _composites(ctx, targets, corrected, progress, levels)
        return None
    against = levelled.against if levelled is not None else b""
    keys = [reuse.composite_key(t.period, t.dates, corrected, against) for t in targets]
    shape = ctx.series.grid.shape
    todo = []
    for target, key in zip(targets, keys, strict=True):
        if not target.dates:  # no observation, made so (`_Target.empty`): a kept one may be junk
            continue
        found = reuse.composite(key, len(ctx.series.bands), shape)
        if found is None:
            todo.append((target, key))
        else:
            target.keep(found, reuse.kept_composite(key))
    _composites(ctx, [t for t, _ in todo], corrected, progress, levels)
    for target, key in todo:
        reuse.keep_composite(
            key, _held(target.reflectance), _held(target.count), _held(target.source_date)
        )
    return [key.encode() for key in keys]


def _levels(
    ctx: _Context, span: Period, corrected: dict[int, tuple[float, float]], reuse: Reuse | None
) -> _Levelled | None:
    """Pass 4: the baseline composite of the co-registered dates, and every date's levels
    against it (those `reuse` has kept are not computed again); None when levelling is off."""
    series, block = ctx.series, ctx.config.change.level_block_px
    n_t = len(series.times)
    if block <= 0 or n_t < 2:
        return None
    reference = _Target.empty(span, dates_in(series.times, span), series)
    keys = _fill_composites(ctx, [reference], corrected, reuse, no_progress)
    against = keys[0] if keys else b""
    known = reuse.levels(against, corrected, n_t) if reuse is not None else {}
    todo = [t for t in range(n_t) if t not in known]
    # A date is read in strips of whole block rows (blocks do not overlap): strip-sized arrays,
    # not the date's whole grid several times over per worker.
    rows = _strip_rows(series, 1, 2 * len(series.bands), ctx.budget)
    strips = _strips(series.grid.height, max(rows // block, 1) * block)
    against_pixels = _held(reference.reflectance)

    def level(t: int) -> np.ndarray:
        halo = _halo(corrected, [t])
        parts = []
        for strip in strips:
            values, clear = _shifted_strip(ctx, strip, [t], corrected, halo)
            parts.append(block_levels(values[0], clear[0], against_pixels[:, strip], block))
        return filled(np.concatenate(parts, axis=1))

    if ctx.workers <= 1:
        computed = {t: level(t) for t in todo}
    else:
        with ThreadPoolExecutor(
            max_workers=ctx.workers, thread_name_prefix="changedet-level"
        ) as pool:
            computed = dict(zip(todo, pool.map(level, todo), strict=True))
    if reuse is not None:
        reuse.keep_levels(against, corrected, computed)
    return _Levelled({**known, **computed}, against)


def analyse_series(
    series: DateSeries,
    *,
    inside: np.ndarray,
    periods: list[Period],
    config: Config,
    progress: Progress = no_progress,
    timer: StageTimer | None = None,
    workers: int | None = None,
    strip_bytes: int = STRIP_BYTES,
    memo: PeriodMemo | None = None,
    reuse: ArrayMemo | None = None,
    known_pixels: np.ndarray | None = None,
    aoi_polygon: Any | None = None,
    spill: Spill | None = None,
) -> Analysis:
    """`analyse_stack` of a series read a few rows at a time (see the module's docstring).
    memo: periods' change computed before; reuse: shifts and composites computed before
    (`core.reuse`); known_pixels: where the AOI's known structures stand (`Ledger.within`);
    spill: where the composites are kept, out of memory (the analysis's `per_period` makes
    each when asked for, so memory does not grow with the periods)."""
    timer = timer or StageTimer()
    workers = workers or min(os.cpu_count() or 1, 4)
    ctx = _Context(series, periods, config, inside, workers, strip_bytes)
    with timer("screen"):
        screened = _screen(ctx, reuse)
        ctx.spikes = [screened.spike_index(t) for t in range(len(series.times))]
        keys = None if reuse is None else Reuse.of(reuse, series, ctx.spikes, config)
    baseline = _baseline(ctx, screened)
    refs = dates_in(series.times, baseline.span)
    with timer("coregister"):
        shifts = _shifts(ctx, refs, screened, keys)
    with timer("composite"):
        targets = [
            _Target.empty(p, d, series, spill) for p, d in zip(periods, ctx.dates_in, strict=True)
        ]
        spans = [baseline.span, after_span(periods, baseline, series.times)]
        for p in spans:
            targets.append(_Target.empty(p, dates_in(series.times, p), series, spill))
        corrected = _corrected(shifts, config, len(refs))
        levelled = _levels(ctx, baseline.span, corrected, keys)
        made_from = _fill_composites(ctx, targets, corrected, keys, progress, levelled)
        digests: Sequence[bytes | None] = made_from or [None] * len(targets)
        grid, bands = series.grid, series.bands
        ids = [t.scene_ids(series) for t in targets]

        def composite(i: int) -> Composite:
            return targets[i].composite(grid, bands, ids[i], digests[i])

        per_period = Composites(len(periods), composite)
        before, after = composite(len(targets) - 2), composite(len(targets) - 1)
    return analyse_composites(
        before,
        after,
        per_period,
        baseline,
        inside=inside,
        context=screened.context,
        config=config,
        progress=progress,
        timer=timer,
        date_shifts=shifts,
        memo=memo,
        made_from=None if made_from is None else made_from[: len(periods) + 1],
        known_pixels=known_pixels,
        aoi_polygon=aoi_polygon,
    )
