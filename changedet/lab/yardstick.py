"""The honest yardstick, `changedet eval series`: the production detector on semi-real series.

For each labelled OSCD city: build the hard monthly series in memory (`series.make_oscd_series`:
real spectra, labelled changes revealed at random months, misregistration, haze, seasons, clouds
SCL misses, a baseline switch), run the time-series core with the given config
(`series.detect_series`) and score the **confirmed** structures against the change regions:

- object precision, recall and F1: one-to-one matches at pixel IoU > 0.25 (`score.match_structures`);
- count error: (confirmed structures - true changes) / true changes;
- first-seen accuracy: share of matched structures whose first-seen interval holds the true date,
  with the mean width of those intervals in days beside it (a wide interval holds any date);
- false objects per km² of unchanged ground: confirmed structures with no pixel within
  `buffer_px` of a labelled change, over the area of valid pixels farther than that from one
  (the buffer keeps a change's misaligned fringe from counting as "nothing changed");
- pieces: unmatched confirmed structures on a labelled change that another structure matched,
  that change counted more than once (a large site in pieces): the part of the false positives
  and of an over-count that is not a detection where nothing changed;
- kind mix: the `kind` of the structures matched to a true change and of the unmatched ones.
  OSCD labels say only "change", so this is a mix, not a confusion matrix (that needs the
  synthetic sample's kinded truth: `kindtruth`);
- recall by contrast and by size: the true changes found, binned by how much the real pair's
  reflectance changed over each (mean |after - before| over the 10 m and 20 m bands and the
  region's pixels) and by their size in pixels: what a change must be like to be seen, the
  detection limit the README states.

Cities are pooled by summing counts and areas, never by averaging ratios.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from changedet.config import Config
from changedet.core.change import DETECT_BANDS
from changedet.core.kinds import KINDS  # in table order
from changedet.lab.kindtruth import add_counts
from changedet.lab.oscd import labelled_cities, load_city
from changedet.lab.score import SeriesScore, StructureMatches, match_structures, score_structures
from changedet.lab.series import OSCDSeries, detect_series, make_oscd_series
from changedet.models import Progress, Structure, no_progress

__all__ = [
    "CONTRAST_EDGES",
    "KINDS",
    "SIZE_EDGES_PX",
    "CityResult",
    "SeriesReport",
    "evaluate_city",
    "evaluate_series",
    "false_objects",
    "pieces",
    "recall_by",
    "report_json",
    "truth_contrast",
    "unchanged_ground",
]

# Bin edges of the recall tables: a true change's contrast (mean |after - before| reflectance)
# and its size in 10 m pixels.
CONTRAST_EDGES = (0.02, 0.04, 0.08)
SIZE_EDGES_PX = (20, 50, 200)

Found = Mapping[str, tuple[int, int]]  # bin label → (true changes found, true changes)


@dataclass(frozen=True)
class CityResult:
    """The yardstick for one city, or for several pooled (`+`)."""

    city: str
    score: SeriesScore
    n_truth: int
    n_confirmed: int
    false_objects: int  # confirmed structures nowhere near a labelled change
    unchanged_km2: float
    matched_kinds: Mapping[str, int] = field(default_factory=dict)
    unmatched_kinds: Mapping[str, int] = field(default_factory=dict)
    pieces: int = 0  # unmatched structures on a change another structure matched (`pieces`)
    seconds: float = 0.0
    by_contrast: Found = field(default_factory=dict)  # `recall_by` the changes' contrast
    by_size: Found = field(default_factory=dict)  # and their size in pixels

    @property
    def count_error(self) -> float:
        """(confirmed - true) / true: signed, so over- and under-counting show."""
        return (self.n_confirmed - self.n_truth) / self.n_truth if self.n_truth else 0.0

    @property
    def false_per_km2(self) -> float:
        return self.false_objects / self.unchanged_km2 if self.unchanged_km2 else 0.0

    def __add__(self, other: CityResult) -> CityResult:
        return CityResult(
            "pooled",
            self.score + other.score,
            self.n_truth + other.n_truth,
            self.n_confirmed + other.n_confirmed,
            self.false_objects + other.false_objects,
            self.unchanged_km2 + other.unchanged_km2,
            add_counts(self.matched_kinds, other.matched_kinds),
            add_counts(self.unmatched_kinds, other.unmatched_kinds),
            self.pieces + other.pieces,
            self.seconds + other.seconds,
            _add_found(self.by_contrast, other.by_contrast),
            _add_found(self.by_size, other.by_size),
        )


def _add_found(a: Found, b: Found) -> dict[str, tuple[int, int]]:
    """Bin by bin sums (every bin `recall_by` makes, in its order)."""
    none = (0, 0)
    return {
        k: (a.get(k, none)[0] + b.get(k, none)[0], a.get(k, none)[1] + b.get(k, none)[1])
        for k in {**a, **b}
    }


def _bin_labels(edges: Sequence[float], fmt: str) -> list[str]:
    """Bin labels "< e0", "e0–e1", ..., "≥ en", the edges written with `fmt`."""
    inner = [f"{fmt.format(lo)}–{fmt.format(hi)}" for lo, hi in pairwise(edges)]
    return [f"< {fmt.format(edges[0])}", *inner, f"≥ {fmt.format(edges[-1])}"]


def recall_by(
    values: np.ndarray, found: np.ndarray, edges: Sequence[float], fmt: str = "{:g}"
) -> dict[str, tuple[int, int]]:
    """(found, total) of the true changes in each bin of `values`, every bin in order (below
    the first edge, between edges, from the last edge up, labelled with `fmt`); `found`: bool
    per change."""
    which = np.searchsorted(np.asarray(edges), values, side="right")
    return {
        label: (int(found[which == i].sum()), int((which == i).sum()))
        for i, label in enumerate(_bin_labels(edges, fmt))
    }


def truth_contrast(series: OSCDSeries) -> np.ndarray:
    """Per true change (`series.truth` order): the mean |after - before| reflectance of the real
    pair over the 10 m and 20 m bands and the region's pixels (NaN pixels left out)."""
    bands = [series.bands.index(b) for b in DETECT_BANDS if b in series.bands]
    diff = np.nanmean(np.abs(series.after[bands] - series.before[bands]), axis=0)
    ids = [t.region_id for t in series.truth]
    if not ids:
        return np.zeros(0)
    finite = np.isfinite(diff)
    sums = ndimage.sum(np.where(finite, diff, 0.0), series.regions, ids)
    counts = ndimage.sum(finite, series.regions, ids)
    return np.asarray(sums, dtype=float) / np.maximum(np.asarray(counts, dtype=float), 1.0)


