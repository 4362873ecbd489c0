"""The SCL probe: which scenes are worth reading for the AOI, decided before any band is read.

One responsibility: scene selection from the Scene Classification Layer. The SCL window of every
scene is read onto the grid (one band, 20 m source pixels, cheap); pixels SCL calls cloud on
most dates are found (bright roofs, see `mask.persistent_from_counts`) and kept clear; a scene
is dropped when it lies outside the AOI (`read.min_aoi_coverage`) or shows too little of it
clear (`read.min_aoi_clear_fraction`). With bands to read, a scene's band reads start as soon
as its SCL passes a provisional test (the same test without the roof rule), so probing and
reading overlap. With a `keep` (the monitor's period cache), the scenes the last run's probe
looked at keep its verdicts while the bright-roof pixels stay (`read.verdicts`): only new
scenes' SCL is read. `probe_details` serves `changedet search --probe`;
`changedet.read.stack.read_stack` uses `probe_and_select`.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Collection, Mapping, MutableMapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np

from changedet.config import MaskConfig, ReadConfig
from changedet.core.mask import persistent_from_counts, scl_clear, scl_cloudy
from changedet.core.reuse import ArrayMemo
from changedet.hrefs import install_log_redaction
from changedet.models import Grid, Probe, Progress, Scene, no_progress
from changedet.read.cog import AssetRead, ReadPipeline, check_read_inputs
from changedet.read.store import SpillMap
from changedet.read.verdicts import (
    KeptVerdicts,
    Verdict,
    clear_digest,
    keep_verdicts,
    kept_verdicts,
    verdicts_key,
)

__all__ = [
    "Probed",
    "probe_and_select",
    "probe_details",
    "selection_reason",
]


@dataclass
class Probed:
    """The probe of a whole read: per-scene verdicts, SCL arrays and clear masks, roof pixels.

    A scene whose verdict the last run's probe gave (`carried`) has its clear mask's digest but
    neither its SCL nor its mask until `complete` reads them (for a date that is read)."""

    probes: dict[str, Probe]
    scl: MutableMapping[str, np.ndarray]
    clear: MutableMapping[str, np.ndarray]  # final SCL clear mask per scene (roof rule applied)
    roof: np.ndarray | None  # (H, W) persistent-bright pixels, None when no SCL at all
    failures: list[AssetRead]
    notes: list[str] = field(default_factory=list)
    cache_hits: int = 0
    assets_read: int = 0
    provisional: set[str] = field(default_factory=set)
    digests: dict[str, bytes] = field(default_factory=dict)  # `clear_digest` of each mask
    carried: set[str] = field(default_factory=set)
    mask_config: MaskConfig = field(default_factory=MaskConfig)  # what the masks are made with
    # carried scenes whose SCL `complete` could not read this time: scene id -> the error
    unreadable: dict[str, str] = field(default_factory=dict)

    def complete(self, scenes: Sequence[Scene], pipe: ReadPipeline) -> None:
        """Read the SCL of the carried `scenes` and make their clear masks (as the last run
        did: the roof pixels are the same); the reads count as the probe's."""
        todo = [s for s in scenes if s.id in self.carried]
        for scene in todo:
            pipe.add(scene, "scl")
        for scene in todo:
            got = pipe.take(scene, "scl")
            self.carried.discard(scene.id)
            self.cache_hits += got.cached
            self.assets_read += got.array is not None and not got.cached
            if got.array is None:  # readable last run, not now: skipped as a fresh read does
                self.failures.append(got)
                self.unreadable[scene.id] = got.error or "unreadable"
                self.digests.pop(scene.id, None)  # nor is its date kept as if it had been read
                continue
            array = got.array.astype(np.uint8, copy=False)
            self.scl[scene.id] = array
            self.clear[scene.id] = _clear_of(array, self.roof, self.mask_config)


def _clear_of(scl: np.ndarray, roof: np.ndarray | None, mask_config: MaskConfig) -> np.ndarray:
    keep = None
    if roof is not None and roof.any():
        keep = roof & scl_cloudy(scl, cloud_classes=mask_config.cloud_classes)
    return scl_clear(
        scl, invalid=mask_config.scl_invalid, dilate_px=mask_config.dilate_px, keep=keep
    )


