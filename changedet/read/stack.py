"""Scenes → one masked, harmonised Stack on the AOI grid: one time step per acquisition date.

One responsibility: assemble the stack. `read_stack` probes the scenes (`probe`), reads only
the bands asked for (`read`, concurrently, through the pixel cache), masks each scene with its
SCL clear mask (or, without SCL, clear = valid data), harmonises DN → reflectance with each
asset's scale and offset (decided by `stac_items`), and mosaics the scenes of one date (tiles,
orbits): first clear pixel wins, scenes in a deterministic order (most clear AOI pixels first,
then id). Everything left out is recorded with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np

from changedet.config import MaskConfig, ReadConfig
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
from changedet.read.probe import probe_and_select, selection_reason

__all__ = ["read_stack"]


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
        )
    bytes_after = network_bytes()
    notes, skipped = built.notes, sorted(built.skipped, key=lambda s: s.scene_id)
    fetched = (
        max(bytes_after - bytes_before, 0)
        if bytes_before is not None and bytes_after is not None
        else 0
    )
    if bytes_before is None:
        notes.append("bytes_fetched unavailable: GDAL network statistics not reachable")
    if not built.times:
        transient = [f for f in built.failures if f.transient]
        if built.failures and len(transient) == len(built.failures):
            raise ReadError(
                f"read: every scene failed on network errors ({transient[0].error}); "
                "check the connection or try later"
            )
        raise NoScenesError(
            f"read: no usable scene left of {len(scenes)}: "
            + "; ".join(sorted({s.reason.split(":")[0] for s in skipped})[:3])
            + "; widen the dates or lower read.min_aoi_clear_fraction"
        )
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
    )


@dataclass
class _Built:
    reflectance: np.ndarray
    clear: np.ndarray
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


def _read_and_mosaic(
    ordered: Sequence[Scene],
    pipe: ReadPipeline,
    *,
    bands: tuple[str, ...],
    aoi_mask: np.ndarray,
    read_config: ReadConfig,
    mask_config: MaskConfig,
    progress: Progress,
) -> _Built:
    grid = pipe.grid
    probed = probe_and_select(
        ordered,
        pipe,
        aoi_mask=aoi_mask,
        read_config=read_config,
        mask_config=mask_config,
        progress=progress,
        bands=bands,
    )
    notes = list(probed.notes)
    failures = list(probed.failures)
    cache_hits = probed.cache_hits
    assets_read = probed.assets_read
    skipped: list[SkippedScene] = []
    selected: list[Scene] = []
    wasted = 0
    for scene in ordered:
        reason = probed.probes[scene.id].skip_reason
        if reason is not None and not read_config.probe_scl and reason.startswith("cloudy"):
            reason = None  # probe_scl = false: keep cloudy scenes, their pixels are masked anyway
        if reason is None:
            selected.append(scene)
            for band in bands:  # passed only with the roof rule: its reads start now
                pipe.add(scene, band)
        else:
            skipped.append(SkippedScene(scene.id, reason))
            if scene.id in probed.provisional:
                wasted += pipe.drop(scene.id)
    if wasted:
        notes.append(
            f"{wasted} asset read(s) started before the bright-roof rule dropped their scene"
        )

    # Dates in order; inside a date, most clear AOI pixels first (unknown → last), then id.
    by_date: dict[date, list[Scene]] = {}
    for scene in selected:
        by_date.setdefault(scene.date, []).append(scene)
    for members in by_date.values():
        members.sort(key=lambda s: (-_clear_share(probed.probes[s.id]), s.id))

    h, w = grid.shape
    n_dates = len(by_date)
    # np.empty: each date's slot is written in full by its first scene (NaN where not clear), so
    # the pages are first touched while the workers are still downloading, and only once.
    reflectance = np.empty((n_dates, len(bands), h, w), dtype=np.float32)
    clear = np.empty((n_dates, h, w), dtype=bool)
    scl_out = np.empty((n_dates, h, w), dtype=np.uint8) if probed.scl else None
    times: list[datetime] = []
    scene_ids: list[tuple[str, ...]] = []
    known = {sid: p for sid, p in probed.probes.items() if math.isfinite(p.clear_fraction)}
    probes: dict[str, float] = {sid: p.clear_fraction for sid, p in known.items()}
    coverage: dict[str, float] = {sid: p.coverage for sid, p in known.items()}
    fallback: list[str] = []
    aoi_pixels = int(aoi_mask.sum())
    total = len(selected) * len(bands)
    done = 0
    progress("read", 0, total)
    t_out = 0
    for members in by_date.values():
        clear[t_out] = False
        if scl_out is not None:
            scl_out[t_out] = 0
        filled = clear[t_out]
        used: list[str] = []
        for scene in members:
            dns: list[np.ndarray] = []
            broken = None
            for band in bands:
                got = pipe.take(scene, band)
                done += 1
                progress("read", done, total)
                cache_hits += got.cached
                assets_read += got.array is not None and not got.cached
                if got.array is None:
                    failures.append(got)
                    broken = broken or got.error or "unreadable"
                else:
                    dns.append(got.array)
            if broken is not None:
                skipped.append(SkippedScene(scene.id, f"unreadable asset: {broken}"))
                continue
            valid_all = np.ones(grid.shape, bool)
            for band, dn in zip(bands, dns, strict=True):
                nodata = scene.assets[band].nodata
                if nodata is not None:
                    valid_all &= dn != nodata
            scene_scl = probed.scl.get(scene.id)
            if scene_scl is not None:
                scene_clear = probed.clear[scene.id] & valid_all
            else:  # no SCL (L1C): clear = valid data, the documented fallback
                covered = aoi_mask & valid_all
                cov = float(covered.sum()) / aoi_pixels if aoi_pixels else 0.0
                coverage[scene.id] = cov
                probes[scene.id] = 1.0 if covered.any() else 0.0
                reason = selection_reason(cov, probes[scene.id], scene, read_config)
                if reason is not None:
                    skipped.append(SkippedScene(scene.id, reason))
                    continue
                fallback.append(scene.id)
                scene_clear = valid_all
            take = scene_clear & ~filled
            for b, (band, dn) in enumerate(zip(bands, dns, strict=True)):
                _harmonise_into(reflectance[t_out, b], dn, scene.assets[band], take, first=not used)
            filled |= take
            if scl_out is not None and scene_scl is not None:
                # the SCL of the scene that gave the pixel, else of the first one with data
                np.copyto(scl_out[t_out], scene_scl, where=take | (scl_out[t_out] == 0))
            used.append(scene.id)
        if used:
            times.append(min(s.datetime for s in members if s.id in used))
            scene_ids.append(tuple(used))
            t_out += 1  # else the slot is reused (and re-initialised) by the next date

    if scl_out is not None:
        scl_out = scl_out[:t_out]
    if fallback:
        notes.append(
            f"{len(fallback)} scene(s) without SCL: clear = valid data (fallback): "
            + ", ".join(fallback[:5])
            + (" ..." if len(fallback) > 5 else "")
        )
    return _Built(
        reflectance=reflectance[:t_out],
        clear=clear[:t_out],
        scl=scl_out,
        times=times,
        scene_ids=scene_ids,
        skipped=skipped,
        notes=notes,
        failures=failures,
        probes=probes,
        coverage=coverage,
        cache_hits=cache_hits,
        assets_read=assets_read,
    )


def _clear_share(probe: Probe) -> float:
    """Share of the AOI a scene shows clear: the mosaic puts the scene giving most first."""
    value = probe.clear_fraction * probe.coverage
    return value if math.isfinite(value) else -1.0