@dataclass(frozen=True)
class SeriesReport:
    cities: tuple[CityResult, ...]
    seed: int
    months: int
    buffer_px: int

    @property
    def pooled(self) -> CityResult:
        total = self.cities[0]
        for row in self.cities[1:]:
            total = total + row
        return replace(total, city="pooled")  # one city: its own row, named as the pooled one


def _kind_counts(structures: Sequence[Structure], indices: Sequence[int]) -> dict[str, int]:
    counts = Counter(structures[i].kind for i in indices)
    return {k: counts.get(k, 0) for k in (*KINDS, *sorted(set(counts) - set(KINDS)))}


def unchanged_ground(regions: np.ndarray, valid: np.ndarray, buffer_px: int) -> np.ndarray:
    """(H, W) bool: `valid` pixels farther than `buffer_px` (8-connected steps) from every
    labelled change (`regions` > 0)."""
    changed = regions > 0
    if buffer_px > 0:
        changed = ndimage.binary_dilation(changed, np.ones((3, 3), bool), iterations=buffer_px)
    return valid & ~changed


def _valid(series: OSCDSeries) -> np.ndarray:
    return np.isfinite(series.before).all(axis=0) & np.isfinite(series.after).all(axis=0)


def false_objects(
    structures: Sequence[Structure], footprints: np.ndarray, unchanged: np.ndarray
) -> int:
    """Confirmed structures whose whole footprint lies on unchanged ground."""
    n = len(structures)
    size = np.bincount(footprints.ravel(), minlength=n + 1)
    on_unchanged = np.bincount(footprints[unchanged].ravel(), minlength=n + 1)
    return sum(
        1
        for i, s in enumerate(structures)
        if s.confirmed and size[i + 1] > 0 and on_unchanged[i + 1] == size[i + 1]
    )


def pieces(found: StructureMatches, footprints: np.ndarray, regions: np.ndarray) -> int:
    """Unmatched confirmed structures with a pixel on a labelled change that another structure
    matched (`regions`: truth[j] → j + 1, as `match_structures` reads it)."""
    matched = np.isin(regions, [ti + 1 for _si, ti in found.pairs])
    on_matched = set(np.unique(footprints[matched]).tolist())
    return sum(1 for i in found.unmatched if i + 1 in on_matched)


