"""Dated evidence per structure: the last clear acquisition before it appeared and one after.

Pure numpy. A composite says *that* a structure appeared between two periods; an analyst wants
to see it on real, dated acquisitions. For each structure that gets a chip (`chip_order`: the
confirmed ones first, then the live candidates, each the most confident first; up to a limit)
this picks, on a square window around it:

- before: the last acquisition dated before the first period in which the structure was
  present that is clear over it;
- after: the last clear acquisition of that first period (the one most likely to show it, as
  the period's median did), else the first clear acquisition after the period;
- when no acquisition is clear there, the nearest clear period composite instead (before: the
  latest ending by that period's start, else the baseline; after: the earliest from that period
  on, else the run's "after" composite), labelled as a composite.

"Clear over it" means at least `min_clear` of the structure's bounding box (with a one-pixel
rim) is clear. Acquisitions are moved by their measured co-registration shift when that shift
was corrected for detection, so the outline sits where the detector saw the structure.

Pixels come through a `DateSource`: the run's in-memory stack today (`stack_dates`), any reader
that can return one date's red, green and blue in a window tomorrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from changedet.config import Config
from changedet.core.coreg import apply_shift
from changedet.core.timeseries import Analysis, date_shift_threshold, dates_in
from changedet.models import (
    Composite,
    EvidenceImage,
    Grid,
    Period,
    Stack,
    Structure,
    StructureEvidence,
)

__all__ = [
    "CHIP_MIN_PX",
    "CHIP_PAD_PX",
    "DateSource",
    "chip_order",
    "chip_window",
    "composite_window",
    "evidence_for",
    "stack_dates",
    "structure_evidence",
]

RGB = ("red", "green", "blue")
CHIP_PAD_PX = 8  # context around a structure (10 m pixels)
CHIP_MIN_PX = 24  # smallest chip side: 240 m at 10 m, room for a 100 m scale bar
Shift = tuple[float, float] | None
Window = tuple[slice, slice]


@dataclass(frozen=True)
class DateSource:
    """Per-date pixels, one window at a time: `read(t, (rows, cols))` → (3, h, w) float32
    reflectance of red, green, blue, NaN where not clear. The window lies inside the grid."""

    grid: Grid
    times: tuple[datetime, ...]
    scene_ids: tuple[tuple[str, ...], ...]
    read: Callable[[int, Window], np.ndarray]


def stack_dates(stack: Stack) -> DateSource:
    """The dates of an in-memory stack as a `DateSource`."""
    bands = [stack.bands.index(b) for b in RGB]

    def read(t: int, window: Window) -> np.ndarray:
        rows, cols = window
        rgb = stack.reflectance[t, bands, rows, cols].astype(np.float32, copy=True)
        rgb[:, ~stack.clear[t, rows, cols]] = np.nan
        return rgb

    return DateSource(stack.grid, stack.times, stack.scene_ids, read)


def chip_window(geometry: object, grid: Grid) -> tuple[int, int, int]:
    """(top row, left col, side) of the square evidence window around a grid-CRS geometry;
    it may reach beyond the grid."""
    x0, y0, x1, y1 = geometry.bounds  # type: ignore[attr-defined]
    inv = ~grid.transform
    c0, r0 = inv @ (x0, y1)
    c1, r1 = inv @ (x1, y0)
    r0i, c0i = math.floor(min(r0, r1)), math.floor(min(c0, c1))
    r1i, c1i = math.ceil(max(r0, r1)), math.ceil(max(c0, c1))
    side = max(max(r1i - r0i, c1i - c0i) + 2 * CHIP_PAD_PX, CHIP_MIN_PX)
    return (r0i + r1i) // 2 - side // 2, (c0i + c1i) // 2 - side // 2, side


def _read_padded(
    source: DateSource, t: int, top: int, left: int, side: int, shift: Shift
) -> np.ndarray:
    """(3, side, side) window of date t at (top, left), NaN off the grid, shifted if needed."""
    pad = 0 if shift is None else math.ceil(max(abs(shift[0]), abs(shift[1]))) + 1
    t0, l0, n = top - pad, left - pad, side + 2 * pad
    out = np.full((3, n, n), np.nan, dtype=np.float32)
    h, w = source.grid.shape
    rs = slice(max(t0, 0), min(t0 + n, h))
    cs = slice(max(l0, 0), min(l0 + n, w))
    if rs.stop > rs.start and cs.stop > cs.start:
        out[:, rs.start - t0 : rs.stop - t0, cs.start - l0 : cs.stop - l0] = source.read(
            t, (rs, cs)
        )
    if shift is not None:
        out = apply_shift(out, shift)
    return out[:, pad : pad + side, pad : pad + side]


def composite_window(comp: Composite, top: int, left: int, side: int) -> np.ndarray:
    """(3, side, side) red, green, blue of a composite at (top, left), NaN off the grid."""
    out = np.full((3, side, side), np.nan, dtype=np.float32)
    h, w = comp.grid.shape
    rs = slice(max(top, 0), min(top + side, h))
    cs = slice(max(left, 0), min(left + side, w))
    if rs.stop > rs.start and cs.stop > cs.start:
        for i, band in enumerate(RGB):
            out[i, rs.start - top : rs.stop - top, cs.start - left : cs.stop - left] = comp.band(
                band
            )[rs, cs]
    return out


@dataclass(frozen=True)
class _Job:
    """One structure's window, the part of it that must be clear, and its first-present period."""

    structure: Structure
    top: int
    left: int
    side: int
    core: Window  # the structure's bounding box + 1 px, in window coordinates
    present: Period | None


