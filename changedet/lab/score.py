"""Every score the test bench reports, in one place: the detector never imports this.

Three kinds of truth, three scorers:

- OSCD pixel labels: precision, recall and F1 of the change class per city, pooled by summing the
  confusion counts (`score_prediction`, `pool_city_scores`);
- semi-real series truth regions: one-to-one object matching of ledger structures at pixel
  IoU > 0.25 (the SpaceNet 7 rule) and first-seen accuracy (`score_structures`);
- polygon truth of the synthetic sample (`truth.geojson`): greedy one-to-one matching of detected
  polygons by IoU or centroid distance (`match`), and date-interval checks (`in_interval`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from shapely.geometry import shape

from changedet.aoi import to_grid_crs
from changedet.errors import DataError
from changedet.models import Structure

if TYPE_CHECKING:
    from changedet.lab.series import TruthRegion

__all__ = [
    "CityScore",
    "Match",
    "MatchReport",
    "SeriesScore",
    "StructureMatches",
    "in_interval",
    "kept_ids",
    "load_features",
    "match",
    "match_geometries",
    "match_structures",
    "pool_city_scores",
    "precision_recall_f1",
    "score_prediction",
    "score_structures",
]


# ----------------------------------------------------------------------------- OSCD pixel scores


@dataclass(frozen=True)
class CityScore:
    """Precision/recall/F1 of the change class for one city (or pooled); None without a label."""

    city: str
    precision: float | None
    recall: float | None
    f1: float | None
    tp: int
    fp: int
    fn: int
    seconds: float


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from confusion counts (0.0 where a ratio is undefined)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return precision, recall, f1


def score_prediction(
    name: str, predicted: np.ndarray, label: np.ndarray | None, seconds: float = 0.0
) -> CityScore:
    """Confusion counts and P/R/F1 of the change class; None scores when there is no label."""
    if label is None:
        return CityScore(name, None, None, None, 0, 0, 0, seconds)
    if predicted.shape != label.shape:
        raise DataError(
            f"{name}: prediction {predicted.shape} and label {label.shape} differ in shape"
        )
    tp = int(np.count_nonzero(predicted & label))
    fp = int(np.count_nonzero(predicted & ~label))
    fn = int(np.count_nonzero(~predicted & label))
    p, r, f = precision_recall_f1(tp, fp, fn)
    return CityScore(name, p, r, f, tp, fp, fn, seconds)


def pool_city_scores(scores: Sequence[CityScore]) -> CityScore:
    """Pooled score: confusion counts summed over the labelled cities; seconds over all of them."""
    seconds = sum(s.seconds for s in scores)
    labelled = [s for s in scores if s.f1 is not None]
    if not labelled:
        return CityScore("pooled", None, None, None, 0, 0, 0, seconds)
    tp = sum(s.tp for s in labelled)
    fp = sum(s.fp for s in labelled)
    fn = sum(s.fn for s in labelled)
    p, r, f = precision_recall_f1(tp, fp, fn)
    return CityScore("pooled", p, r, f, tp, fp, fn, seconds)


# ----------------------------------------------------------------------------- series object scores


@dataclass(frozen=True)
class SeriesScore:
    """Object-level scores of structures against truth regions (one city or pooled)."""

    city: str
    tp: int
    fp: int
    fn: int
    first_seen_hits: int  # matched structures whose interval contains the true date
    matched: int
    # Days spanned by the intervals with both ends, and how many have both: a hit is cheap with a
    # wide interval, so accuracy is reported with the mean width beside it.
    interval_days: int = 0
    bounded: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def first_seen_accuracy(self) -> float:
        return self.first_seen_hits / self.matched if self.matched else 0.0

    @property
    def mean_interval_days(self) -> float:
        """Mean width of the matched structures' first-seen intervals (both ends known)."""
        return self.interval_days / self.bounded if self.bounded else 0.0

    def __add__(self, other: SeriesScore) -> SeriesScore:
        return SeriesScore(
            "pooled",
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.first_seen_hits + other.first_seen_hits,
            self.matched + other.matched,
            self.interval_days + other.interval_days,
            self.bounded + other.bounded,
        )