def _fractions(
    scl: np.ndarray, clear: np.ndarray, aoi_mask: np.ndarray, roof: np.ndarray | None
) -> tuple[float, float]:
    """(AOI coverage, clear fraction of the context window). The clear fraction, which decides
    whether a date is used, is measured on the whole window read around the AOI, not on the
    polygon: a polygon drawn tighter inside another must see the same dates. Roof pixels are
    clear by rule on every date, so they say nothing about the weather: the clear fraction is
    measured on the other pixels."""
    # count_nonzero: a tenth of bool.sum()'s time, twice per scene in the probe
    aoi_pixels = np.count_nonzero(aoi_mask)
    has_data = scl != 0
    n_cov = np.count_nonzero(aoi_mask & has_data)
    coverage = n_cov / aoi_pixels if aoi_pixels else 0.0
    weather = has_data & ~roof if roof is not None else has_data
    n_weather = np.count_nonzero(weather)
    if not n_weather:
        weather, n_weather = has_data, np.count_nonzero(has_data)
    frac = np.count_nonzero(clear & weather) / n_weather if n_weather else 0.0
    return coverage, float(frac)


def probe_and_select(
    scenes: Sequence[Scene],
    pipe: ReadPipeline,
    *,
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress,
    bands: Sequence[str] = (),
    spill: bool = False,
    keep: ArrayMemo | None = None,
) -> Probed:
    """Read every scene's SCL window (in the order given) and decide which scenes to use.

    With `bands`, the band reads of a scene start as soon as its SCL passes a provisional test
    (the same test without the bright-roof rule, which needs every date): the probe and the
    band reads overlap instead of waiting for each other. `spill`: keep the per-scene SCL
    windows and clear masks in temporary files (`read.store.SpillMap`), not in memory.
    keep: where the last run's verdicts are (`read.verdicts`): the scenes it knows are not
    looked at again while the roof pixels stay, and this run's verdicts are kept there.
    """
    args: dict[str, Any] = {
        "aoi_mask": aoi_mask,
        "read_config": read_config,
        "mask_config": mask_config,
        "progress": progress,
        "bands": bands,
        "spill": spill,
    }
    key = "" if keep is None else verdicts_key(pipe.grid, aoi_mask, read_config, mask_config)
    before = None if keep is None else kept_verdicts(keep, key, pipe.grid.shape)
    known = {} if before is None else (before.known(scenes) or {})
    reads = _read_scl(scenes, pipe, skip=known.keys(), **args)
    if before is not None and known:
        reads.n_obs += before.n_obs
        reads.n_cloudy += before.n_cloudy
        if not _same_roof(before, reads, mask_config):  # every known mask may have changed
            known = {}
            reads = _read_scl(scenes, pipe, skip=(), **args)
    roof, notes = _bright_roofs(reads, aoi_mask, mask_config) if reads.n_obs.any() else (None, [])
    probed = Probed(
        {},
        reads.scl,
        SpillMap() if spill else {},
        roof,
        reads.failures,
        notes,
        cache_hits=reads.hits,
        assets_read=len(reads.scl) - reads.hits,
        provisional=reads.provisional,
        carried=set(known),
        mask_config=mask_config,
    )
    verdicts = _verdicts(scenes, reads, probed, known, aoi_mask, read_config, mask_config, keep)
    if keep is not None:
        keep_verdicts(keep, key, scenes, verdicts, reads.n_obs, reads.n_cloudy)
    return probed


def _same_roof(before: KeptVerdicts, reads: _SclReads, mask_config: MaskConfig) -> bool:
    """Whether the counts with this run's new scenes give the roof pixels the kept ones gave."""
    return bool(
        np.array_equal(
            _roof_pixels(before.n_cloudy, before.n_obs, mask_config),
            _roof_pixels(reads.n_cloudy, reads.n_obs, mask_config),
        )
    )


def _verdicts(
    scenes: Sequence[Scene],
    reads: _SclReads,
    probed: Probed,
    known: Mapping[str, Verdict],
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    keep: ArrayMemo | None,
) -> dict[str, Verdict]:
    """Fill `probed` with every scene's probe, clear mask (read scenes) and digest (with
    `keep`, where dates are named by them); returns the verdicts to keep."""
    failed = {g.scene_id: g for g in reads.failures}
    verdicts: dict[str, Verdict] = {}
    for scene in scenes:
        verdict = known.get(scene.id)
        if verdict is None and scene.id in reads.scl:
            array = reads.scl[scene.id]
            if scene.id in reads.first_clear and probed.roof is None:
                clear = reads.first_clear.pop(scene.id)
            else:
                clear = _clear_of(array, probed.roof, mask_config)
            coverage, frac = _fractions(array, clear, aoi_mask, probed.roof)
            reason = selection_reason(coverage, frac, scene, read_config)
            digest = b"" if keep is None else clear_digest(clear)
            verdict = Verdict(coverage, frac, reason, digest)
            probed.clear[scene.id] = clear
        if verdict is not None:
            probed.probes[scene.id] = Probe(
                scene.id, verdict.clear_fraction, verdict.coverage, True, verdict.reason
            )
            verdicts[scene.id] = verdict
            if keep is not None:
                probed.digests[scene.id] = verdict.digest
        elif scene.id in failed:
            error = failed[scene.id].error
            probed.probes[scene.id] = Probe(
                scene.id, math.nan, math.nan, True, f"SCL unreadable: {error}", unreadable=True
            )
        else:
            probed.probes[scene.id] = Probe(scene.id, math.nan, math.nan, False, None)
    return verdicts


