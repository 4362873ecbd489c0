"""Catalog search → a materialised, de-duplicated list of the scenes worth reading.

One responsibility: `search_scenes` decides which of the items a catalog returned (fetched by
`changedet.catalog.fetch.fetch_items`, parsed by `changedet.catalog.items.scene_from_item`) are
used, and records why every other one is left out. Items are filtered client-side too
(collection, dates, footprint ∩ AOI, cloud cover when the server cannot), checked for the assets
of the bands to read, reduced to one scene per acquisition, signed where the provider needs it,
and summarised in notes (harmonisation offsets and the rules that decided them, dates with
several scenes). Signed URLs' tokens are stripped (`hrefs.public_href`) from everything recorded
(skip reasons, notes, `SearchResult.source`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from shapely.geometry.base import BaseGeometry

from changedet.catalog.fetch import FoundItems, RawItem, fetch_items, href_signer
from changedet.catalog.items import (
    dedupe_scenes,
    footprint_disagreement,
    missing_footprint,
    offset_rule,
    scene_from_item,
)
from changedet.config import CatalogConfig
from changedet.errors import CatalogError, ConfigError, NoScenesError, UnsafeHrefError
from changedet.hrefs import href_name, install_log_redaction, public_href
from changedet.models import AOI, Progress, Scene, SearchResult, SkippedScene, no_progress

__all__ = ["search_scenes"]


def search_scenes(
    aoi: AOI,
    config: CatalogConfig,
    *,
    start: date,
    end: date,
    bands: Sequence[str],
    progress: Progress = no_progress,
    allow_empty: bool = False,
) -> SearchResult:
    """Find the scenes of `config.collection` over `aoi` between `start` and `end` (inclusive).

    `bands`: the bands to be read (canonical names); "scl" may be listed but is never required.
    Every page is materialised before returning. Items are filtered client-side too
    (collection, dates, footprint ∩ AOI, cloud cover when the server cannot), parsed into
    Scenes, checked for the assets of `bands` (SCL is optional: without it the reader falls back
    to "clear = valid data"), de-duplicated (a reprocessed datatake keeps the newest
    processing), and sorted by (datetime, id).
    Raises CatalogError (unreachable / malformed catalog), UnsafeHrefError (a remote catalog
    pointing at local files for every scene) and NoScenesError (nothing usable; with
    `allow_empty=True` an empty result is returned instead, e.g. for `changedet search`).
    """
    if end < start:
        raise ConfigError(f"search: end {end} is before start {start}; pass an end after the start")
    asset_keys, bands = _required_bands(config, bands)
    install_log_redaction()
    url = config.url.strip()
    source = public_href(url)
    progress("search", 0, 0)
    found = fetch_items(url, config, aoi, start=start, end=end, progress=progress)
    progress("search", len(found.items), len(found.items))  # a static catalog reports no pages
    sign = href_signer(config)

    sifted = _Sifted(config=config, asset_keys=asset_keys, bands=bands, window=(start, end))
    sifted.sift(found, aoi.geometry)
    sifted.count_cloud_removed(found.cloud_removed)
    sifted.count_unreadable(found.unreadable)
    notes = [*found.notes, *sifted.notes(api=found.api)]
    scenes, duplicates = dedupe_scenes(sifted.scenes)
    dropped = sorted([*sifted.dropped, *duplicates], key=lambda d: d.scene_id)
    scenes.sort(key=lambda s: (s.datetime, s.id))
    notes.extend(_summary_notes(scenes, sifted.rules))

    complete = not found.truncated and not found.unreadable
    if not scenes:
        _refuse_empty(sifted, found, source=source)
        if allow_empty:
            return SearchResult(
                (), tuple(dropped), source, tuple(notes), len(found.items), complete, found.stopped
            )
        raise _nothing_usable(
            dropped, source=source, aoi=aoi, window=(start, end), hint=sifted.provider_hint()
        )
    if sign is not None:  # only the scenes that will be read, only their assets
        scenes = [_signed(scene, sign) for scene in scenes]
    return SearchResult(
        scenes=tuple(scenes),
        dropped=tuple(dropped),
        source=source,
        notes=tuple(notes),
        items_seen=len(found.items),
        complete=complete,
        stopped=found.stopped,
    )


def _required_bands(
    config: CatalogConfig, bands: Sequence[str]
) -> tuple[Mapping[str, str], list[str]]:
    """The provider's asset keys and the bands every scene must have (ConfigError if unmapped)."""
    try:
        asset_keys = config.asset_keys[config.provider]
    except KeyError:
        known = ", ".join(sorted(config.asset_keys))
        raise ConfigError(
            f"catalog.provider '{config.provider}' has no [catalog.asset_keys] map; use one of: {known}"
        ) from None
    # SCL is never required (L1C has none: the reader falls back to "clear = valid data").
    required = [b for b in bands if b != "scl"]
    unknown = [b for b in required if b not in asset_keys]
    if unknown:
        raise ConfigError(
            f"bands {unknown} have no asset key for provider '{config.provider}'; "
            f"add them to [catalog.asset_keys.{config.provider}]"
        )
    return asset_keys, required