def _iou_candidates(
    s_lab: np.ndarray, n_structures: int, truth_raster: np.ndarray, n_truth: int, min_iou: float
) -> tuple[list[tuple[float, int, int]], np.ndarray]:
    """((iou, structure label, truth label) above `min_iou`, best first; structure areas)."""
    both = (s_lab > 0) & (truth_raster > 0)
    pair = s_lab[both].astype(np.int64) * (n_truth + 1) + truth_raster[both]
    inter = np.bincount(pair, minlength=0)
    s_area = np.bincount(s_lab.ravel(), minlength=n_structures + 1)
    t_area = np.bincount(truth_raster.ravel(), minlength=n_truth + 1)
    cands: list[tuple[float, int, int]] = []
    for code in np.flatnonzero(inter):
        si, ti = divmod(int(code), n_truth + 1)
        iou = inter[code] / (s_area[si] + t_area[ti] - inter[code])
        if iou > min_iou:
            cands.append((float(iou), si, ti))
    cands.sort(key=lambda c: (-c[0], c[1], c[2]))
    return cands, s_area


def _first_seen_hit(structure: Structure, appeared: date) -> bool:
    """first_seen_start <= appeared < first_seen_end (a missing bound is open)."""
    lo_ok = structure.first_seen_start is None or structure.first_seen_start <= appeared
    hi_ok = structure.first_seen_end is None or appeared < structure.first_seen_end
    return lo_ok and hi_ok


def _confirmed_labels(
    structures: Sequence[Structure], structure_labels: np.ndarray, confirmed_only: bool
) -> tuple[np.ndarray, list[int]]:
    """The label raster with unscored structures cleared, and the indices of those scored."""
    keep = [i for i, s in enumerate(structures) if s.confirmed or not confirmed_only]
    keep_set = np.zeros(len(structures) + 1, dtype=bool)
    keep_set[[i + 1 for i in keep]] = True
    return np.where(keep_set[structure_labels], structure_labels, 0), keep


@dataclass(frozen=True)
class StructureMatches:
    """One-to-one pairs of scored structures and truth regions (0-based indices), and the
    structures that were scored (confirmed, with a footprint) but matched nothing."""

    pairs: tuple[tuple[int, int], ...]
    unmatched: tuple[int, ...]


def match_structures(
    structures: Sequence[Structure],
    structure_labels: np.ndarray,
    truth: Sequence[TruthRegion],
    truth_raster: np.ndarray,
    *,
    min_iou: float = 0.25,
    confirmed_only: bool = True,
) -> StructureMatches:
    """Greedy one-to-one matching by pixel IoU (> `min_iou`, highest first, SpaceNet 7 style).

    structure_labels: (H, W) int, structures[i] → i + 1 (e.g. `Ledger.footprints`);
    truth_raster: (H, W) int, truth[j] → j + 1 (`series.truth_labels`).
    """
    s_lab, keep = _confirmed_labels(structures, structure_labels, confirmed_only)
    cands, s_area = _iou_candidates(s_lab, len(structures), truth_raster, len(truth), min_iou)
    used_s: set[int] = set()
    used_t: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for _iou, si, ti in cands:
        if si in used_s or ti in used_t:
            continue
        used_s.add(si)
        used_t.add(ti)
        pairs.append((si - 1, ti - 1))
    unmatched = tuple(i for i in keep if s_area[i + 1] > 0 and i + 1 not in used_s)
    return StructureMatches(tuple(pairs), unmatched)


def score_structures(
    structures: Sequence[Structure],
    structure_labels: np.ndarray,
    truth: Sequence[TruthRegion],
    truth_raster: np.ndarray,
    *,
    city: str = "",
    min_iou: float = 0.25,
    confirmed_only: bool = True,
) -> SeriesScore:
    """Object scores of `match_structures`' pairs (same arguments). A matched structure's
    first-seen is a hit when first_seen_start <= appeared < first_seen_end (a missing bound is
    open)."""
    found = match_structures(
        structures,
        structure_labels,
        truth,
        truth_raster,
        min_iou=min_iou,
        confirmed_only=confirmed_only,
    )
    hits = sum(_first_seen_hit(structures[si], truth[ti].appeared) for si, ti in found.pairs)
    widths = [_interval_days(structures[si]) for si, _ti in found.pairs]
    bounded = [w for w in widths if w is not None]
    tp = len(found.pairs)
    return SeriesScore(
        city, tp, len(found.unmatched), len(truth) - tp, hits, tp, sum(bounded), len(bounded)
    )


