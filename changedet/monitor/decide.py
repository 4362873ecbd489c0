"""What a check changes in the ledger and what it alerts (pure: rows in, rows out).

A structure's ledger status comes from the detector's view of it: `candidate` (not confirmed),
`confirmed`, `bermed` (confirmed, ringed by a berm), `vanished`, `dropped` (a candidate that did
not persist, or a structure the detector no longer finds: its history entry says "now part of
<id>" when a structure found now covers most of it, as when a candidate grows into a larger
site). Every status change is a history entry. Alerts, each at most once per structure and kind
(its idempotency key says so):

- `new`: the first time a structure is confirmed (bermed or vanished included; one already
  vanished then gets its `vanished` alert too, in the same run, so that the alerts told do not
  depend on how often the job runs);
- `bermed`: a structure already alerted as new that became bermed later;
- `vanished`: a structure already alerted as new that has vanished since;
- `withdrawn`: a structure already alerted as new that the detector no longer confirms (later
  months showed a transient, or it is no longer found: then `detail` says why, "now part of
  <id>" when a structure found now covers most of it);
- `reinstated`: a withdrawn structure the detector confirms again.

A structure lost to an edit of the watch (its outline, its start) is retired without an alert.
A structure the analyst called a false positive never alerts again, while so ruled: once the
verdict is taken back, what it became meanwhile (bermed, vanished, withdrawn) is alerted once, as
the subscriber was not told it (their last alert, not the stored status, is compared).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import shapely

from changedet.models import FALSE_POSITIVE, Structure
from changedet.monitor.state import AlertRow, HistoryEntry, StructureRow

__all__ = ["LedgerChanges", "alert_key", "ledger_changes", "ledger_status"]

CONFIRMED_STATES = ("confirmed", "bermed", "vanished")


def ledger_status(s: Structure) -> str:
    if s.status == "dropped":
        return "dropped"
    if not s.confirmed:
        return "candidate"
    if s.status == "vanished":
        return "vanished"
    return "bermed" if s.bermed else "confirmed"


def alert_key(aoi_id: str, structure_id: str, kind: str) -> str:
    """The same alert always has the same key: re-runs and receivers can tell it again."""
    text = f"changedet-alert/{aoi_id}/{structure_id}/{kind}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class LedgerChanges:
    rows: tuple[StructureRow, ...]  # rows that are new or differ from the stored ones
    history: tuple[HistoryEntry, ...]
    alerts: tuple[AlertRow, ...]


def _alert_kinds(new: StructureRow, alerted: set[str]) -> list[str]:
    if new.review == FALSE_POSITIVE:
        return []
    if new.status not in CONFIRMED_STATES:
        return ["withdrawn"] if "new" in alerted and "withdrawn" not in alerted else []
    if "new" not in alerted:
        # Confirmed only after it vanished (runs spaced out): told both, as runs each month would.
        return ["new", "vanished"] if new.status == "vanished" else ["new"]
    kinds = []
    if "withdrawn" in alerted and "reinstated" not in alerted:
        kinds.append("reinstated")  # the subscriber's last word on it was "withdrawn"
    # What the subscriber was told decides, not the stored status: one that became bermed while
    # ruled a false positive is told so once the verdict is taken back.
    if new.status in ("bermed", "vanished") and new.status not in alerted:
        kinds.append(new.status)
    return kinds


def _payload(
    aoi_id: str,
    row: StructureRow,
    kind: str,
    key: str,
    synthetic: bool,
    detail: str | None = None,
    persistence_checked: bool = True,
) -> dict[str, Any]:
    return {
        "key": key,
        "aoi": aoi_id,
        "alert": kind,
        "synthetic": synthetic,
        "persistence_checked": persistence_checked,
        "structure_id": row.id,
        "status": row.status,
        "kind": row.kind,
        "bermed": row.bermed,
        "area_m2": row.area_m2,
        "confidence": row.confidence,
        "first_seen_start": row.first_seen_start,
        "first_seen_end": row.first_seen_end,
        "vanished_after": row.vanished_after,
        "lat": row.lat,
        "lon": row.lon,
        "geometry": row.geometry,
        "detail": detail,
    }


def ledger_changes(
    aoi_id: str,
    stored: Mapping[str, StructureRow],
    current: Sequence[StructureRow],
    alerted: Iterable[tuple[str, str]],
    *,
    synthetic: bool = False,
    outline: Any = None,
    baseline_end: date | None = None,
    edited: bool = False,
    persistence_checked: bool = True,
) -> LedgerChanges:
    """Compare the detector's structures (`current`, reviews already carried over) with the
    stored ledger: changed rows, their history and the alerts they raise. Structures stored but
    no longer found stay in the ledger as `dropped`. `synthetic`: the run read generated data;
    its alerts say so. `outline` (EPSG:4326): the watch's AOI now; `baseline_end`: the first day
    after the baseline compared with now; `edited`: the watch was edited since the last run. A structure lost because the watch was edited past it
    (its centre outside the outline, or first present within the baseline: the start moved
    later) is retired as such, not withdrawn: its ground did not change.
    `persistence_checked` False: too few clear periods yet to check that what was confirmed
    persists (run.json's comparison says so); its alerts say so."""
    done: dict[str, set[str]] = {}
    for structure_id, kind in alerted:
        done.setdefault(structure_id, set()).add(kind)
    rows: list[StructureRow] = []
    history: list[HistoryEntry] = []
    alerts: list[AlertRow] = []
    seen = set()
    for row in current:
        seen.add(row.id)
        old = stored.get(row.id)
        if old != row:
            rows.append(row)
        if old is None or old.status != row.status:
            history.append(HistoryEntry(row.id, row.status, None if old is None else old.status))
        unconfirmed = (  # an edit, not the months since, is why (it said the months)
            "no longer confirmed once the watch was edited (its outline or settings)"
            if edited
            else "not confirmed by the months since"
        )
        alerts += _alerts(aoi_id, row, done, (synthetic, persistence_checked), unconfirmed)
    lost = [old for sid, old in stored.items() if sid not in seen and old.status != "dropped"]
    outlines = _outlines(current) if lost else []
    for old in lost:
        gone = StructureRow(**{**old.__dict__, "status": "dropped"})
        rows.append(gone)
        retired = _outside_the_watch(old, outline, baseline_end)
        into = _covering(old, outlines)
        detail = retired or ("no longer detected" if into is None else f"now part of {into}")
        history.append(HistoryEntry(old.id, "dropped", old.status, detail))
        if retired is None:  # the ground did not change: nothing to withdraw
            alerts += _alerts(aoi_id, gone, done, (synthetic, persistence_checked), detail)
    return LedgerChanges(tuple(rows), tuple(history), tuple(alerts))


def _outside_the_watch(old: StructureRow, outline: Any, baseline_end: date | None) -> str | None:
    """Why a lost structure lies outside what the watch looks at now, if it does. (With the same
    baseline every structure was first present after it.)"""
    if outline is not None and old.geometry:
        centre = shapely.from_geojson(old.geometry).representative_point()
        if not outline.covers(centre):
            return "outside the AOI (its outline was edited)"
    if baseline_end and old.first_seen_end and old.first_seen_end <= baseline_end.isoformat():
        return "in the baseline now (the watch's start moved later)"
    return None


def _alerts(
    aoi_id: str,
    row: StructureRow,
    done: Mapping[str, set[str]],
    flags: tuple[bool, bool],
    withdrawn_why: str,
) -> list[AlertRow]:
    """The alerts a structure's new row raises; `flags`: (synthetic, persistence_checked);
    `withdrawn_why` is a withdrawn alert's detail."""
    synthetic, checked = flags
    out = []
    for kind in _alert_kinds(row, done.get(row.id, set())):
        key = alert_key(aoi_id, row.id, kind)
        detail = withdrawn_why if kind == "withdrawn" else None
        payload = _payload(aoi_id, row, kind, key, synthetic, detail, checked)
        out.append(AlertRow(key, aoi_id, row.id, kind, payload))
    return out


# A structure found now that covers this share of a lost one's outline took it in.
_COVERS = 0.5


def _outlines(rows: Sequence[StructureRow]) -> list[tuple[str, Any]]:
    return [(row.id, shapely.from_geojson(row.geometry)) for row in rows if row.geometry]


def _covering(old: StructureRow, outlines: Sequence[tuple[str, Any]]) -> str | None:
    """The id of the structure found now (`outlines`) that covers most of `old`'s outline, when
    it covers at least _COVERS of it (outlines in degrees: a share, so no projection needed)."""
    if old.geometry is None:
        return None
    outline = shapely.from_geojson(old.geometry)
    if outline.is_empty or outline.area <= 0:
        return None
    best, best_share = None, _COVERS
    for structure_id, shape in outlines:
        share = shapely.intersection(outline, shape).area / outline.area
        if share >= best_share:
            best, best_share = structure_id, share
    return best