# --------------------------------------------------------------------------------------------
# client-side filters: static catalogs need them; for APIs they guard against servers that
# silently ignore a parameter


@dataclass
class _Sifted:
    """The items of one search sorted into scenes kept and scenes dropped, with the tallies the
    notes and the empty-result errors report."""

    config: CatalogConfig
    asset_keys: Mapping[str, str]
    bands: Sequence[str]
    window: tuple[date, date]
    scenes: list[Scene] = field(default_factory=list)
    dropped: list[SkippedScene] = field(default_factory=list)
    rules: dict[str, str] = field(default_factory=dict)  # scene id → harmonisation rule
    seen_ids: set[str] = field(default_factory=set)
    other_collections: Counter[str] = field(default_factory=Counter)
    repeated: int = 0
    outside: int = 0
    no_cloud_value: int = 0
    refused: int = 0
    # Scenes missing assets whose item has every asset another provider's keys name
    keyed_for: Counter[str] = field(default_factory=Counter)

    def sift(self, found: FoundItems, aoi_geom: BaseGeometry) -> None:
        for raw in found.items:
            scene = self._parse(raw, found)
            if scene is None:
                continue
            start, end = self.window
            if not start <= scene.date <= end or (
                scene.footprint is not None and not scene.footprint.intersects(aoi_geom)
            ):
                self.outside += 1
                continue
            if scene.cloud_cover is None:
                self.no_cloud_value += 1
            reason = self._unusable(scene, cloud_by_server=found.cloud_filtered_by_server)
            if reason is not None:
                self.dropped.append(SkippedScene(scene.id, reason))
                if reason.startswith("missing asset"):
                    self._tally_other_keys(raw.item)
                continue
            self.scenes.append(scene)
            self.rules[scene.id] = offset_rule(raw.item, self.asset_keys)
        self._drop_unmasked()

    def _drop_unmasked(self) -> None:
        """Where other scenes have an SCL asset, one without it is an item missing its cloud
        mask, not L1C: read as clear wherever it has data, its clouds would count as ground
        that changed. Dropped with why; a series with no SCL at all falls back to valid data."""
        if not any("scl" in s.assets for s in self.scenes):
            return
        unmasked = [s for s in self.scenes if "scl" not in s.assets]
        for scene in unmasked:
            self.dropped.append(
                SkippedScene(
                    scene.id,
                    "no SCL asset (cloud mask), though the other scenes have one: its clouds "
                    "would be taken for change",
                )
            )
            del self.rules[scene.id]
        self.scenes = [s for s in self.scenes if "scl" in s.assets]

    def _tally_other_keys(self, item: Mapping[str, Any]) -> None:
        assets = item.get("assets") or {}
        for provider, keys in self.config.asset_keys.items():
            if provider != self.config.provider and all(keys.get(b) in assets for b in self.bands):
                self.keyed_for[provider] += 1

    def provider_hint(self) -> str:
        """Advice when the items are another provider's: its asset keys are all there."""
        if not self.keyed_for:
            return ""
        provider, _ = self.keyed_for.most_common(1)[0]
        return (
            f"; the items' assets are keyed as provider '{provider}' keys them: set [catalog] "
            f'provider = "{provider}"'
        )

    def _parse(self, raw: RawItem, found: FoundItems) -> Scene | None:
        """The item as a Scene, or None (another collection, a repeat, or dropped with why)."""
        item = raw.item
        raw_id = item.get("id")
        # No id (or null: not "None"): no repeat of another, named by where it stands.
        item_id = raw_id if isinstance(raw_id, str) else ""
        coll = item.get("collection")
        if isinstance(coll, str) and coll != self.config.collection:
            self.other_collections[coll] += 1
            return None
        if item_id and item_id in self.seen_ids:
            self.repeated += 1
            return None
        if item_id:
            self.seen_ids.add(item_id)
        try:
            scene = scene_from_item(
                item,
                asset_keys=self.asset_keys,
                collection=self.config.collection,
                base_href=raw.base,
                remote=found.remote,
                local_roots=found.local_roots,
            )
        except UnsafeHrefError as exc:
            self.refused += 1
            self.dropped.append(SkippedScene(item_id or "?", str(exc)))
            return None
        except CatalogError as exc:  # a malformed item (no id, properties or datetime): said
            name = item_id or raw.where or href_name(raw.base)
            self.dropped.append(SkippedScene(name, str(exc), unreadable=True))
            return None
        if scene.footprint is None:  # its data's place unknown: the grid could not be cropped
            self.dropped.append(SkippedScene(item_id, missing_footprint(item)))
            return None
        disagreement = footprint_disagreement(item, scene)
        if disagreement is not None:
            self.dropped.append(SkippedScene(item_id, disagreement))
            return None
        return scene

    def count_cloud_removed(self, removed: Sequence[RawItem]) -> None:
        """The scenes the server's cloud filter left out, dropped with the same reason the
        client-side filter gives (each once; other collections are not ours)."""
        seen: set[str] = set()
        for raw in removed:
            item_id = raw.item.get("id")
            coll = raw.item.get("collection")
            if not isinstance(item_id, str) or not item_id or item_id in seen:
                continue
            if isinstance(coll, str) and coll != self.config.collection:
                continue
            seen.add(item_id)
            props = raw.item.get("properties")
            cloud = props.get("eo:cloud_cover") if isinstance(props, Mapping) else None
            number = float(cloud) if isinstance(cloud, int | float) else math.nan
            self.dropped.append(SkippedScene(item_id, self._cloud_reason(number, "server")))

    def count_unreadable(self, unreadable: Sequence[tuple[str, str]]) -> None:
        """Documents of a static catalog left out (one bad item file does not end the search):
        dropped under their file name, with why, as unreadable (the run warns of them)."""
        for href, why in unreadable:
            name = href_name(href)
            self.dropped.append(
                SkippedScene(name, f"catalog document skipped: {why}", unreadable=True)
            )

    def _cloud_reason(self, cloud: float, where: str) -> str:
        limit = self.config.max_cloud_cover
        return f"scene cloud cover {cloud:.1f}% > {limit:g}% (catalog.max_cloud_cover, {where})"

    def _unusable(self, scene: Scene, *, cloud_by_server: bool) -> str | None:
        """Why a scene inside the dates and AOI is not used (None: it is)."""
        limit = self.config.max_cloud_cover
        if scene.cloud_cover is not None and scene.cloud_cover > limit:
            return self._cloud_reason(
                scene.cloud_cover, "server" if cloud_by_server else "client-side"
            )
        missing = [b for b in self.bands if b not in scene.assets]
        if missing:
            keys = ", ".join(f"'{self.asset_keys[b]}'" for b in missing)
            return f"missing asset(s) for band(s) {', '.join(missing)} (keys {keys})"
        return None

    def notes(self, *, api: bool) -> list[str]:
        """What to say about the items: a static catalog (local or over http) is filtered
        here by design; an API that returned items outside the search is worth a note."""
        notes = []
        if self.repeated:
            notes.append(
                f"catalog returned {self.repeated} item(s) twice (paging overlap); kept one copy"
            )
        if self.outside and not api:
            notes.append(f"{self.outside} item(s) outside the dates or AOI were not selected")
        elif self.outside:
            notes.append(
                f"server returned {self.outside} item(s) outside the dates or AOI; dropped client-side"
            )
        if self.no_cloud_value:
            notes.append(
                f"{self.no_cloud_value} scene(s) have no eo:cloud_cover; kept (the AOI SCL probe decides)"
            )
        without_scl = sum(1 for s in self.scenes if "scl" not in s.assets)
        if without_scl:
            notes.append(
                f"{without_scl} scene(s) have no SCL asset: their clear mask falls back to valid data"
            )
        return notes


