"""In-memory implementations of the pipeline's four seams (`changedet.seams`), for tests and benches.

Each fake behaves like the real stage on the inputs it is given, and refuses what the real one
would refuse (same exception types): a search filters by collection, dates and AOI footprint;
the probe applies the real selection rule (`read.probe.selection_reason`) to given clear
fractions; the reader hands back its stack cut to the requested scenes, bands and grid window;
the writer checks the result as the real writer does and builds its `run.json` record, but keeps
everything in memory. What a fake cannot honestly answer (a grid off its stack's pixel lattice,
a scene it holds no pixels for) is a `ValueError` naming the fake: a broken test setup, never
mistaken for a data problem the pipeline should handle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from shapely.geometry import box

from changedet.aoi import reproject_geometry
from changedet.config import CatalogConfig, MaskConfig, OutputConfig, ReadConfig
from changedet.errors import ConfigError, NoScenesError, OutputError, ReadError
from changedet.models import (
    AOI,
    Asset,
    Grid,
    Probe,
    Progress,
    ReadResult,
    RunResult,
    Scene,
    SearchResult,
    SkippedScene,
    Stack,
    no_progress,
)

__all__ = ["FakeCatalog", "FakeProber", "MemoryWriter", "StackReader", "scenes_for_stack"]

MEMORY_SOURCE = "memory://fake-catalog"


def scenes_for_stack(
    stack: Stack,
    *,
    collection: str = "sentinel-2-l2a",
    cloud_cover: float | None = 5.0,
    with_scl: bool = True,
    synthetic: bool = True,
) -> tuple[Scene, ...]:
    """The catalog entries of an in-memory stack: one scene per scene id, dated by its time step,
    its footprint the stack's grid (in EPSG:4326), an asset per band (and SCL) at memory:// hrefs."""
    footprint = reproject_geometry(box(*stack.grid.bounds), stack.grid.crs, "EPSG:4326")
    names = (*stack.bands, "scl") if with_scl else stack.bands
    return tuple(
        Scene(
            id=scene_id,
            datetime=when,
            collection=collection,
            tile=None,
            assets={name: Asset(f"memory://{scene_id}/{name}") for name in names},
            cloud_cover=cloud_cover,
            footprint=footprint,
            synthetic=synthetic,
        )
        for when, ids in zip(stack.times, stack.scene_ids, strict=True)
        for scene_id in ids
    )


class FakeCatalog:
    """A `Searcher` over a fixed list of scenes (`catalog.search_scenes` without the network).

    `dropped` and `notes` are reported with every search, as a catalog's duplicates and notes.
    """

    def __init__(
        self,
        scenes: Sequence[Scene],
        dropped: Sequence[SkippedScene] = (),
        notes: Sequence[str] = (),
    ) -> None:
        ids = [s.id for s in scenes]
        if len(set(ids)) != len(ids):
            raise ValueError("FakeCatalog: scene ids repeat; the real search would de-duplicate")
        self.scenes = tuple(scenes)
        self.dropped = tuple(dropped)
        self.notes = tuple(notes)
        self.searches: list[tuple[str, date, date]] = []  # (AOI id, start, end) of every call

    def __call__(
        self,
        aoi: AOI,
        config: CatalogConfig,
        *,
        start: date,
        end: date,
        bands: Sequence[str],
        progress: Progress = no_progress,
        allow_empty: bool = False,
    ) -> SearchResult:
        if end < start:
            raise ConfigError(f"search: end {end} is before start {start}")
        keys = config.asset_keys.get(config.provider, {})
        wanted = [b for b in bands if b != "scl"]
        unknown = [b for b in wanted if b not in keys]
        if unknown:
            raise ConfigError(f"bands {unknown} have no asset key for '{config.provider}'")
        self.searches.append((aoi.id, start, end))
        progress("search", 0, 0)
        found = [
            s
            for s in self.scenes
            if s.collection == config.collection
            and start <= s.date <= end
            and (s.footprint is None or s.footprint.intersects(aoi.geometry))
        ]
        scenes: list[Scene] = []
        dropped = list(self.dropped)
        for scene in found:
            reason = _drop_reason(scene, wanted, config)
            if reason is None:
                scenes.append(scene)
            else:
                dropped.append(SkippedScene(scene.id, reason))
        scenes.sort(key=lambda s: (s.datetime, s.id))
        dropped.sort(key=lambda d: d.scene_id)
        if not scenes and not allow_empty:
            raise NoScenesError(
                f"no usable scene in {MEMORY_SOURCE} covers AOI '{aoi.id}' between {start} and {end}"
            )
        return SearchResult(tuple(scenes), tuple(dropped), MEMORY_SOURCE, self.notes, len(found))


