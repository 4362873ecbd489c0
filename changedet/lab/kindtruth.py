"""How far `kind` can be trusted where the truth has kinds: the bundled synthetic sample.

OSCD labels say only "change"; the synthetic sample's `truth.geojson` says what each new thing is:
a `building` (a roof footprint polygon) or a `berm` (a LineString along the berm's centre, with its
width) — ground works. This runs the whole pipeline on one sample AOI (files written to memory
only), then matches its confirmed structures to that truth and counts, per true kind, the kind the
detector gave (or "missed"), plus the kinds of the structures that matched nothing.

Matching, greedy and one-to-one: buildings first, at IoU > 0.25 or centroids within 20 m (the
demo test's rule); then berm rings (the line buffered by half its width) against the structures
left, at IoU > 0.25 only — a ring's centroid is its building's, so distance would mislead.
The synthetic scene is our own invention: this shows that the rules do what they say on
spectra that obey them, not that real spectra do.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from shapely.geometry import shape

from changedet.aoi import to_grid_crs
from changedet.config import Config
from changedet.lab.fakes import MemoryWriter
from changedet.lab.score import match_geometries
from changedet.models import AOI, Structure
from changedet.pipeline import PipelineIO, run_aoi

__all__ = [
    "MISSED",
    "KindConfusion",
    "add_counts",
    "kind_confusion",
    "run_sample",
    "sample_period",
]

MISSED = "missed"
TRUE_KINDS = {"building": "building", "berm": "ground works"}  # truth kind -> detector kind


def add_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """Key-wise sum that keeps zero counts (Counter's + drops them, and tables need them)."""
    return {k: a.get(k, 0) + b.get(k, 0) for k in dict.fromkeys([*a, *b])}


@dataclass(frozen=True)
class KindConfusion:
    """rows: true kind ("building", "ground works") -> detected kind (or MISSED) -> count;
    unmatched: detected kind -> count of confirmed structures that matched no truth."""

    name: str
    rows: Mapping[str, Mapping[str, int]]
    unmatched: Mapping[str, int]

    def agreement(self) -> float:
        """Share of matched true structures whose detected kind is their true kind."""
        hit = sum(r.get(kind, 0) for kind, r in self.rows.items())
        matched = sum(n for r in self.rows.values() for k, n in r.items() if k != MISSED)
        return hit / matched if matched else 0.0

    def __add__(self, other: KindConfusion) -> KindConfusion:
        rows = {
            k: add_counts(self.rows.get(k, {}), other.rows.get(k, {}))
            for k in dict.fromkeys([*self.rows, *other.rows])
        }
        return KindConfusion("pooled", rows, add_counts(self.unmatched, other.unmatched))


def _truth_geometries(truth: Sequence[dict[str, Any]], crs: str) -> dict[str, list[Any]]:
    """Per detector kind, the true footprints in `crs` (berm lines buffered to their width)."""
    out: dict[str, list[Any]] = {kind: [] for kind in TRUE_KINDS.values()}
    for f in truth:
        kind = TRUE_KINDS.get(f["properties"].get("kind"))
        if kind is None:
            continue  # "existing": there before the series began, not new
        geom = to_grid_crs(shape(f["geometry"]), crs)
        if geom.area == 0:  # a berm's centre line
            geom = geom.buffer(float(f["properties"].get("width_m", 10.0)) / 2)
        out[kind].append(geom)
    return out


def kind_confusion(
    name: str, structures: Sequence[Structure], truth: Sequence[dict[str, Any]], crs: str
) -> KindConfusion:
    """Confusion of detected against true kinds (module docstring: the matching rule).
    `structures` in `crs`; only confirmed ones count. `truth`: the sample's truth features."""
    left = [s for s in structures if s.confirmed]
    rows: dict[str, dict[str, int]] = {}
    for kind, geoms in _truth_geometries(truth, crs).items():
        report = match_geometries(
            geoms,
            [s.geometry for s in left],
            [str(i) for i in range(len(geoms))],
            [s.id for s in left],
            max_dist_m=20.0 if kind == "building" else -1.0,
        )
        found = {m.detection_id for m in report.matches}
        got = Counter(s.kind for s in left if s.id in found)
        got[MISSED] = len(geoms) - len(report.matches)
        rows[kind] = dict(got)
        left = [s for s in left if s.id not in found]
    return KindConfusion(name, rows, dict(Counter(s.kind for s in left)))


def sample_period(sample_dir: Path) -> tuple[date, date]:
    """The whole months a sample's acquisitions span: (first day of the first, last day of the
    last), as the demo configs set them."""
    dates = json.loads((sample_dir / "scenario.json").read_text(encoding="utf-8"))["dates"]
    days = sorted(date.fromisoformat(d["datetime"][:10]) for d in dates)
    last = days[-1]
    after = date(last.year + last.month // 12, last.month % 12 + 1, 1)
    return days[0].replace(day=1), after - timedelta(days=1)


def run_sample(aoi: AOI, config: Config, sample_dir: Path) -> KindConfusion:
    """Run the pipeline on one sample AOI with `config` (its catalog, dates and cache set here),
    keep the result in memory and score its kinds against `sample_dir/truth.geojson`."""
    start, end = sample_period(sample_dir)
    config = dataclasses.replace(
        config,
        catalog=dataclasses.replace(config.catalog, url=str(sample_dir / "catalog.json")),
        time=dataclasses.replace(config.time, start=start, end=end),
        read=dataclasses.replace(config.read, cache_dir=""),
    )
    writer = MemoryWriter()
    io = dataclasses.replace(PipelineIO.default(), write=writer)
    with tempfile.TemporaryDirectory() as out:
        run_aoi(aoi, config, out_root=Path(out), io=io)
    result = writer.results[-1]
    truth = json.loads((sample_dir / "truth.geojson").read_text(encoding="utf-8"))["features"]
    return kind_confusion(aoi.id, result.structures, truth, result.grid.crs)