@dataclass
class _SclReads:
    """The SCL windows of a read, with the per-pixel counts the bright-roof rule needs."""

    n_cloudy: np.ndarray  # (H, W) dates SCL calls the pixel cloud
    n_obs: np.ndarray  # (H, W) dates with SCL data at the pixel
    scl: MutableMapping[str, np.ndarray] = field(default_factory=dict)
    failures: list[AssetRead] = field(default_factory=list)
    first_clear: MutableMapping[str, np.ndarray] = field(default_factory=dict)  # no roof rule
    provisional: set[str] = field(default_factory=set)  # passed without the roof rule
    hits: int = 0


def _read_scl(
    scenes: Sequence[Scene],
    pipe: ReadPipeline,
    *,
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress,
    bands: Sequence[str],
    spill: bool = False,
    skip: Collection[str] = (),
) -> _SclReads:
    """Every scene's SCL window, counted for the roof rule; with `bands`, the band reads of a
    scene without SCL, or whose SCL passes the provisional test, are queued as they come.

    Each window is looked at (`_look`: its counts and provisional clear mask, a few full-grid
    passes) on two threads while the next windows are taken, the verdicts settled here in
    scene order: on a monitoring run, whose band reads are mostly kept from before, that work
    was the read's critical path. skip: scenes whose SCL is known already (not read)."""
    with_scl = [s for s in scenes if "scl" in s.assets and s.id not in skip]
    for scene in with_scl:
        pipe.add(scene, "scl")
    reads = _SclReads(np.zeros(pipe.grid.shape, np.int32), np.zeros(pipe.grid.shape, np.int32))
    if spill:
        reads.scl, reads.first_clear = SpillMap(), SpillMap()
    tally = _Tally(pipe.grid.shape)

    def settle(scene: Scene, looking: Future[tuple[float, float] | None]) -> None:
        fractions = looking.result()
        if fractions is None:  # no band to read: nothing to queue
            return
        if selection_reason(*fractions, scene, read_config) is None:
            reads.provisional.add(scene.id)
            for band in bands:
                pipe.add(scene, band)

    progress("probe", 0, len(with_scl))
    done = 0
    pending: deque[tuple[Scene, Future[tuple[float, float] | None]]] = deque()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="changedet-probe") as pool:
        for scene in scenes:
            if scene.id in skip:
                continue
            if "scl" not in scene.assets:
                for band in bands:  # no SCL: always read (clear = valid data), in date order
                    pipe.add(scene, band)
                continue
            got = pipe.take(scene, "scl")
            done += 1
            progress("probe", done, len(with_scl))
            reads.hits += got.cached
            if got.array is None:
                reads.failures.append(got)
                continue
            array = got.array.astype(np.uint8, copy=False)
            job = pool.submit(_look, scene.id, array, reads, aoi_mask, mask_config, tally, bands)
            pending.append((scene, job))
            while pending and (len(pending) > _LOOK_AHEAD or pending[0][1].done()):
                settle(*pending.popleft())
        while pending:
            settle(*pending.popleft())
    reads.n_obs, reads.n_cloudy = tally.totals()
    _count_dates_once(reads, scenes, mask_config)
    return reads


def _count_dates_once(reads: _SclReads, scenes: Sequence[Scene], mask_config: MaskConfig) -> None:
    """The roof rule counts dates: where tiles of one date overlap, each scene counted the pixel
    (`_look`), so the overlap takes back all but one, observed where any scene observed it and
    cloud where any called it cloud. Else two cloudy dates seen twice made a cloud a "roof"."""
    by_date: dict[date, list[str]] = {}
    for scene in scenes:
        if scene.id in reads.scl:
            by_date.setdefault(scene.date, []).append(scene.id)
    for ids in by_date.values():
        if len(ids) < 2:
            continue
        observed = np.stack([reads.scl[i] != 0 for i in ids])
        cloudy = observed & np.stack(
            [scl_cloudy(reads.scl[i], cloud_classes=mask_config.cloud_classes) for i in ids]
        )
        reads.n_obs -= observed.sum(axis=0, dtype=np.int32) - observed.any(axis=0)
        reads.n_cloudy -= cloudy.sum(axis=0, dtype=np.int32) - cloudy.any(axis=0)