def evaluate_city(
    root: Path,
    city: str,
    config: Config,
    *,
    seed: int = 0,
    months: int = 12,
    buffer_px: int = 2,
    calm: Collection[str] = (),
    progress: Progress = no_progress,
) -> CityResult:
    """Build `city`'s semi-real series, run the detector with `config`, score it. `calm`: the
    generator's nuisances switched off (`series.NUISANCES`; only to measure what they cost)."""
    t0 = time.perf_counter()
    series = make_oscd_series(
        load_city(root, city, with_label=True), seed=seed, months=months, calm=calm
    )
    analysis = detect_series(series, config, progress=progress)
    structures, footprints = analysis.structures, analysis.footprints
    score = score_structures(structures, footprints, series.truth, series.regions, city=city)
    found = match_structures(structures, footprints, series.truth, series.regions)
    unchanged = unchanged_ground(series.regions, _valid(series), buffer_px)
    hit = np.zeros(len(series.truth), dtype=bool)
    hit[[ti for _si, ti in found.pairs]] = True
    sizes = np.array([t.n_pixels for t in series.truth], dtype=float)
    return CityResult(
        city,
        score,
        n_truth=len(series.truth),
        n_confirmed=sum(1 for s in structures if s.confirmed),
        false_objects=false_objects(structures, footprints, unchanged),
        unchanged_km2=float(unchanged.sum()) * series.grid.pixel_area_m2 / 1e6,
        matched_kinds=_kind_counts(structures, [si for si, _ti in found.pairs]),
        unmatched_kinds=_kind_counts(structures, found.unmatched),
        pieces=pieces(found, footprints, series.regions),
        seconds=time.perf_counter() - t0,
        by_contrast=recall_by(truth_contrast(series), hit, CONTRAST_EDGES),
        by_size=recall_by(sizes, hit, SIZE_EDGES_PX, "{:g} px"),
    )


def evaluate_series(
    root: Path,
    config: Config,
    *,
    cities: Sequence[str] | None = None,
    seed: int = 0,
    months: int = 12,
    buffer_px: int = 2,
    calm: Collection[str] = (),
    progress: Progress = no_progress,
) -> SeriesReport:
    """`evaluate_city` for `cities` (default: every labelled city under `root`)."""
    names = list(cities) if cities else labelled_cities(root)
    rows = []
    for done, city in enumerate(names):
        progress("cities", done, len(names))
        rows.append(
            evaluate_city(
                root, city, config, seed=seed, months=months, buffer_px=buffer_px, calm=calm
            )
        )
    progress("cities", len(names), len(names))
    return SeriesReport(tuple(rows), seed, months, buffer_px)


def _row_json(row: CityResult) -> dict[str, Any]:
    s = row.score
    return {
        "city": row.city,
        "truth": row.n_truth,
        "confirmed": row.n_confirmed,
        "tp": s.tp,
        "fp": s.fp,
        "fn": s.fn,
        "precision": s.precision,
        "recall": s.recall,
        "f1": s.f1,
        "count_error": row.count_error,
        "first_seen": s.first_seen_accuracy,
        "first_seen_hits": s.first_seen_hits,
        "first_seen_days": s.mean_interval_days,
        "false_objects": row.false_objects,
        "pieces": row.pieces,
        "unchanged_km2": row.unchanged_km2,
        "false_per_km2": row.false_per_km2,
        "matched_kinds": dict(row.matched_kinds),
        "unmatched_kinds": dict(row.unmatched_kinds),
        "found_by_contrast": _found_json(row.by_contrast),
        "found_by_size": _found_json(row.by_size),
        "seconds": round(row.seconds, 1),
    }


def _found_json(found: Found) -> list[dict[str, Any]]:
    """The bins in order: label, true changes found, true changes, recall (null when none)."""
    return [
        {"bin": label, "found": hits, "truth": total, "recall": hits / total if total else None}
        for label, (hits, total) in found.items()
    ]


def report_json(report: SeriesReport) -> dict[str, Any]:
    """The report as plain JSON data: per city, pooled, and how it was measured."""
    return {
        "seed": report.seed,
        "months": report.months,
        "buffer_px": report.buffer_px,
        "min_iou": 0.25,
        "cities": [_row_json(r) for r in report.cities],
        "pooled": _row_json(report.pooled),
    }
