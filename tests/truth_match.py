"""Matching detections to sample truth (test-side only: the detector never reads truth)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from shapely.geometry import shape

from changedet.aoi import to_grid_crs


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
    """Greedy one-to-one matching: IoU > min_iou or centroid distance <= max_dist_m."""
    t_geoms = [to_grid_crs(shape(f["geometry"]), crs) for f in truth]
    d_geoms = [to_grid_crs(shape(f["geometry"]), crs) for f in detections]
    pairs = []
    for i, tg in enumerate(t_geoms):
        for j, dg in enumerate(d_geoms):
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
        out.append(
            Match(
                str(truth[i]["properties"]["id"]),
                str(detections[j]["properties"]["id"]),
                -neg_iou,
                dist,
            )
        )
    return MatchReport(len(truth), len(detections), tuple(out))


def in_interval(appeared: str, start: str | None, end: str | None) -> bool:
    """True when the true appearance date lies in [start, end) (open ends allowed)."""
    d = date.fromisoformat(appeared)
    lo = date.fromisoformat(start) if start else date.min
    hi = date.fromisoformat(end) if end else date.max
    return lo <= d < hi