_LOOK_AHEAD = 4  # windows being looked at while the next are taken (each a few grid-sized masks)


class _Tally:
    """The bright-roof rule's counts (dates observed, dates called cloud per pixel), one partial
    sum per thread: integer sums, the same in any order."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self._local = threading.local()
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()

    def mine(self) -> tuple[np.ndarray, np.ndarray]:
        """This thread's (n_obs, n_cloudy)."""
        part: tuple[np.ndarray, np.ndarray] | None = getattr(self._local, "part", None)
        if part is None:
            part = (np.zeros(self.shape, np.int32), np.zeros(self.shape, np.int32))
            self._local.part = part
            with self._lock:
                self._parts.append(part)
        return part

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        n_obs, n_cloudy = np.zeros(self.shape, np.int32), np.zeros(self.shape, np.int32)
        for obs, cloudy in self._parts:
            n_obs += obs
            n_cloudy += cloudy
        return n_obs, n_cloudy


def _look(
    scene_id: str,
    array: np.ndarray,
    reads: _SclReads,
    aoi_mask: np.ndarray,
    mask_config: MaskConfig,
    tally: _Tally,
    bands: Sequence[str],
) -> tuple[float, float] | None:
    """On a probe thread: count one SCL window for the roof rule, keep it in `reads` and, when
    `bands` are read, keep its provisional clear mask (no roof rule) and return the AOI coverage
    and clear fraction it gives (None when no band is read)."""
    n_obs, n_cloudy = tally.mine()
    observed = array != 0
    n_obs += observed
    n_cloudy += observed & scl_cloudy(array, cloud_classes=mask_config.cloud_classes)
    reads.scl[scene_id] = array
    if not bands:
        return None
    clear = _clear_of(array, None, mask_config)
    reads.first_clear[scene_id] = clear  # reused when no pixel is a roof
    return _fractions(array, clear, aoi_mask, None)


def _bright_roofs(
    reads: _SclReads, aoi_mask: np.ndarray, mask_config: MaskConfig
) -> tuple[np.ndarray | None, list[str]]:
    """Pixels SCL calls cloud on most dates (None when there are none), and the note about them."""
    roof = _roof_pixels(reads.n_cloudy, reads.n_obs, mask_config)
    notes = []
    n_roof = np.count_nonzero(roof & aoi_mask)
    if n_roof:
        notes.append(
            f"{n_roof} AOI pixel(s) SCL calls cloud on >= "
            f"{mask_config.persistent_cloud_fraction:.0%} of dates kept clear (bright roofs)"
        )
    return (roof if roof.any() else None), notes


def _roof_pixels(n_cloudy: np.ndarray, n_obs: np.ndarray, mask_config: MaskConfig) -> np.ndarray:
    return persistent_from_counts(
        n_cloudy,
        n_obs,
        fraction=mask_config.persistent_cloud_fraction,
        min_dates=mask_config.persistent_min_dates,
    )


def selection_reason(
    coverage: float, clear_fraction: float, scene: Scene, config: ReadConfig
) -> str | None:
    """Why a scene with this AOI coverage and clear fraction is not used (None: it is used)."""
    if coverage < config.min_aoi_coverage:
        return f"outside AOI: data on {coverage:.1%} of it (< {config.min_aoi_coverage:.0%})"
    if clear_fraction < config.min_aoi_clear_fraction:
        cloud = f"; scene cloud {scene.cloud_cover:.0f}%" if scene.cloud_cover is not None else ""
        return (
            f"cloudy around the AOI: {clear_fraction:.0%} of the window read clear < "
            f"{config.min_aoi_clear_fraction:.0%} required{cloud}"
        )
    return None


def probe_details(
    scenes: Sequence[Scene],
    grid: Grid,
    *,
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress = no_progress,
) -> dict[str, Probe]:
    """Per scene: clear fraction around the AOI, AOI coverage and why it would be skipped (from SCL only)."""
    check_read_inputs(grid, aoi_mask, read_config)
    install_log_redaction()
    with ReadPipeline(grid, read_config) as pipe:
        probed = probe_and_select(
            sorted(scenes, key=lambda s: (s.datetime, s.id)),
            pipe,
            aoi_mask=aoi_mask,
            read_config=read_config,
            mask_config=mask_config,
            progress=progress,
        )
    return probed.probes
