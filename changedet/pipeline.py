"""Glue only: wires the stages for one AOI through typed seams (`changedet.seams`).

AOI → grid → scenes (Searcher) → masked, harmonised stack (Reader) → the time-series detector
(`core.timeseries`) → RunResult → files (Writer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from changedet.aoi import aoi_mask, crop_to_footprints, grid_for, to_grid_crs
from changedet.blas import one_blas_thread
from changedet.config import Config, to_dict
from changedet.core.carry import Known, carry_ids
from changedet.core.clip import (
    Window,
    centre_point,
    clip_berms,
    clip_structures,
    crop_change,
    crop_composite,
    window_of,
)
from changedet.core.coverage import measure_coverage
from changedet.core.evidence import evidence_for
from changedet.core.periods import make_periods
from changedet.core.reuse import ArrayMemo
from changedet.core.review import Verdict, apply_review
from changedet.core.stream import analyse_series, as_series, series_dates
from changedet.core.timeseries import Analysis, PeriodMemo, StageTimer
from changedet.core.track import rasterize_geometries
from changedet.errors import ConfigError, OutputError, silence_library_noise
from changedet.models import (
    AOI,
    FALSE_POSITIVE,
    Composite,
    Composites,
    DateSeries,
    Grid,
    Period,
    Progress,
    ReadResult,
    RunResult,
    Scene,
    SearchResult,
    SkippedScene,
    no_progress,
)
from changedet.read.kept import DateKeep
from changedet.read.store import ArraySpill
from changedet.seams import Prober, Reader, Searcher, Writer

__all__ = [
    "PipelineIO",
    "RunSummary",
    "SearchReport",
    "periods_for",
    "run_aoi",
    "safe_out_dir",
    "search_aoi",
]


@dataclass(frozen=True)
class PipelineIO:
    """The I/O boundaries, injectable for tests (`changedet.lab.fakes`): catalog search, SCL
    probe, pixel reads, output writing."""

    search: Searcher
    read: Reader
    probe: Prober
    write: Writer

    @classmethod
    def default(cls) -> PipelineIO:
        from changedet.catalog.search import search_scenes
        from changedet.outputs.write import write_run_outputs
        from changedet.read.probe import probe_details
        from changedet.read.stack import read_series

        return cls(
            search=search_scenes, read=read_series, probe=probe_details, write=write_run_outputs
        )


# --- search --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchReport:
    """What `changedet search` shows for one AOI."""

    aoi_id: str
    source: str
    used: tuple[Scene, ...]
    dropped: tuple[SkippedScene, ...]
    clear: Mapping[str, float] = field(
        default_factory=dict
    )  # scene id → clear fraction around the AOI (probe)
    notes: tuple[str, ...] = ()

    def rows(self) -> list[tuple[str, str, str, str, str, str]]:
        out = []
        for s in self.used:
            clear = self.clear.get(s.id)
            skipped = next((d.reason for d in self.dropped if d.scene_id == s.id), None)
            out.append(
                (
                    s.id,
                    s.datetime.strftime("%Y-%m-%d %H:%M"),
                    s.tile or "-",
                    "-" if s.cloud_cover is None else f"{s.cloud_cover:.1f}",
                    "-" if clear is None else f"{100 * clear:.1f}",
                    f"dropped: {skipped}" if skipped else "used",
                )
            )
        used_ids = {s.id for s in self.used}
        for d in self.dropped:
            if d.scene_id not in used_ids:
                out.append((d.scene_id, "-", "-", "-", "-", f"dropped: {d.reason}"))
        return out

    def to_json(self) -> dict[str, Any]:
        dropped = {d.scene_id: d.reason for d in self.dropped}
        return {
            "aoi": self.aoi_id,
            "source": self.source,
            "scenes": [
                {
                    "id": s.id,
                    "datetime": s.datetime.isoformat(),
                    "tile": s.tile,
                    "cloud_cover": s.cloud_cover,
                    "aoi_clear_fraction": self.clear.get(s.id),
                    "used": s.id not in dropped,
                    "reason": dropped.get(s.id),
                }
                for s in self.used
            ],
            "dropped": [
                {"id": d.scene_id, "reason": d.reason}
                for d in self.dropped
                if d.scene_id not in {s.id for s in self.used}
            ],
            "notes": list(self.notes),
        }


def _search(
    aoi: AOI, config: Config, io: PipelineIO, progress: Progress, *, allow_empty: bool = False
) -> SearchResult:
    return io.search(
        aoi,
        config.catalog,
        start=config.time.start,
        end=config.time.end,
        bands=(*config.read.bands, "scl"),
        progress=progress,
        allow_empty=allow_empty,
    )


def search_aoi(
    aoi: AOI,
    config: Config,
    *,
    probe: bool = False,
    progress: Progress = no_progress,
    io: PipelineIO | None = None,
) -> SearchReport:
    """The scenes a run would consider for `aoi`, optionally probed for AOI-local clear sky."""
    io = io or PipelineIO.default()
    found = _search(aoi, config, io, progress, allow_empty=True)
    clear: dict[str, float] = {}
    dropped = list(found.dropped)
    if probe and found.scenes:
        grid = _grids(aoi, config, found.scenes)[1]  # the window a run reads: its verdicts
        probes = io.probe(
            found.scenes,
            grid,
            aoi_mask=aoi_mask(aoi, grid),
            read_config=config.read,
            mask_config=config.mask,
            progress=progress,
        )
        for scene_id, probe_result in probes.items():
            if math.isfinite(probe_result.clear_fraction):
                clear[scene_id] = probe_result.clear_fraction
            if probe_result.skip_reason:
                dropped.append(
                    SkippedScene(
                        scene_id, probe_result.skip_reason, unreadable=probe_result.unreadable
                    )
                )
    return SearchReport(aoi.id, found.source, found.scenes, tuple(dropped), clear, found.notes)


# --- run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    aoi_id: str
    out_dir: Path
    n_scenes: int
    n_confirmed: int
    n_candidates: int
    synthetic: bool
    headline: tuple[str, ...] = ()  # what was found and where the run could see (outputs.headline)
    warnings: tuple[str, ...] = ()  # e.g. only part of the AOI could be analysed
    # (used, configured) when too few clear periods let the run ask less persistence (a pair)
    persistence: tuple[int, int] | None = None

    @property
    def persistence_checked(self) -> bool:
        """False when every structure rests on one clear period (run.json's comparison)."""
        return self.persistence is None or self.persistence[0] > 1

    def describe(self) -> str:
        tag = " [SYNTHETIC data]" if self.synthetic else ""
        found = f"{self.n_confirmed} confirmed new structure(s)"
        if not self.persistence_checked:
            found = f"{self.n_confirmed} new structure(s) (persistence not checked)"
        elif self.persistence is not None:
            used, asked = self.persistence
            found += f" (over {used} clear periods, not the {asked} asked)"
        line = (
            f"{self.aoi_id}: {found}, "
            f"{self.n_candidates} unconfirmed candidate(s) from {self.n_scenes} date(s) "
            f"→ {self.out_dir}{tag}"
        )
        return "\n".join([line, *(f"  {text}" for text in self.headline)])


def safe_out_dir(out_root: Path, aoi_id: str) -> Path:
    """OUT/<aoi_id>, refusing any id that would escape OUT."""
    root = out_root.resolve()
    target = (root / aoi_id).resolve()
    if target.parent != root or aoi_id in ("", ".", ".."):
        raise OutputError(
            f"AOI id '{aoi_id}' is not a safe folder name; rename the AOI's id property"
        )
    return target


def periods_for(config: Config) -> list[Period]:
    """The composite periods of the configured time range (ConfigError when too few)."""
    periods = make_periods(config.time.start, config.time.end, config.time.period)
    if len(periods) < 2:
        finer = " or set time.period = 'month'" if config.time.period != "month" else ""
        raise ConfigError(
            f"time range {config.time.start}..{config.time.end} gives {len(periods)} "
            f"{config.time.period} period; a comparison needs two: widen --start/--end{finer}"
        )
    return periods


def run_aoi(
    aoi: AOI,
    config: Config,
    *,
    out_root: Path,
    progress: Progress = no_progress,
    io: PipelineIO | None = None,
    review: Mapping[str, Verdict] | None = None,
    memo: PeriodMemo | None = None,
    reuse: ArrayMemo | None = None,
    keep: DateKeep | None = None,
    known: Mapping[str, Known] | None = None,
) -> RunSummary:
    """Process one AOI end to end and write OUT/<aoi_id>/ atomically. For the monitor
    (`changedet.monitor`): `review`, the analyst's verdicts by structure id, shown in the
    outputs (false positives left out of the counts); `memo`, periods' change computed before;
    `reuse`, shifts and composites computed before (`core.reuse`); `keep`, dates read before
    (`read.kept`); `known`, the ledger's structures (footprints in EPSG:4326), whose ids the
    same structures keep (`core.carry`)."""
    with one_blas_thread():  # the run spreads its work over the cores itself
        return _run_aoi(aoi, config, out_root, progress, io, review, memo, reuse, keep, known)


def _run_aoi(
    aoi: AOI,
    config: Config,
    out_root: Path,
    progress: Progress,
    io: PipelineIO | None,
    review: Mapping[str, Verdict] | None,
    memo: PeriodMemo | None,
    reuse: ArrayMemo | None,
    keep: DateKeep | None,
    known: Mapping[str, Known] | None,
) -> RunSummary:
    silence_library_noise()  # before the read pool's threads start
    started = datetime.now(UTC).isoformat()  # run.json: a later run's outputs are kept
    io = io or PipelineIO.default()
    timer = StageTimer()
    out_dir = safe_out_dir(Path(out_root), aoi.id)
    periods = periods_for(config)

    with timer("search"):
        found = _search(aoi, config, io, progress)
    aoi_grid, grid = _grids(aoi, config, found.scenes)
    inside = aoi_mask(aoi, grid)
    with timer("read"):
        read = io.read(
            found.scenes,
            grid,
            bands=config.read.bands,
            aoi_mask=inside,
            read_config=config.read,
            mask_config=config.mask,
            progress=progress,
            keep=keep,
        )
    # A DateStore (dates on disk) from the real reader, a Stack from the fakes: both stream.
    stack = as_series(read.stack)
    known_here = _on_grid(known or {}, grid)
    polygon = to_grid_crs(aoi.geometry, grid.crs)
    try:
        analysis = analyse_series(
            stack,
            inside=inside,
            periods=periods,
            config=config,
            progress=progress,
            timer=timer,
            memo=memo,
            reuse=reuse,
            known_pixels=_known_pixels(known_here, grid, inside, polygon),
            aoi_polygon=polygon,
            spill=ArraySpill(),  # the composites, out of memory: a history of years fits
        )
        analysis = apply_review(carry_ids(analysis, known_here), review or {})
        result = _run_result(
            _Run(aoi, config, found, read, stack, periods, timer, inside, started),
            analysis,
            aoi_grid,
        )
        if known is not None:
            kept = sum(1 for s in result.structures if s.id in known)
            ids = {"known": len(known), "kept": kept}
            result = replace(result, provenance={**result.provenance, "known_ids": ids})
    finally:
        _close(stack)  # the dates' disk space; composites are all the outputs need
    with timer("write"):
        io.write(result, out_dir, config=config.output, progress=progress)
    from changedet.outputs.headline import headline

    told = headline(result)
    plan = analysis.plan.comparison if analysis.plan is not None else None
    return RunSummary(
        aoi_id=aoi.id,
        out_dir=out_dir,
        n_scenes=len(stack.times),
        # Counted as the headline counts: an analyst's false positive is not a structure.
        n_confirmed=sum(
            1 for s in analysis.structures if s.confirmed and s.review != FALSE_POSITIVE
        ),
        n_candidates=told.n_unconfirmed,  # as the headline: reviewed false positives left out
        persistence=(
            (plan.min_persistence, plan.wanted_persistence)
            if plan is not None and plan.min_persistence < plan.wanted_persistence
            else None
        ),
        synthetic=result.provenance.get("synthetic", False),
        headline=told.lines(),
        warnings=told.warnings,
    )


def _on_grid(known: Mapping[str, Known], grid: Grid) -> dict[str, Known]:
    """`known` with its EPSG:4326 footprints in the grid's CRS (one transformer for all)."""
    names = list(known)
    if not names:
        return {}
    moved = to_grid_crs(np.array([known[n].footprint for n in names], dtype=object), grid.crs)
    return {n: replace(known[n], footprint=g) for n, g in zip(names, moved, strict=True)}


def _known_pixels(
    known: Mapping[str, Known], grid: Grid, inside: np.ndarray, polygon: Any
) -> np.ndarray | None:
    """Where the known structures (those not vanished: the ledger's candidates and dropped ones
    too, all once reported here) lie inside the AOI: a structure there stays the AOI's when its
    grown outline moves its centre out (`Ledger.within`), instead of leaving the ledger
    as no longer detected. Only those whose known centre lies in the AOI `polygon` (grid CRS):
    `--ids-from` a run of a wider outline must not bring in structures this one never held."""
    import shapely

    standing = [k.footprint for k in known.values() if k.vanished_after is None]
    centres = np.array([centre_point(g) for g in standing], dtype=object)
    held = np.asarray(shapely.contains(polygon, centres), dtype=bool)
    standing = [g for g, ok in zip(standing, held.reshape(-1), strict=True) if ok]
    pixels = rasterize_geometries(standing, grid) > 0
    return pixels & inside if pixels.any() else None


def _grids(aoi: AOI, config: Config, scenes: Sequence[Scene]) -> tuple[Grid, Grid]:
    """(the AOI's own grid: what outputs show, the context window around it: what is read and
    what statistics see), both cropped to where scenes have data."""
    aoi_grid = crop_to_footprints(grid_for(aoi), aoi, scenes)
    if config.read.context_m <= 0:
        return aoi_grid, aoi_grid
    context = grid_for(aoi, context_m=config.read.context_m)
    return aoi_grid, crop_to_footprints(context, aoi, scenes, within_aoi=False)


@dataclass(frozen=True)
class _Run:
    """What one AOI run gathered before its analysis."""

    aoi: AOI
    config: Config
    found: SearchResult
    read: ReadResult
    stack: Any  # the dates (`as_series`)
    periods: list[Period]
    timer: StageTimer
    inside: np.ndarray  # the AOI polygon's pixels on the context window
    started: str  # when the run began (UTC, ISO 8601)


def _run_result(run: _Run, analysis: Analysis, aoi_grid: Grid) -> RunResult:
    """The RunResult of an analysis on the context window, as the AOI shows it."""
    aoi, config, stack = run.aoi, run.config, run.stack
    shown, shown_inside = _on_aoi(analysis, aoi, aoi_grid, run.inside)
    aoi_grid = shown.baseline.grid  # within the context window
    synthetic = any(s.synthetic for s in run.found.scenes)
    return RunResult(
        aoi=aoi,
        grid=aoi_grid,
        config_fingerprint=config.fingerprint(),
        scenes_used=tuple(
            s for s in run.found.scenes if any(s.id in ids for ids in stack.scene_ids)
        ),
        scenes_skipped=(*run.found.dropped, *run.read.skipped),
        before=shown.baseline,
        after=shown.after,
        change=shown.change,
        structures=shown.structures,
        min_mapping_unit_m2=config.change.min_area_m2,
        berms=shown.berms,
        counts=analysis.ledger.counts,
        composites=shown.per_period,
        coverage=measure_coverage(
            shown_inside,
            shown.baseline,
            shown.per_period,
            aoi_area_m2=float(to_grid_crs(aoi.geometry, aoi_grid.crs).area),
            min_clear_obs=config.change.min_clear_obs,
            warn_below=config.output.coverage_warning,
        ),
        evidence=evidence_for(series_dates(stack), analysis, config),  # per-date pixels
        config=to_dict(config),
        timings=run.timer.timings,
        provenance={
            **_provenance(config, run.found, stack, synthetic, run.read),
            "started": run.started,
            "comparison": _comparison(analysis, run.periods),
            "context_window": _context_window(analysis.baseline.grid, config),
            "date_shifts_px": {
                t.date().isoformat(): None if shift is None else [round(v, 3) for v in shift]
                for t, shift in zip(stack.times, analysis.date_shifts, strict=False)
            },
        },
    )


def _context_window(grid: Grid, config: Config) -> dict[str, Any]:
    """The window a run read and estimated every statistic on: two runs (two outlines of a site)
    with the same one find the same structures in the part they share."""
    return {
        "crs": grid.crs,
        "bounds": [round(v, 2) for v in grid.bounds],
        "width": grid.width,
        "height": grid.height,
        "context_m": config.read.context_m,
    }


def _on_aoi(
    analysis: Analysis, aoi: AOI, aoi_grid: Grid, inside: np.ndarray
) -> tuple[Analysis, np.ndarray]:
    """The analysis as the AOI shows it: rasters cropped to its own grid, change evidence only
    inside its polygon, outlines and berm lines clipped to the polygon (`core.clip`); and the
    AOI mask on that grid (`inside`, the mask on the context window, cropped)."""
    aoi_grid, win = window_of(aoi_grid, analysis.baseline.grid)
    polygon = to_grid_crs(aoi.geometry, aoi_grid.crs)
    shown_inside = inside[win.slices]
    shown = replace(
        analysis,
        baseline=crop_composite(analysis.baseline, aoi_grid, win),
        after=crop_composite(analysis.after, aoi_grid, win),
        per_period=_crops(analysis.per_period, aoi_grid, win),
        change=crop_change(analysis.change, aoi_grid, win, shown_inside),
        structures=clip_structures(analysis.structures, polygon),
        berms=clip_berms(analysis.berms, polygon, {s.id for s in analysis.structures}),
    )
    return shown, shown_inside


def _crops(composites: Sequence[Composite], grid: Grid, win: Window) -> Sequence[Composite]:
    """Each composite cropped to `win`, made when asked for where they are (`Composites`)."""
    if isinstance(composites, Composites):
        return composites.map(lambda c: crop_composite(c, grid, win))
    return tuple(crop_composite(c, grid, win) for c in composites)


def _comparison(analysis: Analysis, periods: Sequence[Period]) -> dict[str, Any]:
    """run.json's "comparison": the mode, the baseline used and the persistence asked."""
    plan = analysis.plan
    if plan is None:
        return {}
    c = plan.comparison
    return {
        "mode": c.mode,
        "baseline": [periods[i].label for i in c.baseline],
        "clear_periods": [periods[i].label for i in c.clear],
        "min_persistence": c.min_persistence,
        # the structures rest on one later clear period: their persistence was not checked
        "persistence_checked": c.min_persistence > 1 or c.wanted_persistence <= 1,
        "configured": {
            "baseline_periods": c.wanted_baseline,
            "min_persistence": c.wanted_persistence,
        },
        "note": plan.description,
    }


def _close(series: DateSeries) -> None:
    close = getattr(series, "close", None)
    if close is not None:
        close()


def _provenance(
    config: Config, found: SearchResult, stack: DateSeries, synthetic: bool, read: ReadResult
) -> dict[str, Any]:
    return {  # software versions are run.json's `versions`
        "catalog": found.source,
        "collection": config.catalog.collection,
        "time_range": [config.time.start.isoformat(), config.time.end.isoformat()],
        "period": config.time.period,
        "baseline_periods": config.time.baseline_periods,
        "dates": [t.isoformat() for t in stack.times],
        "search_notes": list(found.notes),
        "search_stopped": found.stopped,
        "read_notes": list(read.notes),
        "offsets_corrected": list(read.offsets),
        "scenes_without_scl": list(read.unmasked),
        "bytes_fetched": read.bytes_fetched,
        "cache_hits": read.cache_hits,
        "synthetic": synthetic,
    }