# --------------------------------------------------------------------------------------------
# what the scenes kept say, and what an empty result says


def _summary_notes(scenes: Sequence[Scene], rules: Mapping[str, str]) -> list[str]:
    """Dates mosaicked from several scenes; harmonisation offsets and the rules that set them."""
    notes = []
    by_date: dict[date, list[Scene]] = {}
    for scene in scenes:
        by_date.setdefault(scene.date, []).append(scene)
    multi = {d: ss for d, ss in by_date.items() if len(ss) > 1}
    if multi:
        sample = ", ".join(
            f"{d.isoformat()} ({'/'.join(s.tile or s.id for s in ss)})"
            for d, ss in list(multi.items())[:3]
        )
        notes.append(
            f"{len(multi)} date(s) have several scenes (tiles or orbits), mosaicked per date: {sample}"
            + (" ..." if len(multi) > 3 else "")
        )
    if scenes:
        used = Counter(rules[s.id] for s in scenes)
        offsets = Counter(
            round(next((a.offset for b, a in s.assets.items() if b != "scl"), 0.0), 6)
            for s in scenes
        )
        notes.append(
            "harmonisation offsets (reflectance): "
            + ", ".join(f"{off:+g} x{n}" for off, n in sorted(offsets.items()))
            + " by rule "
            + ", ".join(f"{rule} x{n}" for rule, n in sorted(used.items()))
        )
    return notes


