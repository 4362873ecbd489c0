"""Ids carried over from a ledger kept between runs (the monitor's), pure shapely.

A place id (`core.ledger`) names a structure by the lattice cell it stands in, so a footprint
that grows or shrinks across a cell border between two runs gets another id. For a rerun that
is a small loss (`bench/ids.py`); for a monitor it would be a false alarm: the known building
"dropped" and a "new" one alerted where nothing changed, and the analyst's verdict left behind.
So a run that knows the ledger matches its structures to the known ones by footprint first:

- a structure and a known one that each cover at least half of the other (`MIN_SHARE`) are the
  same, and it keeps the known id; so are two that overlap at all and already share the id;
- pairs are taken best overlap first, each known id at most once (a structure that split keeps
  the id on its larger part);
- any other structure keeps its place id unless a known structure holds it (the old building is
  gone and a new one stands in its cell): then the next free `-2`, `-3` of its cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from shapely import STRtree

from changedet.core.timeseries import Analysis

__all__ = ["MIN_SHARE", "carried_ids", "carry_ids"]

MIN_SHARE = 0.5  # the same structure: each covers at least this share of the other


def _pairs(
    found: Sequence[tuple[str, Any]], known: Mapping[str, Any]
) -> list[tuple[float, str, str]]:
    """(-share, found id, known id) of every pair that may be one structure, best first."""
    names = sorted(known)
    shapes = [known[n] for n in names]
    tree = STRtree(shapes)
    pairs = []
    for sid, geom in found:
        for j in tree.query(geom):
            other = shapes[int(j)]
            common = geom.intersection(other).area
            if common <= 0:
                continue
            share = min(common / geom.area, common / other.area)
            if share >= MIN_SHARE or sid == names[int(j)]:
                pairs.append((-share, sid, names[int(j)]))
    pairs.sort()
    return pairs


def _cell(structure_id: str) -> str:
    """'39N-539350-3944550' of '39N-539350-3944550-2': zone, easting, northing."""
    return "-".join(structure_id.split("-")[:3])


def carried_ids(found: Sequence[tuple[str, Any]], known: Mapping[str, Any]) -> dict[str, str]:
    """found id → the id to use. found: (place id, footprint) of this run's structures; known:
    id → footprint of the ledger's; both polygons in one projected CRS (metres)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for _, sid, kid in _pairs(found, known) if known else ():
        if sid not in out and kid not in used:
            out[sid] = kid
            used.add(kid)
    taken = set(known) | used
    clashing = []
    for sid, _ in sorted(found):
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


def carry_ids(analysis: Analysis, known: Mapping[str, Any]) -> Analysis:
    """`analysis` with its structures named as the ledger `known` (id → footprint in the
    analysis grid's CRS) names them: structures, the ledger's structures and events, and the
    berms' links."""
    if not known:
        return analysis
    ids = carried_ids([(s.id, s.geometry) for s in analysis.ledger.structures], known)
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