def _drop_reason(scene: Scene, bands: Sequence[str], config: CatalogConfig) -> str | None:
    if scene.cloud_cover is not None and scene.cloud_cover > config.max_cloud_cover:
        return (
            f"scene cloud cover {scene.cloud_cover:.1f}% > {config.max_cloud_cover:g}% "
            "(catalog.max_cloud_cover, client-side)"
        )
    missing = [b for b in bands if b not in scene.assets]
    if missing:
        return f"missing asset(s) for band(s) {', '.join(missing)}"
    return None


class FakeProber:
    """A `Prober` answering from given AOI clear fractions (`read.probe_details` without SCL reads).

    Scenes without an SCL asset are "not measurable", as in the real probe; a scene with SCL but
    no given fraction is a setup error. The real selection rule decides what is skipped.
    """

    def __init__(
        self, clear_fractions: Mapping[str, float], coverage: Mapping[str, float] | None = None
    ) -> None:
        self.clear_fractions = dict(clear_fractions)
        self.coverage = dict(coverage or {})

    def __call__(
        self,
        scenes: Sequence[Scene],
        grid: Grid,
        *,
        aoi_mask: np.ndarray,
        read_config: ReadConfig,
        mask_config: MaskConfig,
        progress: Progress = no_progress,
    ) -> Mapping[str, Probe]:
        from changedet.read.cog import check_read_inputs
        from changedet.read.probe import selection_reason

        check_read_inputs(grid, aoi_mask, read_config)  # the real probe's own checks
        ordered = sorted(scenes, key=lambda s: (s.datetime, s.id))
        with_scl = [s for s in ordered if "scl" in s.assets]
        progress("probe", 0, len(with_scl))
        probes: dict[str, Probe] = {}
        for scene in ordered:
            if "scl" not in scene.assets:
                probes[scene.id] = Probe(scene.id, math.nan, math.nan, False, None)
                continue
            if scene.id not in self.clear_fractions:
                raise ValueError(f"FakeProber: no clear fraction given for scene {scene.id}")
            clear = self.clear_fractions[scene.id]
            coverage = self.coverage.get(scene.id, 1.0)
            reason = selection_reason(coverage, clear, scene, read_config)
            probes[scene.id] = Probe(scene.id, clear, coverage, True, reason)
            progress("probe", len(probes), len(with_scl))
        return probes


class StackReader:
    """A `Reader` serving one in-memory stack (`read.read_stack` without COGs).

    Returns the time steps of the requested scenes, the requested bands, cut to the requested
    grid when it is a window of the stack's grid. `skipped` are the scenes this reader reports
    as left out (as the real one does cloudy or unreadable scenes); they hold no pixels.
    """

    def __init__(
        self, stack: Stack, skipped: Sequence[SkippedScene] = (), notes: Sequence[str] = ()
    ) -> None:
        self.stack = stack
        self.skipped = tuple(skipped)
        self.notes = tuple(notes)
        self.requests: list[tuple[tuple[str, ...], Grid]] = []  # (scene ids, grid) of every call

    def __call__(
        self,
        scenes: Sequence[Scene],
        grid: Grid,
        *,
        bands: Sequence[str],
        aoi_mask: np.ndarray,
        read_config: ReadConfig,
        mask_config: MaskConfig,
        progress: Progress = no_progress,
        keep: object = None,  # nothing to keep: the stack is in memory
    ) -> ReadResult:
        from changedet.read.cog import check_read_inputs

        bands = tuple(bands)
        check_read_inputs(grid, aoi_mask, read_config, bands)  # the real reader's own checks
        lacking = sorted({b for s in scenes for b in bands if b not in s.assets})
        if lacking:
            raise ReadError(f"read: scenes lack assets for bands {lacking}")
        self.requests.append((tuple(s.id for s in scenes), grid))
        stack = self.stack
        not_held = [b for b in bands if b not in stack.bands]
        if not_held:
            raise ValueError(f"StackReader: the stack holds bands {stack.bands}, not {not_held}")
        dst, src = _overlap(grid, stack.grid)
        keep = self._time_steps({s.id for s in scenes})
        progress("read", 0, len(keep))
        if not keep:
            raise NoScenesError(f"read: no usable scene left of {len(scenes)}")
        b = [stack.bands.index(name) for name in bands]
        # Beyond the stack there is no data, as beyond a real scene: NaN, not clear, SCL 0.
        n, h, w = len(keep), grid.height, grid.width
        reflectance = np.full((n, len(b), h, w), np.nan, dtype=np.float32)
        reflectance[(..., *dst)] = stack.reflectance[keep][(slice(None), b, *src)]
        clear = np.zeros((n, h, w), dtype=bool)
        clear[(..., *dst)] = stack.clear[keep][(slice(None), *src)]
        scl = None
        if stack.scl is not None:
            scl = np.zeros((n, h, w), dtype=stack.scl.dtype)
            scl[(..., *dst)] = stack.scl[keep][(slice(None), *src)]
        out = Stack(
            grid=grid,
            bands=bands,
            times=tuple(stack.times[t] for t in keep),
            scene_ids=tuple(stack.scene_ids[t] for t in keep),
            reflectance=reflectance,
            clear=clear,
            scl=scl,
        )
        pixels = max(int(aoi_mask.sum()), 1)
        probes = {
            scene_id: float((clear[i] & aoi_mask).sum()) / pixels
            for i, ids in enumerate(out.scene_ids)
            for scene_id in ids
        }
        progress("read", len(keep), len(keep))
        requested = {s.id for s in scenes}
        return ReadResult(
            stack=out,
            skipped=tuple(s for s in self.skipped if s.scene_id in requested),
            probes=probes,
            bytes_fetched=0,
            notes=self.notes,
            assets_read=len(probes) * len(bands),
        )

    def _time_steps(self, requested: set[str]) -> list[int]:
        """Indices of the stack's dates made of requested scenes, in order."""
        held = {sid for ids in self.stack.scene_ids for sid in ids}
        unknown = requested - held - {s.scene_id for s in self.skipped}
        if unknown:
            raise ValueError(f"StackReader: no pixels for scene(s) {sorted(unknown)}")
        keep = []
        for t, ids in enumerate(self.stack.scene_ids):
            asked = [i for i in ids if i in requested]
            if asked and len(asked) != len(ids):
                raise ValueError(
                    f"StackReader: date {self.stack.times[t]:%Y-%m-%d} mosaics {list(ids)}; "
                    f"asked for {asked} only, and a mosaic cannot be taken apart"
                )
            if asked:
                keep.append(t)
        return keep