def _refuse_empty(sifted: _Sifted, found: FoundItems, *, source: str) -> None:
    """An empty result that is an error even with `allow_empty`: refused hrefs, a static catalog
    holding no item at all, items of another collection only."""
    if sifted.refused and sifted.refused == len(sifted.seen_ids):
        raise UnsafeHrefError(
            f"catalog: {source} points every scene at non-http(s)/s3 locations; refused "
            "(a remote catalog may not make changedet read local files)"
            if found.remote
            else f"catalog: {source} points every scene outside its own folder; refused "
            "(list the folders its assets are in under [catalog] allowed_folders)"
        )
    if not found.api and not found.items:  # a run, a search and a monitor alike
        raise _no_items(found, source=source)
    if sifted.other_collections and not sifted.seen_ids:
        names = ", ".join(sorted(sifted.other_collections))
        raise NoScenesError(
            f"catalog {source} has no items of collection '{sifted.config.collection}' (found: {names}); "
            "pass one of those with --collection or set [catalog] collection"
        )


def _no_items(found: FoundItems, *, source: str) -> NoScenesError:
    """A static catalog with no item at all: its links are broken, not the AOI or the dates."""
    unread = found.unreadable
    why = f" ({len(unread)} document(s) in it could not be read: {unread[0][1]})" if unread else ""
    return NoScenesError(
        f"catalog {source} holds no STAC items{why}; point --catalog (a watch's catalog) at a "
        "catalog, collection or item collection whose links reach its items"
    )


def _nothing_usable(
    dropped: Sequence[SkippedScene],
    *,
    source: str,
    aoi: AOI,
    window: tuple[date, date],
    hint: str = "",
) -> NoScenesError:
    start, end = window
    if not dropped:
        return NoScenesError(
            f"no scene in {source} covers AOI '{aoi.id}' between {start} and {end}; "
            "check the AOI location, widen the dates or point --catalog elsewhere"
        )
    if all(d.unreadable for d in dropped):  # the catalog is broken, not the sky or the dates
        first = dropped[0]
        return NoScenesError(
            f"no usable scene in {source} for AOI '{aoi.id}': {len(dropped)} item(s) or "
            f"document(s) could not be used (first, {first.scene_id}: {first.reason}); fix the "
            "catalog or point --catalog at another"
        )
    reasons = Counter(d.reason.split(" (")[0].split(":")[0] for d in dropped)
    detail = "; ".join(f"{n} {r}" for r, n in reasons.most_common(3))
    return NoScenesError(
        f"no usable scene in {source} for AOI '{aoi.id}' between {start} and {end}"
        + f" ({len(dropped)} dropped: {detail})"
        + (hint or "; widen the dates, raise catalog.max_cloud_cover or check the collection")
    )


def _signed(scene: Scene, sign: Callable[[str], str]) -> Scene:
    assets = {band: replace(asset, href=sign(asset.href)) for band, asset in scene.assets.items()}
    return replace(scene, assets=assets)