def _interval_days(structure: Structure) -> int | None:
    start, end = structure.first_seen_start, structure.first_seen_end
    return (end - start).days if start is not None and end is not None else None


# ----------------------------------------------------------------------------- polygon truth


def kept_ids(
    first: Sequence[Structure],
    first_footprints: np.ndarray,
    second: Sequence[Structure],
    second_footprints: np.ndarray,
) -> tuple[int, int]:
    """(same id, pairs): of the confirmed structures two runs share — each covering at least half
    of the other's footprint — how many the second run names as the first did. Footprints are
    the runs' (H, W) int rasters on one grid (i + 1 where structure i stands)."""
    kept = pairs = 0
    for i, s in enumerate(first):
        if not s.confirmed:
            continue
        mine = first_footprints == i + 1
        labels, counts = np.unique(second_footprints[mine], return_counts=True)
        candidates = [
            (int(c), int(j))
            for j, c in zip(labels, counts, strict=True)
            if j > 0 and second[j - 1].confirmed
        ]
        if not candidates:
            continue
        overlap, j = max(candidates)
        theirs = int(np.count_nonzero(second_footprints == j))
        if overlap < 0.5 * mine.sum() or overlap < 0.5 * theirs:
            continue  # not the same structure: one is a merge or a piece of the other
        pairs += 1
        kept += second[j - 1].id == s.id
    return kept, pairs


@dataclass(frozen=True)
class Match:
    truth_id: str
    detection_id: str
    iou: float
    distance_m: float


@dataclass(frozen=True)
class MatchReport:
    n_truth: int
    n_detections: int
    matches: tuple[Match, ...]

    @property
    def recall(self) -> float:
        return len(self.matches) / self.n_truth if self.n_truth else 1.0

    @property
    def false_share(self) -> float:
        """Share of detections that match no true new structure."""
        matched = {m.detection_id for m in self.matches}
        return (self.n_detections - len(matched)) / self.n_detections if self.n_detections else 0.0


def load_features(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The features of a GeoJSON FeatureCollection file, optionally only those of `kind`."""
    feats = json.loads(path.read_text())["features"]
    return [f for f in feats if kind is None or f["properties"].get("kind") == kind]


def match(
    truth: list[dict[str, Any]],
    detections: list[dict[str, Any]],
    crs: str,
    *,
    min_iou: float = 0.25,
    max_dist_m: float = 20.0,
) -> MatchReport:
    """Greedy one-to-one matching: IoU > min_iou or centroid distance <= max_dist_m (in `crs`)."""
    return match_geometries(
        [to_grid_crs(shape(f["geometry"]), crs) for f in truth],
        [to_grid_crs(shape(f["geometry"]), crs) for f in detections],
        [str(f["properties"]["id"]) for f in truth],
        [str(f["properties"]["id"]) for f in detections],
        min_iou=min_iou,
        max_dist_m=max_dist_m,
    )


def match_geometries(
    truth: Sequence[Any],
    detections: Sequence[Any],
    truth_ids: Sequence[str],
    detection_ids: Sequence[str],
    *,
    min_iou: float = 0.25,
    max_dist_m: float = 20.0,
) -> MatchReport:
    """`match` on shapely geometries already in one metric CRS (max_dist_m < 0: by IoU only)."""
    pairs = []
    for i, tg in enumerate(truth):
        for j, dg in enumerate(detections):
            inter = tg.intersection(dg).area
            iou = inter / tg.union(dg).area if inter else 0.0
            dist = tg.centroid.distance(dg.centroid)
            if iou > min_iou or dist <= max_dist_m:
                pairs.append((-iou, dist, i, j))
    pairs.sort()
    used_t: set[int] = set()
    used_d: set[int] = set()
    out = []
    for neg_iou, dist, i, j in pairs:
        if i in used_t or j in used_d:
            continue
        used_t.add(i)
        used_d.add(j)
        out.append(Match(truth_ids[i], detection_ids[j], -neg_iou, dist))
    return MatchReport(len(truth), len(detections), tuple(out))


def in_interval(appeared: str, start: str | None, end: str | None) -> bool:
    """True when the true appearance date lies in [start, end) (open ends allowed)."""
    d = date.fromisoformat(appeared)
    lo = date.fromisoformat(start) if start else date.min
    hi = date.fromisoformat(end) if end else date.max
    return lo <= d < hi
