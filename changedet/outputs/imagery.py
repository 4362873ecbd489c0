"""True colour and the rasters an analyst opens in QGIS, each as a COG with its style.

One responsibility: the raster outputs of a run, on the run's grid. The true-colour stretch
shared by every picture (`display_stretch`, `truecolor`); georeferenced true-colour COGs of the
baseline, of the run's latest composite and of every period's composite (`imagery/`, 8-bit RGB
with overviews, 0 = no clear observation); and the single-band evidence rasters: change score,
change mask, clear observations over the run, and the acquisition date each imagery pixel came
from as a YYYYMMDD number. Every COG gets a `.qml` sidecar of the same name
(`changedet.outputs.raster_styles`), so QGIS opens it styled. The imagery a rerun would draw
the same is taken from the previous run instead (`changedet.outputs.drawn`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from changedet.models import Composite, RunResult
from changedet.outputs import raster_styles
from changedet.outputs.drawn import Drawings, take_or_draw
from changedet.outputs.fsio import write_cog, write_text

__all__ = [
    "NODATA_RGB",
    "SYNTHETIC_TAG",
    "RasterOutput",
    "display_rgb",
    "display_stretch",
    "shared_stretch",
    "truecolor",
    "write_evidence_rasters",
    "write_imagery",
    "yyyymmdd",
]

NODATA_RGB = (96, 96, 96)  # grey where a picture has no clear observation
# The GDAL metadata tag of every COG of a run on generated data (value "synthetic").
SYNTHETIC_TAG = "CHANGEDET_DATA"
_EPOCH = date(1970, 1, 1)
_MIN_STRETCH_PX = 1000  # clear baseline pixels that make a stable 2nd/98th percentile


@dataclass(frozen=True)
class RasterOutput:
    """One raster written: its path relative to the run folder, what it shows, its group in the
    QGIS project, and whether the project shows it at first."""

    path: str
    title: str
    group: str
    visible: bool = False


def shared_stretch(*composites: Composite, sample: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Per-band 2nd/98th percentiles of red, green, blue over all composites together, so before
    and after are drawn with the same stretch and a brighter roof really looks brighter."""
    values = []
    for comp in composites:
        rgb = np.stack([comp.band("red"), comp.band("green"), comp.band("blue")]).reshape(3, -1)
        step = max(1, rgb.shape[1] // sample)
        values.append(rgb[:, ::step])
    allv = np.concatenate(values, axis=1)
    lo = np.zeros(3)
    hi = np.ones(3)
    for b in range(3):
        finite = allv[b][np.isfinite(allv[b])]
        if finite.size:
            lo[b], hi[b] = np.percentile(finite, [2, 98])
        if hi[b] <= lo[b]:
            hi[b] = lo[b] + 1e-3
    return lo, hi


def display_stretch(before: Composite, after: Composite) -> tuple[np.ndarray, np.ndarray]:
    """The stretch every picture of a run shares: the baseline's (`shared_stretch`), so before
    and after are drawn alike and a place keeps its colours from run to run while its baseline
    stays (a monitoring run then takes its unchanged pictures again). With fewer than
    `_MIN_STRETCH_PX` clear baseline pixels the after composite joins in."""
    rgb = np.stack([before.band("red"), before.band("green"), before.band("blue")])
    if int(np.isfinite(rgb).all(axis=0).sum()) >= _MIN_STRETCH_PX:
        return shared_stretch(before)
    return shared_stretch(before, after)


def _stretched(rgb: np.ndarray, lo: np.ndarray, hi: np.ndarray, top: float) -> np.ndarray:
    """(3, H, W) reflectance → float32 values in [0, top] (NaN → 0), `lo` → 0 and `hi` → top.
    In float32, in place: a tenth of the time of float64 temporaries (a value on a rounding
    boundary may come out one step apart)."""
    scaled = np.subtract(rgb, lo.astype(np.float32)[:, None, None], dtype=np.float32)
    scaled *= (top / (hi - lo)).astype(np.float32)[:, None, None]
    np.fmax(scaled, 0.0, out=scaled)  # NaN → 0 too
    np.minimum(scaled, top, out=scaled)
    return scaled


def display_rgb(rgb: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(3, H, W) reflectance → (3, H, W) uint8 display values 1..255, 0 where not every band is
    finite (the COGs' nodata)."""
    scaled = _stretched(rgb, lo, hi, 254.0)
    scaled += 1.0
    out = np.rint(scaled, out=scaled).astype(np.uint8)
    out[:, ~np.isfinite(rgb).all(axis=0)] = 0
    return out


def truecolor(
    comp: Composite, lo: np.ndarray, hi: np.ndarray, *, window: tuple[slice, slice] | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 true-colour image; grey where there is no clear observation."""
    sl = window or (slice(None), slice(None))
    rgb = np.stack([comp.band("red")[sl], comp.band("green")[sl], comp.band("blue")[sl]])
    return rgb_picture(rgb, lo, hi)


def rgb_picture(rgb: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(3, H, W) reflectance → (H, W, 3) uint8 picture, grey where not every band is finite."""
    scaled = _stretched(rgb, lo, hi, 255.0)
    img = np.moveaxis(np.rint(scaled, out=scaled).astype(np.uint8), 0, -1).copy()
    img[~np.isfinite(rgb).all(axis=0)] = NODATA_RGB
    return img


def yyyymmdd(days: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Days since 1970-01-01 (-1 none) → int32 YYYYMMDD (0 none), a pixel value that reads as a
    date, and the dates present in order. A table over the span of days: no sort of the pixels."""
    out = np.zeros(days.shape, dtype=np.int32)
    valid = days >= 0
    if not valid.any():
        return out, []
    first = int(days[valid].min())
    offsets = days[valid] - first
    present = np.flatnonzero(np.bincount(offsets.ravel()))
    table = np.zeros(int(present[-1]) + 1, dtype=np.int32)
    for d in present:
        when = _EPOCH + timedelta(days=first + int(d))
        table[d] = when.year * 10000 + when.month * 100 + when.day
    out[valid] = table[offsets]
    return out, [int(table[d]) for d in present]


def _write_styled(
    out: Path,
    rel: str,
    qml: str,
    array: np.ndarray | Callable[[], np.ndarray],
    result: RunResult,
    drawings: Drawings | None = None,
    made_from: tuple[Any, ...] = (),
    **cog: Any,
) -> None:
    """`rel` as a COG with its .qml; with `drawings`, the previous run's file when it was written
    from the same array (or, when `array` is a function, from the same `made_from`: what the
    function makes it from, so a file taken again costs no array) on the same grid with the
    same tags."""
    if callable(array) and not made_from:
        raise ValueError(f"{rel}: an array made on demand needs `made_from` for its drawing key")
    write_text((out / rel).with_suffix(".qml"), qml)
    grid = result.grid
    if result.synthetic:  # said in the file itself: a COG travels without the report
        cog["tags"] = {**cog.get("tags", {}), SYNTHETIC_TAG: "synthetic"}

    def values() -> np.ndarray:
        return array() if callable(array) else array

    if drawings is None:
        write_cog(out / rel, values(), grid, **cog)
        return

    def draw() -> bytes:
        return write_cog(out / rel, values(), grid, **cog).read_bytes()

    source = made_from if callable(array) else array
    inputs = ("cog", source, grid.crs, tuple(grid.transform), sorted(cog.items()))
    data, taken = take_or_draw(drawings, rel, inputs, draw)
    if taken:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)


def _imagery_one(
    out: Path,
    rel: str,
    comp: Composite,
    stretch: tuple[np.ndarray, np.ndarray],
    result: RunResult,
    drawings: Drawings | None,
) -> None:
    lo, hi = stretch

    def rgb() -> np.ndarray:
        return np.stack([comp.band("red"), comp.band("green"), comp.band("blue")])

    # A composite's digest, when the run knows it, stands for its pixels on its grid: no array
    # to hash (and none stacked unless the COG is drawn).
    pixels = None if comp.made_from is not None else rgb()
    source = (comp.made_from, comp.grid) if pixels is None else pixels
    _write_styled(
        out,
        rel,
        raster_styles.truecolor_qml(),
        lambda: display_rgb(rgb() if pixels is None else pixels, lo, hi),
        result,
        drawings,
        made_from=("display_rgb", comp.bands, source, lo, hi),
        nodata=0,
        descriptions=("red", "green", "blue"),
        tags={
            "period": comp.period.label,
            "start": comp.period.start.isoformat(),
            "end": comp.period.end.isoformat(),
            "stretch": "display value = 1 + 254 * (reflectance - low) / (high - low), clipped",
            "stretch_low": ",".join(f"{v:.4f}" for v in lo),
            "stretch_high": ",".join(f"{v:.4f}" for v in hi),
        },
        resampling="average",
        colorinterp=("red", "green", "blue"),
    )


def _date_raster(
    out: Path, rel: str, comp: Composite, result: RunResult, drawings: Drawings | None
) -> None:
    dates, present = yyyymmdd(np.asarray(comp.source_date))
    _write_styled(
        out,
        rel,
        raster_styles.date_qml(present),
        dates,
        result,
        drawings,
        nodata=0,
        descriptions=(f"acquisition date (YYYYMMDD) of each pixel of {comp.period.label}",),
        tags={"units": "YYYYMMDD", "period": comp.period.label},
    )


def write_imagery(
    out: Path,
    result: RunResult,
    lo: np.ndarray,
    hi: np.ndarray,
    drawings: Drawings | None = None,
) -> list[RasterOutput]:
    """imagery/: true-colour COGs of the baseline, the latest composite and every period, and the
    acquisition date of each pixel of the first two. With `drawings`, a COG the previous run
    wrote from the same values is taken again."""
    before, after = result.before, result.after
    written = [
        RasterOutput(
            "imagery/latest.tif", f"latest {after.period.label} true colour", "Imagery", True
        ),
        RasterOutput(
            "imagery/baseline.tif", f"baseline {before.period.label} true colour", "Imagery"
        ),
    ]
    _imagery_one(out, written[0].path, after, (lo, hi), result, drawings)
    _imagery_one(out, written[1].path, before, (lo, hi), result, drawings)
    for rel, comp, title in (
        ("imagery/latest_date.tif", after, f"latest {after.period.label}: acquisition date"),
        ("imagery/baseline_date.tif", before, f"baseline {before.period.label}: acquisition date"),
    ):
        _date_raster(out, rel, comp, result, drawings)
        written.append(RasterOutput(rel, title, "Imagery"))
    for comp in result.composites:
        rel = f"imagery/periods/{_safe(comp.period.label)}.tif"
        _imagery_one(out, rel, comp, (lo, hi), result, drawings)
        written.append(RasterOutput(rel, f"{comp.period.label} true colour", "Imagery/Periods"))
    return written


def write_evidence_rasters(out: Path, result: RunResult, *, all_layers: bool) -> list[RasterOutput]:
    """change.tif always; with `all_layers` also change_mask.tif and clear_count.tif."""
    change = result.change
    score = np.asarray(change.score, dtype=np.float32)
    _write_styled(
        out,
        "change.tif",
        raster_styles.change_qml(change.threshold),
        score,
        result,
        nodata=float("nan"),
        descriptions=("change score (robust z)",),
        tags={
            "threshold": str(change.threshold),
            "before": result.before.period.label,
            "after": result.after.period.label,
        },
        resampling="average",
    )
    written = [RasterOutput("change.tif", "change score (robust z)", "Change evidence")]
    if not all_layers:
        return written
    mask = np.where(np.isfinite(score), np.asarray(change.mask, dtype=np.uint8), np.uint8(255))
    _write_styled(
        out,
        "change_mask.tif",
        raster_styles.mask_qml(),
        mask.astype(np.uint8),
        result,
        nodata=255,
        descriptions=("change mask: 1 change, 0 no change, 255 unobserved",),
        # Hysteresis: seeded where change.tif reaches `threshold`, grown through pixels down to
        # `low_threshold`, holes filled: most of the mask's pixels score under the seed level.
        tags={
            "threshold": str(change.threshold),
            "low_threshold": str(change.low_threshold),
            "grown": "seeds >= threshold, grown through >= low_threshold"
            + (", holes filled" if result.config.get("change", {}).get("fill_holes") else ""),
        },
    )
    counts = _clear_counts(result)
    _write_styled(
        out,
        "clear_count.tif",
        raster_styles.count_qml(int(counts.max()) if counts.size else 0),
        counts,
        result,
        descriptions=("clear observations over the run",),
    )
    return [
        *written,
        RasterOutput("change_mask.tif", "change mask", "Change evidence"),
        RasterOutput("clear_count.tif", "clear observations", "Change evidence"),
    ]


def _clear_counts(result: RunResult) -> np.ndarray:
    """Clear observations per pixel over every date of the run (each date is in one period)."""
    comps: Sequence[Composite] = result.composites or (result.before, result.after)
    total = np.zeros(result.grid.shape, dtype=np.uint32)
    for comp in comps:
        total += comp.count
    return np.minimum(total, np.iinfo(np.uint16).max).astype(np.uint16)


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)
