"""Ids carried over from a ledger kept between runs (the monitor's), pure shapely.

A place id (`core.ledger`) names a structure by the lattice cell it stands in, so a footprint
that grows or shrinks across a cell border between two runs gets another id. For a rerun that
is a small loss (`bench/ids.py`); for a monitor it would be a false alarm: the known building
"dropped" and a "new" one alerted where nothing changed, and the analyst's verdict left behind.
So a run that knows the ledger matches its structures to the known ones by footprint first:

- a structure and a known one that each cover at least half of the other (`MIN_SHARE`) are the
  same, and it keeps the known id; so are two that overlap at all and already share the id;
- but never a structure first seen after the known one vanished: a building rebuilt where a
  struck one stood is another building, and the vanished one keeps its id and its alerts;
- pairs are taken best overlap first (on a tie, the one that already shares the id), each known
  id at most once (a structure that split keeps the id on its larger part);
- any other structure keeps its place id unless a known structure holds it (the old building is
  gone and a new one stands in its cell): then the next free `-2`, `-3` of its cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from shapely import STRtree

from changedet.core.timeseries import Analysis

__all__ = ["MIN_SHARE", "Found", "Known", "carried_ids", "carry_ids"]

MIN_SHARE = 0.5  # the same structure: each covers at least this share of the other


@dataclass(frozen=True)
class Found:
    """One of this run's structures: its place id, footprint, and the start of its first-seen
    interval (None: present from the first period compared)."""

    id: str
    footprint: Any
    first_seen_start: date | None = None


@dataclass(frozen=True)
class Known:
    """One of the ledger's structures: its footprint, and when it vanished (None: it did not)."""

    footprint: Any
    vanished_after: date | None = None

    @classmethod
    def from_geojson(cls, geometry: Mapping[str, Any], vanished_after: str | None) -> Known:
        """A structure as the monitor's ledger and a run's structures.geojson keep it: a GeoJSON
        geometry and an ISO date (or None)."""
        from shapely.geometry import shape

        gone = date.fromisoformat(vanished_after) if vanished_after else None
        return cls(shape(geometry), gone)


def _may_be(found: Found, known: Known) -> bool:
    """False when `found` was first seen after `known` vanished: another building."""
    gone, born = known.vanished_after, found.first_seen_start
    return gone is None or born is None or born <= gone


def _pairs(
    found: Sequence[Found], known: Mapping[str, Known]
) -> list[tuple[float, bool, str, str]]:
    """(-share, not the same id, found id, known id) of every pair that may be one structure,
    best first."""
    names = sorted(known)
    tree = STRtree([known[n].footprint for n in names])
    pairs = []
    for f in found:
        for j in tree.query(f.footprint):
            kid = names[int(j)]
            other = known[kid]
            common = f.footprint.intersection(other.footprint).area
            if common <= 0 or not _may_be(f, other):
                continue
            share = min(common / f.footprint.area, common / other.footprint.area)
            if share >= MIN_SHARE or f.id == kid:
                pairs.append((-share, f.id != kid, f.id, kid))
    pairs.sort()
    return pairs


def _cell(structure_id: str) -> str:
    """'39N-539325-3944475' of '39N-539325-3944475-2': zone, easting, northing."""
    return "-".join(structure_id.split("-")[:3])


def carried_ids(found: Sequence[Found], known: Mapping[str, Known]) -> dict[str, str]:
    """found id → the id to use. Footprints of both in one projected CRS (metres)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for _, _, sid, kid in _pairs(found, known) if known else ():
        if sid not in out and kid not in used:
            out[sid] = kid
            used.add(kid)
    taken = set(known) | used
    clashing = []
    for sid in sorted(f.id for f in found):
        if sid in out:
            continue
        if sid in taken:
            clashing.append(sid)
        else:
            out[sid] = sid
            taken.add(sid)
    for sid in clashing:
        n = 2
        while f"{_cell(sid)}-{n}" in taken:
            n += 1
        out[sid] = f"{_cell(sid)}-{n}"
        taken.add(out[sid])
    return out


def carry_ids(analysis: Analysis, known: Mapping[str, Known]) -> Analysis:
    """`analysis` with its structures named as the ledger `known` (footprints in the analysis
    grid's CRS) names them: structures, the ledger's structures and events, and the berms'
    links."""
    if not known:
        return analysis
    found = [Found(s.id, s.geometry, s.first_seen_start) for s in analysis.ledger.structures]
    ids = carried_ids(found, known)
    if all(new == old for old, new in ids.items()):
        return analysis
    ledger = analysis.ledger
    ledger = replace(
        ledger,
        structures=tuple(replace(s, id=ids[s.id]) for s in ledger.structures),
        events=tuple({**e, "structure_id": ids[e["structure_id"]]} for e in ledger.events),
    )
    return replace(
        analysis,
        ledger=ledger,
        structures=tuple(replace(s, id=ids[s.id]) for s in analysis.structures),
        berms=tuple(
            replace(b, structure_id=ids.get(b.structure_id, b.structure_id))
            if b.structure_id is not None
            else b
            for b in analysis.berms
        ),
    )
