"""Which scenes a check works with (pure): the scenes stored from earlier runs plus what the
recent search found, a reprocessed scene in place of its older version, nothing after `now`.

Scenes are stored as JSON (`scene_record` / `scene_from_record`) so a run searches only the
recent past (from the last acquisition minus the lookback) and still knows every scene.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from shapely.geometry import mapping, shape

from changedet.catalog.items import dedupe_scenes
from changedet.models import Asset, Scene, SkippedScene
from changedet.monitor.state import SceneRow

__all__ = ["ScenePlan", "plan_scenes", "scene_from_record", "scene_record", "search_start"]


def scene_record(scene: Scene) -> dict[str, Any]:
    """A Scene as plain JSON data."""
    return {
        "id": scene.id,
        "datetime": scene.datetime.isoformat(),
        "collection": scene.collection,
        "tile": scene.tile,
        "assets": {
            key: {
                "href": a.href,
                "scale": a.scale,
                "offset": a.offset,
                "nodata": a.nodata,
                "data_type": a.data_type,
                "epsg": a.epsg,
            }
            for key, a in sorted(scene.assets.items())
        },
        "cloud_cover": scene.cloud_cover,
        "platform": scene.platform,
        "processing_baseline": scene.processing_baseline,
        "epsg": scene.epsg,
        "footprint": None if scene.footprint is None else mapping(scene.footprint),
        "updated": scene.updated,
        "synthetic": scene.synthetic,
    }


def scene_from_record(record: Mapping[str, Any]) -> Scene:
    return Scene(
        id=record["id"],
        datetime=datetime.fromisoformat(record["datetime"]),
        collection=record["collection"],
        tile=record["tile"],
        assets={key: Asset(**a) for key, a in record["assets"].items()},
        cloud_cover=record["cloud_cover"],
        platform=record["platform"],
        processing_baseline=record["processing_baseline"],
        epsg=record["epsg"],
        footprint=None if record["footprint"] is None else shape(record["footprint"]),
        updated=record["updated"],
        synthetic=record["synthetic"],
    )


def search_start(start: date, stored: Mapping[str, SceneRow], lookback_days: int) -> date:
    """The first day to search: the configured start on the first check, later the last
    acquisition seen minus the lookback (catalogs index late), never before the start."""
    acquired = [r.acquired for r in stored.values() if r.acquired and r.outcome != "dropped"]
    if not acquired:
        return start
    last = datetime.fromisoformat(max(acquired)).date()
    return max(start, last - timedelta(days=lookback_days))


def _changed(row: SceneRow | None, scene: Scene) -> bool:
    """True when `scene` is not stored as it is now (new, or reprocessed in place)."""
    return (
        row is None
        or row.record is None
        or row.outcome in ("replaced", "dropped")  # back (published again, or the dates moved)
        or (row.processing_baseline, row.updated) != (scene.processing_baseline, scene.updated)
    )


@dataclass(frozen=True)
class ScenePlan:
    """scenes: what the pipeline works with (stored and found, de-duplicated, sorted);
    new: ids of scenes not stored as they are now (a non-empty tuple means work to do);
    replaced: stored scenes a newer version of the same acquisition replaces, with why;
    dropped: what the search left out (cloud filter, missing assets...), new ids only;
    retried: stored scenes whose files could not be read last time, read again (work to do:
    a failed read, a network error or an expired link, may well succeed now);
    left: stored scenes the AOI's series no longer holds (work to do): withdrawn from the
    catalog (the search covered their day and did not return them), outside the watch's start
    and end (moved since), or rejected by its search now (an edited cloud limit)."""

    scenes: tuple[Scene, ...]
    new: tuple[str, ...]
    replaced: tuple[SkippedScene, ...]
    dropped: tuple[SkippedScene, ...]
    retried: tuple[str, ...] = ()
    left: tuple[SkippedScene, ...] = ()

    @property
    def work(self) -> bool:
        """Anything to compute: a new, replaced, retried or left scene."""
        return bool(self.new or self.replaced or self.retried or self.left)


WITHDRAWN = "withdrawn from the catalog"
OUTSIDE = "outside the watch's start and end"


def plan_scenes(
    stored: Mapping[str, SceneRow],
    found: Sequence[Scene],
    found_dropped: Sequence[SkippedScene],
    *,
    now: datetime,
    span: tuple[date, date] | None = None,
    searched: tuple[date, date] | None = None,
) -> ScenePlan:
    """Merge the stored scenes with what a search found; acquisitions after `now` are treated as
    not yet published. span: the watch's (start, end), which its scenes must lie in; searched:
    the days the search covered, where a stored scene it did not return was withdrawn."""
    known = {
        sid: scene_from_record(row.record)
        for sid, row in stored.items()
        if row.record is not None and row.outcome in ("used", "skipped", "unreadable")
    }
    fresh = [s for s in found if s.datetime <= now]
    for scene in fresh:
        known[scene.id] = scene  # a found scene is the catalog's current version
    candidates = [s for s in known.values() if s.datetime <= now]
    kept, duplicates = dedupe_scenes(candidates)
    seen = {s.id for s in found} | {d.scene_id for d in found_dropped}
    # What the search now leaves out (an edited cloud filter, say) leaves the series too.
    rejected = {d.scene_id: d.reason for d in found_dropped}
    left = tuple(
        SkippedScene(s.id, reason)
        for s in kept
        if s.id in stored and (reason := _left_because(s, seen, rejected, span, searched))
    )
    gone = {d.scene_id for d in left}
    kept = [s for s in kept if s.id not in gone]
    kept.sort(key=lambda s: (s.datetime, s.id))
    new = tuple(s.id for s in kept if _changed(stored.get(s.id), s))
    replaced = tuple(
        d for d in duplicates if d.scene_id in stored and stored[d.scene_id].outcome != "replaced"
    )
    new_dups = tuple(d for d in duplicates if d.scene_id not in stored)
    dropped = tuple(d for d in found_dropped if d.scene_id not in stored)
    retried = tuple(s.id for s in kept if s.id not in new and stored[s.id].outcome == "unreadable")
    return ScenePlan(tuple(kept), new, replaced, (*dropped, *new_dups), retried, left)


def _left_because(
    scene: Scene,
    seen: set[str],
    rejected: Mapping[str, str],
    span: tuple[date, date] | None,
    searched: tuple[date, date] | None,
) -> str | None:
    """Why a stored scene is no longer in the AOI's series (None: it is)."""
    day = scene.datetime.date()
    if span is not None and not span[0] <= day <= span[1]:
        return OUTSIDE
    if scene.id in rejected:
        return rejected[scene.id]
    if searched is not None and searched[0] <= day <= searched[1] and scene.id not in seen:
        return WITHDRAWN
    return None