def _clear_share(rgb: np.ndarray, core: Window) -> float:
    part = rgb[:, core[0], core[1]]
    return float(np.isfinite(part).all(axis=0).mean()) if part.size else 0.0


def _job(s: Structure, grid: Grid, periods: Sequence[Period]) -> _Job:
    top, left, side = chip_window(s.geometry, grid)
    x0, y0, x1, y1 = s.geometry.bounds
    inv = ~grid.transform
    c0, r0 = inv @ (x0, y1)
    c1, r1 = inv @ (x1, y0)
    core = (
        slice(max(math.floor(r0) - top - 1, 0), min(math.ceil(r1) - top + 1, side)),
        slice(max(math.floor(c0) - left - 1, 0), min(math.ceil(c1) - left + 1, side)),
    )
    present = next((p for p in periods if p.end == s.first_seen_end), None)
    return _Job(s, top, left, side, core, present)


class _Picker:
    """Chooses and reads the before/after pictures of one structure."""

    def __init__(
        self,
        source: DateSource,
        composites: Sequence[Composite],
        shifts: Sequence[Shift],
        threshold_px: float,
        min_clear: float,
    ) -> None:
        self.source = source
        self.composites = composites  # made one at a time (a `Composites` makes each when asked)
        self.periods = [c.period for c in composites]
        self.min_clear = min_clear
        self.shifts = [
            s if s is not None and math.hypot(*s) > threshold_px else None
            for s in (list(shifts) + [None] * len(source.times))[: len(source.times)]
        ]

    def acquisition(self, job: _Job, candidates: Sequence[int]) -> EvidenceImage | None:
        """The first of the candidate dates that is clear over the structure."""
        for t in candidates:
            rgb = _read_padded(self.source, t, job.top, job.left, job.side, self.shifts[t])
            if _clear_share(rgb, job.core) >= self.min_clear:
                when = self.source.times[t].date()
                return EvidenceImage(
                    rgb, when.isoformat(), when, "acquisition", self.source.scene_ids[t]
                )
        return None

    def composite(self, job: _Job, indices: Sequence[int], last: Composite) -> EvidenceImage:
        """The first of the composites `indices` that is clear over the structure, else `last`
        (taken anyway)."""
        for i in [*indices, -1]:
            comp = self.composites[i] if i >= 0 else last
            rgb = composite_window(comp, job.top, job.left, job.side)
            if _clear_share(rgb, job.core) >= self.min_clear or i < 0:
                return EvidenceImage(
                    rgb, f"composite {comp.period.label}", None, "composite", comp.scene_ids
                )
        raise AssertionError("the last composite is taken anyway")

    def before(self, job: _Job, baseline: Composite) -> EvidenceImage:
        split = job.present.start if job.present else baseline.period.end
        dates = [t for t, when in enumerate(self.source.times) if when.date() < split]
        found = self.acquisition(job, dates[::-1])
        if found is None:
            earlier = [i for i, p in enumerate(self.periods) if p.end <= split][::-1]
            found = self.composite(job, earlier, baseline)
        return found

    def after(self, job: _Job, latest: Composite) -> EvidenceImage:
        present = job.present
        found = None
        if present is not None:
            days = [when.date() for when in self.source.times]
            within = [t for t, d in enumerate(days) if present.contains(d)]
            later = [t for t, d in enumerate(days) if d >= present.end]
            found = self.acquisition(job, within[::-1]) or self.acquisition(job, later)
        if found is None:
            start = present.start if present else latest.period.start
            from_start = [i for i, p in enumerate(self.periods) if p.start >= start]
            found = self.composite(job, from_start, latest)
        return found


