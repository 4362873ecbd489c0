"""Catalog search → a materialised, de-duplicated list of the scenes worth reading.

One responsibility: `search_scenes` decides which of the items a catalog returned (fetched by
`catalog.fetch_items`, parsed by `stac_items.scene_from_item`) are used, and records why every
other one is left out. Items are filtered client-side too (collection, dates, footprint ∩ AOI,
cloud cover when the server cannot), checked for the assets of the bands to read, reduced to
one scene per acquisition, signed where the provider needs it, and summarised in notes
(harmonisation offsets and the rules that decided them, dates with several scenes). Signed
URLs' tokens are stripped (`hrefs.public_href`) from everything recorded (skip reasons, notes,
`SearchResult.source`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import date

from changedet.catalog.fetch import fetch_items, href_signer
from changedet.catalog.items import dedupe_scenes, offset_rule, scene_from_item
from changedet.config import CatalogConfig
from changedet.errors import CatalogError, ConfigError, NoScenesError, UnsafeHrefError
from changedet.hrefs import install_log_redaction, public_href
from changedet.models import AOI, Progress, Scene, SearchResult, SkippedScene, no_progress

__all__ = ["search_scenes"]


def _signed(scene: Scene, sign: Callable[[str], str]) -> Scene:
    assets = {band: replace(asset, href=sign(asset.href)) for band, asset in scene.assets.items()}
    return replace(scene, assets=assets)


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
    try:
        asset_keys = config.asset_keys[config.provider]
    except KeyError:
        known = ", ".join(sorted(config.asset_keys))
        raise ConfigError(
            f"catalog.provider '{config.provider}' has no [catalog.asset_keys] map; use one of: {known}"
        ) from None
    # SCL is never required (L1C has none: the reader falls back to "clear = valid data").
    bands = [b for b in bands if b != "scl"]
    unknown = [b for b in bands if b not in asset_keys]
    if unknown:
        raise ConfigError(
            f"bands {unknown} have no asset key for provider '{config.provider}'; "
            f"add them to [catalog.asset_keys.{config.provider}]"
        )
    install_log_redaction()
    url = config.url.strip()
    source = public_href(url)
    progress("search", 0, 0)
    found = fetch_items(url, config, aoi, start=start, end=end, progress=progress)
    notes = list(found.notes)
    sign = href_signer(config)

    # Client-side filters: static catalogs need them; for APIs they guard against servers that
    # silently ignore a parameter.
    aoi_geom = aoi.geometry
    dropped: list[SkippedScene] = []
    scenes: list[Scene] = []
    seen_ids: set[str] = set()
    repeated = 0
    outside = 0
    other_collections: Counter[str] = Counter()
    no_cloud_value = 0
    refused = 0
    rules: dict[str, str] = {}
    for raw in found.items:
        item = raw.item
        item_id = str(item.get("id", ""))
        coll = item.get("collection")
        if isinstance(coll, str) and coll != config.collection:
            other_collections[coll] += 1
            continue
        if item_id in seen_ids:
            repeated += 1
            continue
        seen_ids.add(item_id)
        try:
            scene = scene_from_item(
                item,
                asset_keys=asset_keys,
                collection=config.collection,
                base_href=raw.base,
                remote=found.remote,
            )
        except UnsafeHrefError as exc:
            refused += 1
            dropped.append(SkippedScene(item_id or "?", str(exc)))
            continue
        except CatalogError as exc:
            dropped.append(SkippedScene(item_id or "?", str(exc)))
            continue
        if not start <= scene.date <= end:
            outside += 1
            continue
        if scene.footprint is not None and not scene.footprint.intersects(aoi_geom):
            outside += 1
            continue
        if scene.cloud_cover is None:
            no_cloud_value += 1
        elif scene.cloud_cover > config.max_cloud_cover:
            where = "server" if found.cloud_filtered_by_server else "client-side"
            dropped.append(
                SkippedScene(
                    scene.id,
                    f"scene cloud cover {scene.cloud_cover:.1f}% > {config.max_cloud_cover:g}% "
                    f"(catalog.max_cloud_cover, {where})",
                )
            )
            continue
        missing = [b for b in bands if b not in scene.assets]
        if missing:
            keys = ", ".join(f"'{asset_keys[b]}'" for b in missing)
            dropped.append(
                SkippedScene(
                    scene.id, f"missing asset(s) for band(s) {', '.join(missing)} (keys {keys})"
                )
            )
            continue
        scenes.append(scene)
        rules[scene.id] = offset_rule(item, asset_keys)

    items_seen = len(found.items)
    if repeated:
        notes.append(f"catalog returned {repeated} item(s) twice (paging overlap); kept one copy")
    if outside and not found.remote:
        notes.append(f"{outside} item(s) outside the dates or AOI were not selected")
    elif outside:
        notes.append(
            f"server returned {outside} item(s) outside the dates or AOI; dropped client-side"
        )
    if no_cloud_value:
        notes.append(
            f"{no_cloud_value} scene(s) have no eo:cloud_cover; kept (the AOI SCL probe decides)"
        )
    without_scl = sum(1 for s in scenes if "scl" not in s.assets)
    if without_scl:
        notes.append(
            f"{without_scl} scene(s) have no SCL asset: their clear mask falls back to valid data"
        )

    scenes, duplicates = dedupe_scenes(scenes)
    dropped.extend(duplicates)
    scenes.sort(key=lambda s: (s.datetime, s.id))
    dropped.sort(key=lambda d: d.scene_id)

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

    if not scenes:
        if refused and refused == len(seen_ids):
            raise UnsafeHrefError(
                f"catalog: {source} points every scene at non-http(s)/s3 locations; refused "
                "(a remote catalog may not make changedet read local files)"
            )
        if other_collections and not seen_ids:
            names = ", ".join(sorted(other_collections))
            raise NoScenesError(
                f"catalog {source} has no items of collection '{config.collection}' (found: {names}); "
                "set [catalog] collection"
            )
        reasons = Counter(d.reason.split(" (")[0].split(":")[0] for d in dropped)
        detail = "; ".join(f"{n} {r}" for r, n in reasons.most_common(3))
        if allow_empty:
            return SearchResult((), tuple(dropped), source, tuple(notes), items_seen)
        if not dropped:
            raise NoScenesError(
                f"no scene in {source} covers AOI '{aoi.id}' between {start} and {end}; "
                "check the AOI location, widen the dates or point --catalog elsewhere"
            )
        raise NoScenesError(
            f"no usable scene in {source} for AOI '{aoi.id}' between {start} and {end}"
            + f" ({len(dropped)} dropped: {detail})"
            + "; widen the dates, raise catalog.max_cloud_cover or check the collection"
        )
    if sign is not None:  # only the scenes that will be read, only their assets
        scenes = [_signed(scene, sign) for scene in scenes]
    return SearchResult(
        scenes=tuple(scenes),
        dropped=tuple(dropped),
        source=source,
        notes=tuple(notes),
        items_seen=items_seen,
    )
