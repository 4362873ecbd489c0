"""Glue only: wires the stages for one AOI. I/O comes in as injected callables.

AOI → grid → scenes → masked, harmonised stack → period composites → change of each period
against the baseline → objects → ledger (+ berms) → outputs.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from changedet import __version__
from changedet.aoi import aoi_mask, grid_for, to_grid_crs
from changedet.config import Config
from changedet.errors import ConfigError, NoScenesError, OutputError
from changedet.models import (
    AOI,
    Berm,
    ChangeMap,
    Composite,
    Grid,
    Period,
    Progress,
    RunResult,
    Scene,
    SkippedScene,
    Stack,
    Structure,
    no_progress,
)

__all__ = [
    "Analysis",
    "PipelineIO",
    "RunSummary",
    "SearchReport",
    "analyse_stack",
    "periods_for",
    "run_aoi",
    "search_aoi",
]


@dataclass(frozen=True)
class PipelineIO:
    """The three I/O boundaries, injectable for tests: catalog search, pixel reads, output writing."""

    search: Callable[..., Any]
    read: Callable[..., Any]
    probe: Callable[..., Any]
    write: Callable[..., list[Path]]

    @classmethod
    def default(cls) -> PipelineIO:
        from changedet.catalog.search import search_scenes
        from changedet.outputs.write import write_run_outputs
        from changedet.read.probe import probe_details
        from changedet.read.stack import read_stack

        return cls(
            search=search_scenes, read=read_stack, probe=probe_details, write=write_run_outputs
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
    )  # scene id → AOI clear fraction (probe)
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


def _search(aoi: AOI, config: Config, io: PipelineIO, progress: Progress, **kwargs: Any) -> Any:
    return io.search(
        aoi,
        config.catalog,
        start=config.time.start,
        end=config.time.end,
        bands=(*config.read.bands, "scl"),
        progress=progress,
        **kwargs,
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
        grid = _crop_to_footprints(grid_for(aoi), aoi, found.scenes)
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
                dropped.append(SkippedScene(scene_id, probe_result.skip_reason))
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

    def describe(self) -> str:
        tag = " [SYNTHETIC sample data]" if self.synthetic else ""
        return (
            f"{self.aoi_id}: {self.n_confirmed} confirmed new structure(s), "
            f"{self.n_candidates} unconfirmed candidate(s) from {self.n_scenes} date(s) "
            f"→ {self.out_dir}{tag}"
        )


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - t0, 3)


def safe_out_dir(out_root: Path, aoi_id: str) -> Path:
    """OUT/<aoi_id>, refusing any id that would escape OUT."""
    root = out_root.resolve()
    target = (root / aoi_id).resolve()
    if target.parent != root or aoi_id in ("", ".", ".."):
        raise OutputError(
            f"AOI id '{aoi_id}' is not a safe folder name; rename the AOI's id property"
        )
    return target


def _crop_to_footprints(grid: Grid, aoi: AOI, scenes: tuple[Scene, ...]) -> Grid:
    """Shrink the AOI grid to where scenes have data (keeps the pixel lattice)."""
    footprints = [s.footprint for s in scenes if s.footprint is not None]
    if not footprints or len(footprints) != len(scenes):
        return grid
    covered = shapely.union_all(footprints).intersection(aoi.geometry)
    if covered.is_empty:
        return grid
    xmin, ymin, xmax, ymax = to_grid_crs(covered, grid.crs).bounds
    gx0, _, _, gy1 = grid.bounds
    res = grid.res
    col0 = max(0, math.floor((xmin - gx0) / res))
    col1 = min(grid.width, math.ceil((xmax - gx0) / res))
    row0 = max(0, math.floor((gy1 - ymax) / res))
    row1 = min(grid.height, math.ceil((gy1 - ymin) / res))
    if col1 <= col0 or row1 <= row0:
        return grid
    return grid.window(row0, col0, row1 - row0, col1 - col0)


def periods_for(config: Config) -> list[Period]:
    """The composite periods of the configured time range (ConfigError when too few)."""
    from changedet.core.periods import make_periods

    periods = make_periods(config.time.start, config.time.end, config.time.period)
    needed = config.time.baseline_periods + 1
    if len(periods) < needed:
        raise ConfigError(
            f"time range {config.time.start}..{config.time.end} gives {len(periods)} {config.time.period} "
            f"period(s); need at least {needed} (baseline {config.time.baseline_periods} + 1); widen --start/--end"
        )
    return periods


# A period joins the baseline only when at least this share of the AOI was clear in it.
BASELINE_MIN_CLEAR = 0.5


def _span(periods: list[Period]) -> Period:
    """One period covering `periods`, labelled by its first and last (e.g. '2024-05..2024-06')."""
    first, last = periods[0], periods[-1]
    label = first.label if first == last else f"{first.label}..{last.label}"
    return Period(first.start, last.end, label)


@dataclass(frozen=True)
class Analysis:
    """What the time-series core made of one stack (no I/O)."""

    baseline: Composite
    after: Composite
    change: ChangeMap  # baseline against `after`, the overall picture
    per_period: tuple[Composite, ...]
    ledger: Any  # track.Ledger
    structures: tuple[Structure, ...]  # the ledger's structures with berm flags set
    berms: tuple[Berm, ...]
    date_shifts: tuple[tuple[float, float] | None, ...] = ()  # per stack date, before correction

    @property
    def footprints(self) -> np.ndarray:
        """(H, W) int32: i + 1 where `structures[i]` stands, 0 elsewhere."""
        return np.asarray(self.ledger.footprints)


def analyse_stack(
    stack: Stack,
    *,
    inside: np.ndarray,
    periods: list[Period],
    config: Config,
    id_prefix: str,
    progress: Progress = no_progress,
    timer: _Timer | None = None,
) -> Analysis:
    """Period composites → baseline (the first clear-enough periods) → change of each later period
    against it → objects of new structures → ledger → berms. `inside` is the AOI mask on the stack
    grid."""
    from changedet.core.berms import berm_evidence, extract_berms, link_berms, ring_test
    from changedet.core.change import COREG_BANDS, detect_change, split_change
    from changedet.core.composite import composite
    from changedet.core.coreg import coregister_dates
    from changedet.core.objects import extract_objects
    from changedet.core.periods import baseline_indices
    from changedet.core.track import PeriodObservation, build_ledger

    timer = timer or _Timer()
    cc = config.change
    grid = stack.grid
    # The baseline: the first periods clear enough inside the AOI (decided on masks alone).
    clear_obs = [
        stack.clear[[i for i, t in enumerate(stack.times) if p.contains(t.date())]].sum(axis=0)
        for p in periods
    ]
    clear = [float((n[inside] >= cc.min_clear_obs).mean()) for n in clear_obs]
    chosen = baseline_indices(
        periods,
        clear,
        baseline_periods=config.time.baseline_periods,
        min_clear_fraction=BASELINE_MIN_CLEAR,
    )
    last_baseline = max(chosen)
    if last_baseline >= len(periods) - 1:
        raise NoScenesError(
            f"the baseline takes every period up to {periods[last_baseline].label}, leaving "
            "none to compare; start the time range earlier or extend its end"
        )
    baseline_span = _span(periods[min(chosen) : last_baseline + 1])

    # Line every date up with the baseline (never with later dates, so appending a period does
    # not move what came before).
    date_shifts: tuple[tuple[float, float] | None, ...] = ()
    coreg_band = next((b for b in COREG_BANDS if b in stack.bands), None)
    if cc.coregister and coreg_band is not None:
        with timer("coregister"):
            stack, date_shifts = coregister_dates(
                stack,
                band=coreg_band,
                threshold_px=cc.coreg_threshold_px,
                reference_dates=[
                    i for i, t in enumerate(stack.times) if baseline_span.contains(t.date())
                ],
            )
    with timer("composite"):
        per_period = [composite(stack, p, min_clear_obs=cc.min_clear_obs) for p in periods]
        baseline = composite(stack, baseline_span, min_clear_obs=cc.min_clear_obs)
        n_after = len(chosen)
        after = composite(stack, _span(periods[-n_after:]), min_clear_obs=cc.min_clear_obs)
        progress("composite", 1, 1)

    # Baseline periods tell the ledgers where a structure was clearly absent.
    absent = [
        PeriodObservation(
            period=comp.period,
            objects=(),
            observed=(comp.count >= cc.min_clear_obs) & inside,
            scene_ids=comp.scene_ids,
            baseline=True,
        )
        for comp in per_period[: last_baseline + 1]
    ]
    observations = list(absent)
    monitored = per_period[last_baseline + 1 :]
    roof_like = cc.structures == "roof-like"
    per_period_cc = replace(cc, z_threshold=cc.roof_z_threshold) if roof_like else cc
    with timer("change"):
        for i, comp in enumerate(monitored):
            progress("change per period", i, len(monitored))
            cmap = detect_change(baseline, comp, per_period_cc)
            observed = np.isfinite(cmap.score) & inside
            if roof_like:
                cmap = split_change(cmap, min_area_m2=cc.min_area_m2)[0]
            objects = extract_objects(cmap, cc) if observed.any() else []
            observations.append(
                PeriodObservation(
                    period=comp.period,
                    objects=tuple(objects),
                    observed=observed,
                    scene_ids=comp.scene_ids,
                )
            )
        progress("change per period", len(monitored), len(monitored))
        change = detect_change(baseline, after, cc)

    with timer("track"):
        ledger = build_ledger(
            observations,
            grid=grid,
            config=config.track,
            id_prefix=id_prefix,
            min_area_m2=cc.min_area_m2,
            aoi_mask=inside,
        )
    structures: tuple[Structure, ...] = ledger.structures
    berms: tuple[Berm, ...] = ()
    if config.berms.enabled:
        with timer("berms"):
            # New roofs' own edges look like ridges: keep them out of the berm evidence.
            evidence = berm_evidence(baseline, after, exclude=ledger.footprints > 0)
            structures = tuple(
                ring_test(structures, evidence, grid, config.berms, footprints=ledger.footprints)
            )
            berms = tuple(
                link_berms(extract_berms(evidence, grid, config.berms), structures, config.berms)
            )
    return Analysis(
        baseline, after, change, tuple(per_period), ledger, structures, berms, date_shifts
    )


def run_aoi(
    aoi: AOI,
    config: Config,
    *,
    out_root: Path,
    progress: Progress = no_progress,
    io: PipelineIO | None = None,
) -> RunSummary:
    """Process one AOI end to end and write OUT/<aoi_id>/ atomically."""
    io = io or PipelineIO.default()
    timer = _Timer()
    out_dir = safe_out_dir(Path(out_root), aoi.id)
    periods = periods_for(config)

    with timer("search"):
        found = _search(aoi, config, io, progress)
    grid = _crop_to_footprints(grid_for(aoi), aoi, found.scenes)
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
        )
    stack: Stack = read.stack
    analysis = analyse_stack(
        stack,
        inside=inside,
        periods=periods,
        config=config,
        id_prefix=aoi.id,
        progress=progress,
        timer=timer,
    )
    synthetic = any(s.synthetic for s in found.scenes)
    result = RunResult(
        aoi=aoi,
        grid=grid,
        config_fingerprint=config.fingerprint(),
        scenes_used=tuple(s for s in found.scenes if any(s.id in ids for ids in stack.scene_ids)),
        scenes_skipped=(*found.dropped, *read.skipped),
        before=analysis.baseline,
        after=analysis.after,
        change=analysis.change,
        structures=analysis.structures,
        min_mapping_unit_m2=config.change.min_area_m2,
        berms=analysis.berms,
        counts=analysis.ledger.counts,
        composites=analysis.per_period,
        timings=timer.timings,
        provenance={
            **_provenance(config, found, stack, synthetic, read),
            "date_shifts_px": {
                t.date().isoformat(): None if shift is None else [round(v, 3) for v in shift]
                for t, shift in zip(stack.times, analysis.date_shifts, strict=False)
            },
        },
    )
    with timer("write"):
        io.write(result, out_dir, config=config.output, progress=progress)
    return RunSummary(
        aoi_id=aoi.id,
        out_dir=out_dir,
        n_scenes=len(stack.times),
        n_confirmed=len(analysis.ledger.confirmed),
        n_candidates=len(analysis.ledger.candidates),
        synthetic=synthetic,
    )


def _provenance(
    config: Config, found: Any, stack: Stack, synthetic: bool, read: Any
) -> dict[str, Any]:
    import rasterio

    return {
        "changedet_version": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "catalog": found.source,
        "collection": config.catalog.collection,
        "time_range": [config.time.start.isoformat(), config.time.end.isoformat()],
        "period": config.time.period,
        "baseline_periods": config.time.baseline_periods,
        "dates": [t.isoformat() for t in stack.times],
        "search_notes": list(found.notes),
        "read_notes": list(getattr(read, "notes", ())),
        "bytes_fetched": getattr(read, "bytes_fetched", None),
        "cache_hits": getattr(read, "cache_hits", None),
        "synthetic": synthetic,
    }
