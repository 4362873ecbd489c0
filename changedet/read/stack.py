"""Scenes → one masked, harmonised Stack on the AOI grid: one time step per acquisition date.

One responsibility: assemble the stack. `read_stack` probes the scenes (`changedet.read.probe`),
reads only the bands asked for (`changedet.read.cog`, concurrently, through the pixel cache),
masks each scene with its SCL clear mask (or, without SCL, clear = valid data), harmonises DN →
reflectance with each asset's scale and offset (decided by `changedet.catalog.items`), and
mosaics the scenes of one date (tiles, orbits): first clear pixel wins, scenes in a
deterministic order (most clear AOI pixels first, then id). Everything left out is recorded with
its reason.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np

from changedet.config import MaskConfig, ReadConfig
from changedet.core.offsets import OFFSET, offset_errors
from changedet.errors import NoScenesError, ReadError
from changedet.hrefs import install_log_redaction
from changedet.models import (
    Asset,
    Grid,
    Probe,
    Progress,
    ReadResult,
    Scene,
    SkippedScene,
    Stack,
    no_progress,
)
from changedet.read.cog import AssetRead, ReadPipeline, check_read_inputs, network_bytes
from changedet.read.kept import DateKeep, KeptFile, OpenArrays, date_key
from changedet.read.probe import Probed, probe_and_select, selection_reason
from changedet.read.store import DateStore

__all__ = ["read_series", "read_stack"]


def _harmonise_into(
    out: np.ndarray, dn: np.ndarray, asset: Asset, where: np.ndarray, *, first: bool
) -> None:
    """out[where] = DN * scale + offset in float32, without temporaries of the full grid.

    first: `out` holds nothing yet: write every pixel (NaN outside `where`); unmasked ufuncs
    are about twice as fast as masked ones.
    """
    if first:
        np.multiply(dn, np.float32(asset.scale), out=out, casting="unsafe")
        out += np.float32(asset.offset)
        np.copyto(out, np.float32(np.nan), where=~where)
        return
    np.multiply(dn, np.float32(asset.scale), out=out, where=where, casting="unsafe")
    np.add(out, np.float32(asset.offset), out=out, where=where)


def read_stack(
    scenes: Sequence[Scene],
    grid: Grid,
    *,
    bands: Sequence[str],
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress = no_progress,
) -> ReadResult:
    """Read, mask, harmonise and mosaic `scenes` onto `grid`: one time step per acquisition date.

    Returns reflectance (T, B, H, W) float32 (NaN where not clear), clear (T, H, W), scl
    (T, H, W) uint8 (None when no scene had SCL). Scenes without SCL (L1C) use clear = valid
    data (noted). Raises NoScenesError when nothing usable is left and ReadError when every
    scene failed on transient network errors (the network, not the data, is the problem).
    """
    return _read(
        scenes,
        grid,
        bands=bands,
        aoi_mask=aoi_mask,
        read_config=read_config,
        mask_config=mask_config,
        progress=progress,
        store=None,
    )


def read_series(
    scenes: Sequence[Scene],
    grid: Grid,
    *,
    bands: Sequence[str],
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress = no_progress,
    keep: DateKeep | None = None,
) -> ReadResult:
    """`read_stack`, but each date goes to disk as soon as it is mosaicked (`read.store`): the
    result's `stack` is a `DateStore` (a `DateSeries`; close it when done), and memory holds
    one date however many there are. No SCL stack is kept. keep: dates kept by an earlier run
    are taken from it instead of read, and the dates read are kept in it (`read.kept`)."""
    store = DateStore(grid, bands)
    try:
        return _read(
            scenes,
            grid,
            bands=bands,
            aoi_mask=aoi_mask,
            read_config=read_config,
            mask_config=mask_config,
            progress=progress,
            store=store,
            keep=keep,
        )
    except BaseException:
        store.close()
        raise


def _read(
    scenes: Sequence[Scene],
    grid: Grid,
    *,
    bands: Sequence[str],
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress,
    store: DateStore | None,
    keep: DateKeep | None = None,
) -> ReadResult:
    bands = tuple(bands)
    check_read_inputs(grid, aoi_mask, read_config, bands)
    missing = sorted({b for s in scenes for b in bands if b not in s.assets})
    if missing:
        raise ReadError(
            f"read: scenes lack assets for bands {missing}; search with the same bands you read"
        )
    install_log_redaction()
    ordered = sorted(scenes, key=lambda s: (s.datetime, s.id))
    with ReadPipeline(grid, read_config) as pipe:
        bytes_before = network_bytes()
        built = _read_and_mosaic(
            ordered,
            pipe,
            bands=bands,
            aoi_mask=aoi_mask,
            read_config=read_config,
            mask_config=mask_config,
            progress=progress,
            store=store,
            keep=keep,
        )
    bytes_after = network_bytes()
    notes, skipped = built.notes, sorted(built.skipped, key=lambda s: s.scene_id)
    notes.extend(pipe.cache.notes())  # damaged entries discarded, an unusable cache folder
    fetched = (
        max(bytes_after - bytes_before, 0)
        if bytes_before is not None and bytes_after is not None
        else 0
    )
    if bytes_before is None:
        notes.append("bytes_fetched unavailable: GDAL network statistics not reachable")
    if not built.times:
        raise _nothing_read(built.failures, skipped, n_scenes=len(scenes))
    stack: Stack | DateStore
    offsets: tuple[str, ...] = ()
    if store is not None:
        store.release_slot()
        offsets = mend_offsets(store)
        stack = store
    else:
        assert built.reflectance is not None and built.clear is not None
        stack = Stack(
            grid=grid,
            bands=bands,
            times=tuple(built.times),
            scene_ids=tuple(built.scene_ids),
            reflectance=built.reflectance,
            clear=built.clear,
            scl=built.scl,
        )
    return ReadResult(
        stack=stack,
        skipped=tuple(skipped),
        probes=built.probes,
        bytes_fetched=int(fetched),
        coverage=built.coverage,
        notes=tuple(notes),
        cache_hits=built.cache_hits,
        assets_read=built.assets_read,
        offsets=offsets,
        unmasked=tuple(built.unmasked),
    )


# Rows sampled for each date's band medians: a few strips spread over the window, so that the
# check reads a few per cent of the dates again, not all of them.
_SAMPLE_STRIPS, _STRIP_ROWS, _MIN_SAMPLES = 8, 8, 500
# What decides a date's offset (`catalog.items.harmonising_offset`): any of them may be wrong.
_OFFSET_FLAGS = (
    "earthsearch:boa_offset_applied, the processing baseline or the raster:bands offset; "
    "run.json's search notes say which rule set each offset"
)


def mend_offsets(store: DateStore) -> tuple[str, ...]:
    """Dates read with a wrong harmonisation offset (`core.offsets`), corrected in the store;
    what to say of each, and of dates 0.1 off that could not be told right or wrong."""
    check = offset_errors(*_band_levels(store))

    def named(t: int) -> str:
        return f"{store.times[t].date().isoformat()} ({', '.join(store.scene_ids[t])})"

    said = []
    for t, delta in sorted(check.corrections.items()):
        how = "brighter" if delta < 0 else "darker"
        fixed = store.shift(t, delta)
        said.append(
            f"{named(t)} read {OFFSET:g} {how} than other dates in every band, and its darkest "
            f"pixels agree: its item's harmonisation offset ({_OFFSET_FLAGS}) "
            + ("looks wrong; corrected" if fixed else "looks wrong; not corrected (a mosaic)")
        )
    if check.doubtful:
        listed = ", ".join(named(t) for t in check.doubtful[:4])
        more = f" and {len(check.doubtful) - 4} more" if len(check.doubtful) > 4 else ""
        said.append(
            f"{len(check.doubtful)} date(s), {listed}{more}, read {OFFSET:g} off other dates in "
            "every band, and their pixels cannot tell which side's offset is right: none "
            f"corrected; check the items' offset flags ({_OFFSET_FLAGS})"
        )
    return tuple(said)


def _band_levels(store: DateStore) -> tuple[np.ndarray, np.ndarray]:
    """(T, B) per date and band, the median of the clear pixels of a few row strips, and (T,)
    the darkest band's 1st percentile of them (NaN where fewer than _MIN_SAMPLES were clear)."""
    h = store.grid.height
    rows = min(_STRIP_ROWS, h)
    tops = np.unique(np.linspace(0, h - rows, min(_SAMPLE_STRIPS, max(h // rows, 1))).astype(int))
    bands = list(range(len(store.bands)))
    medians = np.full((len(store.times), len(bands)), np.nan)
    darks = np.full(len(store.times), np.nan)
    for t in range(len(store.times)):
        values = np.concatenate(
            [store.pixels([t], slice(top, top + rows), bands)[0] for top in tops], axis=1
        )
        flat = values.reshape(len(bands), -1)
        clear = flat[:, np.isfinite(flat).all(axis=0)]
        if clear.shape[1] >= _MIN_SAMPLES:
            medians[t] = np.median(clear, axis=1)
            darks[t] = np.percentile(clear, 1, axis=1).min()
    return medians, darks


def _nothing_read(
    failures: Sequence[AssetRead], skipped: Sequence[SkippedScene], *, n_scenes: int
) -> ReadError | NoScenesError:
    """The error of a read that left no date: the network's fault, the assets' (a failure:
    they will not become readable by waiting, and a monitoring job must say so), or the
    weather's (nothing usable yet)."""
    transient = [f for f in failures if f.transient]
    if failures and len(transient) == len(failures):
        return ReadError(
            f"read: every scene failed on network errors ({transient[0].error}); "
            "check the connection or try later"
        )
    reasons = sorted({s.reason.split(":")[0] for s in skipped})
    if reasons and all("unreadable" in r for r in reasons):
        first = next(s.reason for s in skipped)
        return ReadError(
            f"read: no scene of {n_scenes} could be read ({first}); check that the catalog's "
            "hrefs are intact COGs this machine may read (signed URLs expire)"
        )
    keys = [  # the setting each reason comes from (it named min_aoi_clear_fraction always)
        key
        for word, key in (
            ("outside AOI", "read.min_aoi_coverage"),
            ("cloudy", "read.min_aoi_clear_fraction"),
        )
        if any(r.startswith(word) for r in reasons)
    ]
    lower = f" or lower {' / '.join(keys)}" if keys else ""
    return NoScenesError(
        f"read: no usable scene left of {n_scenes}: {'; '.join(reasons[:3])}; "
        f"widen the dates{lower}"
    )


@dataclass
class _Built:
    reflectance: np.ndarray | None  # None: the dates went to a DateStore
    clear: np.ndarray | None
    scl: np.ndarray | None
    times: list[datetime]
    scene_ids: list[tuple[str, ...]]
    skipped: list[SkippedScene]
    notes: list[str]
    failures: list[AssetRead]
    probes: dict[str, float]
    coverage: dict[str, float]
    cache_hits: int
    assets_read: int
    unmasked: list[str]


def _read_and_mosaic(
    ordered: Sequence[Scene],
    pipe: ReadPipeline,
    *,
    bands: tuple[str, ...],
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress,
    store: DateStore | None = None,
    keep: DateKeep | None = None,
) -> _Built:
    """Probe, select, then mosaic the selected scenes date by date as their band reads arrive
    (or, for a date `keep` holds, take it from there: its band reads are dropped)."""
    probed = probe_and_select(
        ordered,
        pipe,
        aoi_mask=aoi_mask,
        read_config=read_config,
        mask_config=mask_config,
        progress=progress,
        bands=bands,
        spill=store is not None,
        keep=keep if store is not None else None,
    )
    selected, skipped, wasted = _select(ordered, probed, pipe, bands=bands, read_config=read_config)
    notes = list(probed.notes)
    if wasted:
        notes.append(
            f"{wasted} asset read(s) started before the bright-roof rule dropped their scene"
        )
    # Dates in order; inside a date, clearest around the AOI first (unknown → last), then id.
    by_date: dict[date, list[Scene]] = {}
    for scene in selected:
        by_date.setdefault(scene.date, []).append(scene)
    for members in by_date.values():
        members.sort(key=lambda s: (-_clear_share(probed.probes[s.id]), s.id))
    keys: dict[date, str] = {}
    kept: set[date] = set()
    if keep is not None and store is not None:
        keys = _date_keys(by_date, probed, pipe.grid, bands, read_config.resampling)
        kept = {day for day, key in keys.items() if keep.has_arrays(key)}
        for day in kept:
            for scene in by_date[day]:
                pipe.drop(scene.id)  # queued behind the probe: few, if any, have started
    _start_carried(by_date, kept, probed, pipe, bands=bands)

    mosaic = _Mosaic(
        pipe,
        probed,
        bands=bands,
        n_dates=len(by_date),
        aoi_mask=aoi_mask,
        read_config=read_config,
        skipped=skipped,
        progress=progress,
        total=len(selected) * len(bands),
        store=store,
        keep=keep,
    )
    with _opened_ahead(keep, [keys[day] for day in by_date if day in kept]) as opened:
        for day, members in by_date.items():
            if day not in kept or not mosaic.add_kept(members, opened.pop(keys[day]).result()):
                mosaic.add_date(members, keys.get(day))
    return mosaic.finish(notes)


@contextmanager
def _opened_ahead(
    keep: DateKeep | None, keys: Sequence[str]
) -> Iterator[dict[str, Future[OpenArrays | None]]]:
    """The kept dates under `keys`, opened (and so checked) on two threads ahead of the
    mosaic, which takes them in date order. Checking is most of the cost of a kept date (a
    CRC over every page, which releases the GIL): done in order on the mosaic's thread, the
    read of a monitoring run at 100 dates took 0.2 s longer. Entries the mosaic does not take
    are closed on the way out."""
    if keep is None or not keys:
        yield {}
        return
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="changedet-kept") as pool:
        opened = {key: pool.submit(keep.open_arrays, key) for key in keys}
        try:
            yield opened
        finally:
            for left in opened.values():
                if not left.cancel() and left.exception() is None:
                    found = left.result()
                    if found is not None:
                        os.close(found[0])


def _date_keys(
    by_date: dict[date, list[Scene]],
    probed: Probed,
    grid: Grid,
    bands: tuple[str, ...],
    resampling: str,
) -> dict[date, str]:
    """The `read.kept` key of every date whose scenes all have an SCL clear mask (a date with
    a scene without one is masked by its pixels' validity, which only reading tells)."""
    return {
        day: date_key(members, [probed.digests[s.id] for s in members], grid, bands, resampling)
        for day, members in by_date.items()
        if _has_digests(members, probed)
    }


def _has_digests(members: Sequence[Scene], probed: Probed) -> bool:
    return all(s.id in probed.digests for s in members)


def _start_carried(
    by_date: dict[date, list[Scene]],
    kept: set[date],
    probed: Probed,
    pipe: ReadPipeline,
    *,
    bands: tuple[str, ...],
) -> None:
    """The scenes whose verdicts the last run gave (`_select` left their bands unread) and
    whose dates are read: their SCL clear masks made, their band reads started. (A kept date
    that turns out unusable is read after all: `_Mosaic` completes its scenes then.)"""
    carried = [s for day, members in by_date.items() if day not in kept for s in members]
    carried = [s for s in carried if s.id in probed.carried]
    probed.complete(carried, pipe)
    for scene in carried:
        for band in bands:
            pipe.add(scene, band)


def _select(
    ordered: Sequence[Scene],
    probed: Probed,
    pipe: ReadPipeline,
    *,
    bands: tuple[str, ...],
    read_config: ReadConfig,
) -> tuple[list[Scene], list[SkippedScene], int]:
    """(scenes to read, scenes skipped with why, band reads wasted on provisional passes).

    The band reads of a scene that passed only with the bright-roof rule start now; those of a
    scene that passed the provisional test but not the final one are dropped."""
    skipped: list[SkippedScene] = []
    selected: list[Scene] = []
    wasted = 0
    for scene in ordered:
        probe = probed.probes[scene.id]
        reason = probe.skip_reason
        if reason is not None and not read_config.probe_scl and reason.startswith("cloudy"):
            reason = None  # probe_scl = false: keep cloudy scenes, their pixels are masked anyway
        if reason is None:
            selected.append(scene)
            if scene.id in probed.carried:
                continue  # most of their dates are kept: `_start_carried` reads the others
            for band in bands:
                pipe.add(scene, band)
        else:
            skipped.append(SkippedScene(scene.id, reason, unreadable=probe.unreadable))
            if scene.id in probed.provisional:
                wasted += pipe.drop(scene.id)
    return selected, skipped, wasted


class _Mosaic:
    """The stack being assembled: one slot per date, filled by the date's scenes in order (first
    clear pixel wins), with the bookkeeping of reads, skips and per-scene clear fractions."""

    def __init__(
        self,
        pipe: ReadPipeline,
        probed: Probed,
        *,
        bands: tuple[str, ...],
        n_dates: int,
        aoi_mask: np.ndarray,
        read_config: ReadConfig,
        skipped: list[SkippedScene],
        progress: Progress,
        total: int,
        store: DateStore | None = None,
        keep: DateKeep | None = None,
    ) -> None:
        self.pipe, self.probed, self.bands = pipe, probed, bands
        self.store, self.keep = store, keep
        self.dates_kept = 0  # taken from `keep`, not read
        self.aoi_mask, self.read_config = aoi_mask, read_config
        self.aoi_pixels = np.count_nonzero(aoi_mask)
        h, w = pipe.grid.shape
        # np.empty: each date's slot is written in full by its first scene (NaN where not clear),
        # so the pages are first touched while the workers are still downloading, and only once.
        # With a store, one slot is reused for every date, and no SCL stack is kept.
        slots = 0 if store is not None else n_dates
        self.reflectance = np.empty((slots, len(bands), h, w), dtype=np.float32)
        self.clear = np.empty((slots, h, w), dtype=bool)
        self.scl = np.empty((slots, h, w), dtype=np.uint8) if probed.scl and store is None else None
        self.n_dates = 0  # slots filled so far
        self.times: list[datetime] = []
        self.scene_ids: list[tuple[str, ...]] = []
        self.skipped = skipped
        self.failures: list[AssetRead] = []  # of band reads (the probe counts its own)
        known = {sid: p for sid, p in probed.probes.items() if math.isfinite(p.clear_fraction)}
        self.probes: dict[str, float] = {sid: p.clear_fraction for sid, p in known.items()}
        self.coverage: dict[str, float] = {sid: p.coverage for sid, p in known.items()}
        self.fallback: list[str] = []
        self.cache_hits = self.assets_read = 0  # band reads
        self.progress, self.total, self.taken = progress, total, 0  # band reads consumed
        progress("read", 0, total)

    def add_kept(self, members: Sequence[Scene], opened: OpenArrays | None) -> bool:
        """Take the date of `members` from its kept entry, `opened` (`DateKeep.open_arrays`),
        whose reads were dropped (False: the entry is not usable, and they are read after all)."""
        assert self.store is not None
        kept = (
            None if opened is None else KeptFile.of(opened, len(self.bands), self.pipe.grid.shape)
        )
        if kept is None:
            for scene in members:  # their reads were dropped: start them again
                for band in self.bands:
                    self.pipe.add(scene, band)
            return False
        when, ids = min(s.datetime for s in members), tuple(s.id for s in members)
        self.store.commit_file(when, ids, kept, self._harmonisation(members[0]))
        self.times.append(when)
        self.scene_ids.append(ids)
        self.n_dates += 1
        self.dates_kept += 1
        self.taken += len(members) * len(self.bands)
        self.progress("read", self.taken, self.total)
        return True

    def add_date(self, members: Sequence[Scene], key: str | None = None) -> None:
        """Mosaic the scenes of one date into the next slot (kept only if a scene was usable).
        key: the date's `read.kept` key, under which it is kept when every scene was used."""
        t = self.n_dates
        reflectance, filled = (
            self.store.slot() if self.store is not None else (self.reflectance[t], self.clear[t])
        )
        dn_slot = self._dn_slot(members)
        filled[...] = False
        if self.scl is not None:
            self.scl[t] = 0
        used: list[str] = []
        for scene in members:
            dns = self._take(scene)
            scene_clear = None if dns is None else self._scene_clear(scene, dns)
            if dns is None or scene_clear is None:
                continue
            take = scene_clear & ~filled
            if dn_slot is not None and any(dn.dtype != np.uint16 for dn in dns):
                if used:  # what is mosaicked so far, as reflectance
                    for b, band in enumerate(self.bands):
                        asset = scene.assets[band]  # the same scale and offset as theirs
                        _harmonise_into(reflectance[b], dn_slot[b], asset, filled, first=True)
                dn_slot = None
            for b, (band, dn) in enumerate(zip(self.bands, dns, strict=True)):
                if dn_slot is None:
                    _harmonise_into(reflectance[b], dn, scene.assets[band], take, first=not used)
                elif used:
                    np.copyto(dn_slot[b], dn, where=take)
                else:
                    np.multiply(dn, take, out=dn_slot[b])  # 0 where not clear, as the store keeps
            filled |= take
            scene_scl = None if self.scl is None else self.probed.scl.get(scene.id)
            if self.scl is not None and scene_scl is not None:
                # the SCL of the scene that gave the pixel, else of the first one with data
                np.copyto(self.scl[t], scene_scl, where=take | (self.scl[t] == 0))
            used.append(scene.id)
        if used:
            self.times.append(min(s.datetime for s in members if s.id in used))
            self.scene_ids.append(tuple(used))
            if self.store is not None:
                first = next(s for s in members if s.id == used[0])
                # a kept date must be what a read gives, named by the masks it was read with
                whole = len(used) == len(members) and _has_digests(members, self.probed)
                self.store.commit(
                    self.times[-1],
                    self.scene_ids[-1],
                    self._harmonisation(first),
                    from_dn=dn_slot is not None,
                    keep=(self.keep, key) if self.keep and key and whole else None,
                )
            self.n_dates += 1  # else the slot is reused (and re-initialised) by the next date

    def _dn_slot(self, members: Sequence[Scene]) -> np.ndarray | None:
        """With a store, and when the date's scenes share each band's scale and offset: the
        store's DN buffer, which the date is mosaicked into as DNs (uint16 reads), so it is
        kept without a float32 round trip. Else None: mosaic reflectance."""
        if self.store is None:
            return None
        first = self._harmonisation(members[0])
        if any(self._harmonisation(s) != first for s in members[1:]):
            return None
        return self.store.dn_slot()

    def _harmonisation(self, scene: Scene) -> list[tuple[float, float]]:
        """Per band, the (scale, offset) that turns the scene's DNs into reflectance."""
        return [(scene.assets[b].scale, scene.assets[b].offset) for b in self.bands]

    def _take(self, scene: Scene) -> list[np.ndarray] | None:
        """The DNs of every band of `scene` (None, with the scene skipped, if one is unreadable)."""
        dns: list[np.ndarray] = []
        broken = None
        for band in self.bands:
            got = self.pipe.take(scene, band)
            self.taken += 1
            self.progress("read", self.taken, self.total)
            self.cache_hits += got.cached
            self.assets_read += got.array is not None and not got.cached
            if got.array is None:
                self.failures.append(got)
                broken = broken or got.error or "unreadable"
            else:
                dns.append(got.array)
        if broken is not None:
            self.skipped.append(
                SkippedScene(scene.id, f"unreadable asset: {broken}", unreadable=True)
            )
            return None
        return dns

    def _scene_clear(self, scene: Scene, dns: Sequence[np.ndarray]) -> np.ndarray | None:
        """Where `scene` is clear and has data in every band: its SCL clear mask, or without SCL
        (L1C) valid data, the documented fallback, unless that leaves too little of the AOI
        (None: the scene is skipped)."""
        if scene.id in self.probed.carried:  # its date was to be taken as kept, and is not
            self.probed.complete([scene], self.pipe)
        if scene.id in self.probed.unreadable:  # read last run, its SCL not now
            error = self.probed.unreadable[scene.id]
            self.skipped.append(SkippedScene(scene.id, f"SCL unreadable: {error}", unreadable=True))
            return None
        valid_all = np.ones(self.pipe.grid.shape, bool)
        for band, dn in zip(self.bands, dns, strict=True):
            nodata = scene.assets[band].nodata
            if nodata is not None:
                valid_all &= dn != nodata
        if scene.id in self.probed.scl:
            return self.probed.clear[scene.id] & valid_all
        covered = self.aoi_mask & valid_all
        cov = np.count_nonzero(covered) / self.aoi_pixels if self.aoi_pixels else 0.0
        self.coverage[scene.id] = cov
        self.probes[scene.id] = 1.0 if covered.any() else 0.0
        reason = selection_reason(cov, self.probes[scene.id], scene, self.read_config)
        if reason is not None:
            self.skipped.append(SkippedScene(scene.id, reason))
            return None
        self.fallback.append(scene.id)
        return valid_all

    def finish(self, notes: list[str]) -> _Built:
        n = self.n_dates
        if self.dates_kept:
            notes.append(f"{self.dates_kept} date(s) taken as kept by an earlier run, not read")
        if self.fallback:
            notes.append(
                f"{len(self.fallback)} scene(s) without SCL: clear = valid data (fallback): "
                + ", ".join(self.fallback[:5])
                + (" ..." if len(self.fallback) > 5 else "")
            )
        stored = self.store is not None
        return _Built(
            reflectance=None if stored else self.reflectance[:n],
            clear=None if stored else self.clear[:n],
            scl=None if self.scl is None else self.scl[:n],
            times=self.times,
            scene_ids=self.scene_ids,
            skipped=self.skipped,
            notes=notes,
            failures=self.probed.failures + self.failures,
            probes=self.probes,
            coverage=self.coverage,
            cache_hits=self.probed.cache_hits + self.cache_hits,
            assets_read=self.probed.assets_read + self.assets_read,
            unmasked=self.fallback,
        )


def _clear_share(probe: Probe) -> float:
    """Share of the AOI a scene shows clear: the mosaic puts the scene giving most first."""
    value = probe.clear_fraction * probe.coverage
    return value if math.isfinite(value) else -1.0
