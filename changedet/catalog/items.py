"""What a STAC item means to changedet: a Scene, its harmonising offset, and which duplicate wins.

One responsibility: pure interpretation of item JSON (no I/O). `scene_from_item` maps the
provider's asset keys to canonical band names, checks every href (`hrefs.check_href`) and reads
tile, EPSG, processing baseline, cloud cover and footprint from the item's properties.
`harmonising_offset` decides `Asset.offset`, the additive offset in reflectance units, per item
from `earthsearch:boa_offset_applied`, the processing baseline and the `raster:bands` offset --
never from the acquisition date. `dedupe_scenes` keeps one scene per acquisition when a
datatake was reprocessed (newest baseline and processing win).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from changedet.aoi import near_longitude
from changedet.errors import CatalogError
from changedet.hrefs import check_href
from changedet.models import Asset, Scene, SkippedScene

__all__ = [
    "dedupe_scenes",
    "footprint_disagreement",
    "harmonising_offset",
    "missing_footprint",
    "offset_rule",
    "scene_from_item",
    "self_href",
]

BOA_OFFSET_DN = -1000.0  # BOA_ADD_OFFSET of processing baseline >= 04.00, in digital numbers


# --------------------------------------------------------------------------------------------
# item → Scene


_TILE_IN_ID = re.compile(r"_T?(\d{2}[C-X][A-Z]{2})_")
_BASELINE_IN_URI = re.compile(r"_N(\d{2})(\d{2})_")
_SEQUENCE_IN_ID = re.compile(r"_(\d+)_L[12][AC]$")


def _parse_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("z", "Z")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.11 accepts at most 6 fractional digits; some catalogs send 9.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _tile(props: Mapping[str, Any], item_id: str) -> str | None:
    code = props.get("grid:code")
    if isinstance(code, str) and code.upper().startswith("MGRS-"):
        return code[5:].upper()
    for key in ("s2:mgrs_tile", "mgrs:tile"):
        if isinstance(props.get(key), str) and props[key]:
            return str(props[key]).upper().lstrip("T")
    for prefix in ("mgrs", "sentinel"):
        zone = props.get(f"{prefix}:utm_zone")
        band = props.get(f"{prefix}:latitude_band")
        square = props.get(f"{prefix}:grid_square")
        if zone is not None and band and square:
            return f"{int(zone):02d}{band}{square}".upper()
    match = _TILE_IN_ID.search(item_id)
    return match.group(1) if match else None


def _baseline(props: Mapping[str, Any]) -> str | None:
    for key in ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version"):
        value = props.get(key)
        if isinstance(value, str | int | float) and str(value).strip():
            text = str(value).strip()
            if re.fullmatch(r"\d{1,2}\.\d{1,2}", text):
                major, minor = text.split(".")
                return f"{int(major):02d}.{int(minor):02d}"
    for key in ("s2:product_uri", "sentinel:product_id", "s2:granule_id"):
        value = props.get(key)
        if isinstance(value, str):
            match = _BASELINE_IN_URI.search(value)
            if match:
                return f"{match.group(1)}.{match.group(2)}"
    return None


def _baseline_tuple(baseline: str | None) -> tuple[int, int]:
    if not baseline:
        return (-1, -1)
    major, _, minor = baseline.partition(".")
    try:
        return (int(major), int(minor or 0))
    except ValueError:
        return (-1, -1)


def _epsg(props: Mapping[str, Any]) -> int | None:
    value = props.get("proj:epsg")
    if isinstance(value, int):
        return value
    code = props.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        try:
            return int(code.split(":", 1)[1])
        except ValueError:
            return None
    return None


def harmonising_offset(
    props: Mapping[str, Any], *, raster_offset: float | None, scale: float
) -> tuple[float, str]:
    """The additive reflectance offset of one band asset and the rule that decided it.

    Since processing baseline 04.00, L2A digital numbers carry BOA_ADD_OFFSET = -1000:
    reflectance = (DN - 1000) / 10000. The rule, in order:
    1. `earthsearch:boa_offset_applied` true: Element 84 already shifted the DNs back (its
       `raster:bands` offset of -0.1 is a template value; the flag is authoritative) → 0;
    2. a processing baseline below 04.00: those DNs never had the offset → 0 (Collection-1
       reprocessing carries a 05.xx baseline, so old dates of `sentinel-2-c1-l2a` get rule 3/4);
    3. a `raster:bands` offset: the provider's statement about its files → that value;
    4. a baseline of 04.00 or later without one (Planetary Computer) → -1000 DN x scale;
    5. nothing known → 0.
    Never keyed on the acquisition date.
    """
    if props.get("earthsearch:boa_offset_applied") is True:
        return 0.0, "boa_offset_applied"
    baseline = _baseline_tuple(_baseline(props))
    if baseline != (-1, -1) and baseline < (4, 0):
        return 0.0, "baseline<04.00"
    if raster_offset is not None:
        return float(raster_offset), "raster:bands"
    if baseline >= (4, 0):
        return BOA_OFFSET_DN * scale, "baseline>=04.00"
    return 0.0, "unknown"


def _raster_band(asset: Mapping[str, Any]) -> Mapping[str, Any]:
    bands = asset.get("raster:bands")
    if isinstance(bands, list) and bands and isinstance(bands[0], Mapping):
        return bands[0]
    return {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def _scale_offset(props: Mapping[str, Any], info: Mapping[str, Any]) -> tuple[float, float, str]:
    """(scale, additive offset, deciding rule) of one reflectance band from its `raster:bands`."""
    scale = _number(info.get("scale")) or 1e-4
    offset, rule = harmonising_offset(props, raster_offset=_number(info.get("offset")), scale=scale)
    return scale, offset, rule


def scene_from_item(
    item: Mapping[str, Any],
    *,
    asset_keys: Mapping[str, str],
    collection: str | None = None,
    base_href: str | None = None,
    remote: bool = True,
    local_roots: Sequence[str] | None = None,
) -> Scene:
    """Parse one STAC item (a dict) into a Scene with assets keyed by canonical band names.

    asset_keys: canonical band name → the provider's asset key (from config).
    base_href: where the item JSON came from, to resolve relative asset hrefs (defaults to
        the item's `self` link).
    remote: the item came from a remote catalog: only http(s)/s3 hrefs are accepted.
    local_roots: for a local catalog, the folders its local hrefs must stay inside.
    Raises CatalogError for an item that cannot be used at all (no id or datetime) and
    UnsafeHrefError for a refused href.
    """
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise CatalogError("catalog: an item has no id; the catalog is malformed")
    props = item.get("properties")
    if not isinstance(props, Mapping):
        raise CatalogError(f"catalog: item '{item_id}' has no properties; the catalog is malformed")
    when = _parse_datetime(props.get("datetime")) or _parse_datetime(props.get("start_datetime"))
    if when is None:
        raise CatalogError(f"catalog: item '{item_id}' has no valid datetime")
    base = base_href or self_href(item) or ""
    assets = _assets(item, props, asset_keys, base=base, remote=remote, roots=local_roots)
    cloud = _number(props.get("eo:cloud_cover"))
    platform = props.get("platform")
    updated = props.get("updated") or props.get("s2:generation_time") or props.get("created")
    return Scene(
        id=item_id,
        datetime=when,
        collection=str(item.get("collection") or collection or ""),
        tile=_tile(props, item_id),
        assets=assets,
        cloud_cover=cloud,
        platform=str(platform).lower() if isinstance(platform, str) else None,
        processing_baseline=_baseline(props),
        epsg=_epsg(props),
        footprint=_footprint(item.get("geometry")) or _assets_footprint(item, _epsg(props)),
        updated=str(updated) if updated else None,
        synthetic=props.get("changedet:synthetic") is True,
    )


def _assets(
    item: Mapping[str, Any],
    props: Mapping[str, Any],
    asset_keys: Mapping[str, str],
    *,
    base: str,
    remote: bool,
    roots: Sequence[str] | None,
) -> dict[str, Asset]:
    """The item's assets of the mapped bands, keyed by canonical band name, hrefs checked."""
    assets_json = item.get("assets") if isinstance(item.get("assets"), Mapping) else {}
    assert isinstance(assets_json, Mapping)
    assets: dict[str, Asset] = {}
    for band, key in asset_keys.items():
        raw = assets_json.get(key)
        if not isinstance(raw, Mapping) or not isinstance(raw.get("href"), str):
            continue
        href = check_href(raw["href"], base=base, remote=remote, local_roots=roots)
        info = _raster_band(raw)
        nodata = _number(info.get("nodata"))
        dtype = info.get("data_type")
        # What the item says the file holds, checked when it is opened (`read.cog`).
        stated = Asset(
            href=href,
            nodata=0 if nodata is None else nodata,
            data_type=dtype if isinstance(dtype, str) and dtype else None,
            epsg=_epsg(raw) or _epsg(props),  # an asset's own projection wins
        )
        if band == "scl":
            assets[band] = replace(stated, scale=1.0, offset=0.0)
            continue
        scale, offset, _rule = _scale_offset(props, info)
        assets[band] = replace(stated, scale=scale, offset=offset)
    return assets


def _footprint(geometry: Any) -> BaseGeometry | None:
    """The item's footprint, made valid; None when it has none or it cannot be read."""
    if not isinstance(geometry, Mapping):
        return None
    try:
        footprint = shape(geometry)
        return footprint if footprint.is_valid else shapely.make_valid(footprint)
    except (ValueError, TypeError, AttributeError, shapely.errors.ShapelyError):
        return None


def _assets_footprint(item: Mapping[str, Any], epsg: int | None) -> BaseGeometry | None:
    """Where an item without a usable geometry has data: its assets' extent (`proj:bbox`, or
    `proj:transform` + `proj:shape`) placed by `proj:epsg`; None when it gives no such extent.
    Without a footprint the grid could not be cropped to the data (`aoi.crop_to_footprints`)."""
    extent = _asset_extent(item)
    if extent is None or epsg is None:
        return None
    # A millimetre inside: through lon/lat and back its edges must not reach the next pixel.
    xmin, ymin, xmax, ymax = extent
    return _extent_lonlat((xmin + 1e-3, ymin + 1e-3, xmax - 1e-3, ymax - 1e-3), epsg)


def missing_footprint(item: Mapping[str, Any]) -> str:
    """Why an item got no footprint (neither its geometry nor its assets' projection gave one)."""
    geometry = item.get("geometry")
    what = "geometry null" if geometry is None else "geometry unreadable"
    return (
        f"no footprint ({what}) and no proj:bbox or proj:transform + proj:shape in proj:epsg "
        "to place its assets; skipped"
    )


# How far (degrees) a footprint may reach beyond the extent of its assets: providers simplify
# footprints; a wrong one (the whole world, another zone) is off by far more.
FOOTPRINT_SLACK_DEG = 0.05


def footprint_disagreement(item: Mapping[str, Any], scene: Scene) -> str | None:
    """Why the item's footprint or `proj:epsg` cannot be right for its assets (None: they agree,
    or the item lacks what the check needs). The assets' extent comes from their `proj:transform`
    and `proj:shape` in `proj:epsg`; the footprint must lie inside it. A wrong footprint would
    make the grid (cropped to footprints) far larger than the data; a wrong EPSG would place the
    data elsewhere."""
    if scene.footprint is None or scene.epsg is None:
        return None
    extent = _asset_extent(item)
    if extent is None:
        return None
    placed = _extent_lonlat(extent, scene.epsg)
    if placed is None:
        return f"proj:epsg {scene.epsg} cannot place its assets (extent {extent}); skipped"
    footprint = near_longitude(scene.footprint, placed.centroid.x)
    if placed.buffer(FOOTPRINT_SLACK_DEG).contains(footprint):
        return None
    fb = ", ".join(f"{v:.2f}" for v in scene.footprint.bounds)
    pb = ", ".join(f"{v:.2f}" for v in placed.bounds)
    return (
        f"footprint ({fb}) disagrees with its assets, placed at ({pb}) by proj:epsg "
        f"{scene.epsg}: the item's geometry or proj:epsg is wrong; skipped"
    )


def _asset_extent(item: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """(xmin, ymin, xmax, ymax) in the item's projection of the first asset with a `proj:bbox`
    or a north-up `proj:transform` and a `proj:shape`; else the item's own `proj:bbox`."""
    assets = item.get("assets")
    for asset in assets.values() if isinstance(assets, Mapping) else ():
        if not isinstance(asset, Mapping):
            continue
        bbox = _proj_bbox(asset)
        if bbox is not None:
            return bbox
        transform, shape = asset.get("proj:transform"), asset.get("proj:shape")
        if not (isinstance(transform, list) and len(transform) >= 6):
            continue
        if not (isinstance(shape, list) and len(shape) == 2):
            continue
        numbers = [_number(v) for v in (*transform[:6], *shape)]
        if any(v is None for v in numbers):
            continue
        a, b, c, d, e, f, rows, cols = (float(v or 0.0) for v in numbers)
        if b != 0 or d != 0 or a <= 0 or e >= 0 or rows <= 0 or cols <= 0:
            continue
        return (c, f + e * rows, c + a * cols, f)
    props = item.get("properties")
    return _proj_bbox(props) if isinstance(props, Mapping) else None


def _proj_bbox(doc: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """A document's 2D `proj:bbox` (xmin, ymin, xmax, ymax), or None when it has no sound one."""
    bbox = doc.get("proj:bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4):
        return None
    numbers = [n for v in bbox if (n := _number(v)) is not None]
    if len(numbers) != 4:
        return None
    xmin, ymin, xmax, ymax = numbers
    return (xmin, ymin, xmax, ymax) if xmin < xmax and ymin < ymax else None


def _extent_lonlat(extent: tuple[float, float, float, float], epsg: int) -> Any:
    """The extent's outline in lon/lat, longitudes unwrapped (continuous across ±180°), or
    None when the EPSG code cannot transform it."""
    import numpy as np
    from pyproj import Transformer
    from pyproj.exceptions import CRSError, ProjError
    from shapely.geometry import Polygon

    try:
        transformer = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    except (CRSError, ProjError):
        return None
    xmin, ymin, xmax, ymax = extent
    t = np.linspace(0.0, 1.0, 21)
    xs = np.concatenate([xmin + (xmax - xmin) * t, np.full(21, xmax),
                         xmax - (xmax - xmin) * t, np.full(21, xmin)])  # fmt: skip
    ys = np.concatenate([np.full(21, ymin), ymin + (ymax - ymin) * t,
                         np.full(21, ymax), ymax - (ymax - ymin) * t])  # fmt: skip
    lon, lat = transformer.transform(xs, ys)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        return None
    lon = np.degrees(np.unwrap(np.radians(lon)))
    outline = Polygon(zip(lon, lat, strict=True))
    return outline if outline.is_valid else shapely.make_valid(outline)


def self_href(doc: Mapping[str, Any]) -> str | None:
    """The href of a STAC document's `self` link, if it has one."""
    for link in doc.get("links") or ():
        if (
            isinstance(link, Mapping)
            and link.get("rel") == "self"
            and isinstance(link.get("href"), str)
        ):
            return str(link["href"])
    return None


def offset_rule(item: Mapping[str, Any], asset_keys: Mapping[str, str]) -> str:
    """Which harmonisation rule decided the offset of this item's reflectance bands."""
    props = item.get("properties") or {}
    assets = item.get("assets") or {}
    for band, key in asset_keys.items():
        raw = assets.get(key) if band != "scl" else None
        if isinstance(raw, Mapping):
            return _scale_offset(props, _raster_band(raw))[2]
    return "no reflectance asset"


# --------------------------------------------------------------------------------------------
# duplicates


def _dedupe_key(scene: Scene) -> tuple[str, str]:
    if scene.tile:
        return (scene.tile, scene.platform or "")
    stem = _SEQUENCE_IN_ID.sub("", scene.id)
    stem = re.sub(r"_\d{8}T\d{6}$", "", stem)  # Planetary Computer's trailing generation time
    return (f"id:{stem}", scene.platform or "")


def _preference(scene: Scene) -> tuple[Any, ...]:
    """Higher wins among duplicates: newer baseline, newer processing, higher sequence, id."""
    sequence = _SEQUENCE_IN_ID.search(scene.id)
    updated = _parse_datetime(scene.updated) if scene.updated else None
    return (
        _baseline_tuple(scene.processing_baseline),
        updated.timestamp() if updated else -1.0,
        int(sequence.group(1)) if sequence else -1,
        scene.id,
    )


def dedupe_scenes(scenes: list[Scene]) -> tuple[list[Scene], list[SkippedScene]]:
    """One scene per acquisition: same tile, platform and sensing time (within 90 s)."""
    groups: dict[tuple[str, str], list[Scene]] = {}
    for scene in scenes:
        groups.setdefault(_dedupe_key(scene), []).append(scene)
    kept: list[Scene] = []
    dropped: list[SkippedScene] = []
    for members in groups.values():
        members.sort(key=lambda s: (s.datetime, s.id))
        clusters: list[list[Scene]] = []
        for scene in members:
            if clusters and (scene.datetime - clusters[-1][0].datetime).total_seconds() <= 90:
                clusters[-1].append(scene)
            else:
                clusters.append([scene])
        for cluster in clusters:
            winner = max(cluster, key=_preference)
            kept.append(winner)
            for loser in cluster:
                if loser is winner:
                    continue
                why = []
                if _baseline_tuple(winner.processing_baseline) != _baseline_tuple(
                    loser.processing_baseline
                ):
                    why.append(
                        f"baseline {winner.processing_baseline} over {loser.processing_baseline}"
                    )
                else:
                    why.append("newer processing")
                dropped.append(
                    SkippedScene(
                        loser.id, f"duplicate of {winner.id} (same acquisition; kept {why[0]})"
                    )
                )
    return kept, dropped