def _overlap(grid: Grid, of: Grid) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """((rows, cols) of `grid`, (rows, cols) of `of`) where the two overlap; ValueError unless
    both lie on one pixel lattice and overlap."""
    g, o = grid.transform, of.transform
    if grid.crs != of.crs or (g.a, g.b, g.d, g.e) != (o.a, o.b, o.d, o.e):
        raise ValueError(f"StackReader: grid {grid} is not on the stack's pixel lattice {of}")
    col, row = (g.c - o.c) / o.a, (g.f - o.f) / o.e
    c0, r0 = round(col), round(row)
    if max(abs(col - c0), abs(row - r0)) > 1e-6:
        raise ValueError(f"StackReader: grid {grid} is offset from the stack's pixel lattice")
    top, left = max(r0, 0), max(c0, 0)
    bottom, right = min(r0 + grid.height, of.height), min(c0 + grid.width, of.width)
    if bottom <= top or right <= left:
        raise ValueError(f"StackReader: grid {grid} does not overlap the stack's grid {of}")
    dst = (slice(top - r0, bottom - r0), slice(left - c0, right - c0))
    return dst, (slice(top, bottom), slice(left, right))


class MemoryWriter:
    """A `Writer` that keeps each `RunResult` and its `run.json` record instead of writing files.

    It refuses what the real writer refuses before writing (arrays off the result's grid,
    composites without true-colour bands) and builds the manifest, which must be strict JSON.
    """

    def __init__(self) -> None:
        self.results: list[RunResult] = []
        self.out_dirs: list[Path] = []
        self.manifests: list[dict[str, Any]] = []

    def __call__(
        self,
        result: RunResult,
        out_dir: Path,
        *,
        config: OutputConfig,
        progress: Progress = no_progress,
        companions: Sequence[str] = (),
    ) -> list[Path]:
        from changedet.outputs.manifest import run_manifest

        _check_result(result)
        manifest = run_manifest(result)
        json.dumps(manifest, allow_nan=False)  # run.json is strict JSON
        progress("outputs", 1, 1)
        self.results.append(result)
        self.out_dirs.append(Path(out_dir))
        self.manifests.append(manifest)
        return []


def _check_result(result: RunResult) -> None:
    shape = result.grid.shape
    arrays = {
        "change score": result.change.score,
        "change mask": result.change.mask,
        "before": result.before.reflectance[0],
        "after": result.after.reflectance[0],
    }
    for name, array in arrays.items():
        if array.shape != shape:
            raise OutputError(f"{name} shape {array.shape} does not match the grid {shape}")
    for comp in (result.before, result.after):
        missing = [b for b in ("red", "green", "blue") if b not in comp.bands]
        if missing:
            raise OutputError(f"composite {comp.period.label} lacks band(s) {', '.join(missing)}")


if TYPE_CHECKING:  # mypy proves that each fake fits its seam
    from changedet.seams import Prober, Reader, Searcher, Writer

    def _fits(stack: Stack) -> tuple[Searcher, Prober, Reader, Writer]:
        return FakeCatalog(()), FakeProber({}), StackReader(stack), MemoryWriter()