def chip_order(structures: Sequence[Structure]) -> list[Structure]:
    """The structures that get evidence (and chips, up to a limit), in order: the confirmed ones
    (those the counts speak of), then the candidates still alive, each the most confident first.
    A dropped candidate (it did not persist: mostly a cloud or shadow the mask missed) gets none,
    so a monitoring run's chips go to what stays from run to run, not to what each new scene
    reshuffles."""
    alive = [s for s in structures if s.status != "dropped"]
    return sorted(alive, key=lambda s: (not s.confirmed, -s.confidence, s.id))


def structure_evidence(
    source: DateSource,
    structures: Sequence[Structure],
    *,
    composites: Sequence[Composite],
    baseline: Composite,
    latest: Composite,
    shifts: Sequence[Shift] = (),
    threshold_px: float = 0.25,
    limit: int | None = None,
    min_clear: float = 0.9,
) -> tuple[StructureEvidence, ...]:
    """Before/after evidence for the first `limit` structures in `chip_order` (all when None).

    composites: the period composites (fallbacks); baseline, latest: the run's before and after
    composites (last fallbacks); shifts: per date of `source`, the measured co-registration
    shift, applied when larger than `threshold_px`.
    """
    chosen = chip_order(structures)
    if limit is not None:
        chosen = chosen[: max(limit, 0)]
    picker = _Picker(source, composites, shifts, threshold_px, min_clear)
    periods = picker.periods
    out = []
    for s in chosen:
        job = _job(s, source.grid, periods)
        window = source.grid.window(job.top, job.left, job.side, job.side)
        out.append(
            StructureEvidence(s.id, window, picker.before(job, baseline), picker.after(job, latest))
        )
    return tuple(out)


def evidence_for(
    source: Stack | DateSource, analysis: Analysis, config: Config
) -> tuple[StructureEvidence, ...]:
    """`structure_evidence` of a run's analysis, as many as the run draws chips for."""
    dates = stack_dates(source) if isinstance(source, Stack) else source
    out = config.output
    # The threshold the analysis applied: the dates of its baseline decide it.
    n_refs = len(dates_in(dates.times, analysis.baseline.period))
    return structure_evidence(
        dates,
        analysis.structures,
        composites=analysis.per_period,
        baseline=analysis.baseline,
        latest=analysis.after,
        shifts=analysis.date_shifts if config.change.coregister else (),
        threshold_px=date_shift_threshold(config, n_refs),
        limit=out.max_chips if out.chips else 0,
    )
