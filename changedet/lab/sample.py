"""Seeded SYNTHETIC Sentinel-2 L2A samples with ground truth: COGs + a static STAC catalog.

`write_sample` renders the scene model of `changedet.lab.scene` on a core window of an AOI's own
UTM grid (`changedet.aoi.grid_for`) and writes, into one folder:

- `catalog.json` → `sentinel-2-l2a/collection.json` → one item per acquisition (SELF_CONTAINED,
  relative hrefs), each with Earth Search v1 asset keys and COGs (B02/B03/B04/B08 10 m, B11/B12
  20 m uint16 DN, SCL 20 m uint8; nodata 0). DN = 10000·ρ + 1000 (baseline >= 04.00) with
  `earthsearch:boa_offset_applied: false`, except three dates written like Earth Search's
  harmonised files (DN = 10000·ρ, flag true, `raster:bands` offset still the -0.1 template);
- `items.json` + `collection.json`: the same items as one FeatureCollection (no links) and the
  collection without item links, for `rustac serve collection.json items.json`; asset hrefs are
  relative to the sample folder (make them absolute with `rebase_items`);
- `truth.geojson`: the new structures (and existing buildings, berm lines) in EPSG:4326;
- `scenario.json`: the hidden parameters (true shifts, cloud plans) for tests and benchmarks.

Output is bit-identical on rerun: seeded numpy, fixed COG options, no wall-clock times anywhere.
The data are synthetic and say so (`changedet:synthetic: true`); they claim nothing about the
real sites. Regenerate the committed sample with `changedet synth sample --all` (`regenerate_all`).
"""

from __future__ import annotations

import copy
import math
import posixpath
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import numpy as np
from pyproj import Transformer
from shapely.geometry import LineString, Polygon, box, mapping

from changedet.aoi import (
    grid_for,
    load_aois,
    lonlat_centroid,
    near_longitude,
    split_at_antimeridian,
)
from changedet.errors import AOIError, OutputError
from changedet.lab.scene import (
    BANDS_10M,
    BANDS_20M,
    PAD,
    AcquisitionPlan,
    Rendered,
    SynthBuilding,
    SynthScene,
    build_scene,
    first_clear_index,
    plan_acquisitions,
    render,
    to_dn,
)
from changedet.models import AOI, Grid, Progress, no_progress
from changedet.outputs.fsio import atomic_dir, write_cog, write_json

__all__ = [
    "PRESETS",
    "SCENARIO_VERSION",
    "SamplePreset",
    "SampleSummary",
    "mgrs_tile",
    "rebase_items",
    "regenerate_all",
    "sample_scene",
    "sample_window",
    "write_sample",
]

SCENARIO_VERSION = "1"  # bump when the scene model changes the committed bytes
COLLECTION_ID = "sentinel-2-l2a"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
SCL_INVALID = (0, 1, 3, 8, 9, 10, 11)
START, END = date(2023, 6, 1), date(2024, 6, 30)
BASELINE_0510_FROM = date(2023, 12, 13)  # ESA switched L2A processing to N05.10 then

# Earth Search v1 asset key → (file name, title, centre wavelength µm, FWHM µm, resolution m).
_BAND_INFO: dict[str, tuple[str, str, float, float, int]] = {
    "blue": ("B02", "Blue (band 2)", 0.49, 0.098, 10),
    "green": ("B03", "Green (band 3)", 0.56, 0.045, 10),
    "red": ("B04", "Red (band 4)", 0.665, 0.038, 10),
    "nir": ("B08", "NIR 1 (band 8)", 0.842, 0.145, 10),
    "swir16": ("B11", "SWIR 1 (band 11)", 1.61, 0.143, 20),
    "swir22": ("B12", "SWIR 2 (band 12)", 2.19, 0.242, 20),
}


@dataclass(frozen=True)
class SamplePreset:
    """Where the window sits and what the scenario holds for one site."""

    center_lon: float
    center_lat: float
    size: int  # window side in 10 m pixels (even)
    n_new: int
    n_existing: int
    n_compounds: int
    expansion: tuple[date, date]  # new structures appear on acquisitions inside this interval
    pond: bool = False
    new_misfire: bool = False
    relative_orbit: int = 20


PRESETS: dict[str, SamplePreset] = {
    # Khojir: expansion reported from August 2023 (Reuters, April 2024 imagery).
    "khojir": SamplePreset(
        51.67, 35.62, 256, 34, 14, 4, (date(2023, 8, 1), date(2024, 4, 30)), True, True
    ),
    # Modarres: expansion reported from October 2023 (Reuters, March 2024 imagery).
    "modarres": SamplePreset(
        50.875, 35.625, 176, 18, 8, 3, (date(2023, 10, 1), date(2024, 3, 31)), False, False
    ),
}


@dataclass(frozen=True)
class SampleSummary:
    """What `write_sample` wrote."""

    aoi_id: str
    n_items: int  # STAC items, including the reprocessed duplicate
    n_truth: int  # new structures in truth.geojson
    window: Grid  # the 10 m window of grid_for(aoi) the COGs cover
    bytes_written: int
    out_dir: Path


# ----------------------------------------------------------------------------- pure helpers


DEFAULT_UTC = (7, 5, 30)  # the bundled samples' acquisition time: ~10:30 solar time at 52° E


def overpass_utc(lon: float) -> tuple[int, int, int]:
    """UTC time of day of a Sentinel-2 overpass at `lon`: about 10:30 local solar time (the
    descending node). The bundled samples keep their 07:05:30, which is that time at their
    longitude; elsewhere the time follows the longitude, so the sun is up (near 180° 07:05 UTC
    is evening)."""
    solar = DEFAULT_UTC[0] + DEFAULT_UTC[1] / 60 + DEFAULT_UTC[2] / 3600 + lon / 15.0
    if abs((solar - 10.5 + 12.0) % 24.0 - 12.0) <= 1.5:
        return DEFAULT_UTC
    seconds = round(((10.5 - lon / 15.0) % 24.0) * 3600.0)
    return (seconds // 3600, seconds % 3600 // 60, seconds % 60)


def mgrs_tile(lon: float, lat: float) -> str:
    """The MGRS 100 km square (Sentinel-2 tile name, e.g. '39SWV') containing (lon, lat)."""
    if not -180.0 <= lon <= 180.0:
        lon = 180.0 - ((180.0 - lon) % 360.0)  # within (-180, 180]
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    bands = "CDEFGHJKLMNPQRSTUVWXX"
    band = bands[max(0, min(int((lat + 80.0) // 8.0), 20))]
    epsg = (32600 if lat >= 0 else 32700) + zone
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    col_sets = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")
    column = col_sets[zone % 3][int(x // 100_000) - 1]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    row = rows[(int(y // 100_000) + (0 if zone % 2 else 5)) % 20]
    return f"{zone:02d}{band}{column}{row}"


def _preset_for(aoi: AOI, grid: Grid) -> SamplePreset:
    if aoi.id in PRESETS:
        return PRESETS[aoi.id]
    lon, lat = lonlat_centroid(aoi.geometry)  # unwrapped: right across the antimeridian too
    size = max(32, min(192, grid.width, grid.height) // 6 * 6)
    scale = (size / 192.0) ** 2
    return SamplePreset(
        float(lon),
        float(lat),
        size,
        max(2, round(18 * scale)),
        max(1, round(8 * scale)),
        max(1, round(3 * scale)),
        (date(2023, 8, 1), date(2024, 4, 30)),
    )


def sample_window(
    aoi: AOI, size: int, center: tuple[float, float] | None = None
) -> tuple[int, int, Grid]:
    """(row_off, col_off, window) of a size×size window of `grid_for(aoi)` around `center`
    (lon, lat; default the AOI centroid), with its corner on the 60 m Sentinel-2 lattice so the
    10 m and 20 m pixels line up with the real tiles'."""
    grid = grid_for(aoi)
    step = max(1, round(60.0 / grid.res))
    room = min(grid.width, grid.height) - step  # leave room to slide onto the 60 m lattice
    size = min(size, (room if room >= 16 else min(grid.width, grid.height)) // 2 * 2)
    lon, lat = center or lonlat_centroid(aoi.geometry)
    x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(lon, lat)
    t = grid.transform
    res = grid.res
    col = round(((x - size * res / 2.0) - t.c) / res)
    row = round((t.f - (y + size * res / 2.0)) / res)

    def snap(off: int, origin: float, sign: int, limit: int) -> int:
        off = max(0, min(off, limit))
        for delta in sorted(range(-step, step + 1), key=abs):
            cand = off + delta
            edge = (origin + sign * cand * res) / 60.0
            if 0 <= cand <= limit and abs(edge - round(edge)) < 1e-9:
                return cand
        return off

    col = snap(col, t.c, 1, grid.width - size)
    row = snap(row, t.f, -1, grid.height - size)
    return row, col, grid.window(row, col, size, size)


def rebase_items(items: Mapping[str, Any], base: str) -> dict[str, Any]:
    """A copy of an `items.json` FeatureCollection with relative asset/link hrefs made absolute
    against `base` (a URL such as 'http://127.0.0.1:8000/' or a folder path)."""
    out = copy.deepcopy(dict(items))

    def fix(href: str) -> str:
        if "://" in href or href.startswith("/"):
            return href
        if "://" in base:
            return urljoin(base if base.endswith("/") else base + "/", href)
        return posixpath.normpath(posixpath.join(base, href))

    for feature in out.get("features", []):
        for asset in feature.get("assets", {}).values():
            asset["href"] = fix(asset["href"])
        for link in feature.get("links", []):
            link["href"] = fix(link["href"])
    return out


def _stable_seed(seed: int, aoi_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(aoi_id.encode())) % (2**63)


def sample_scene(aoi: AOI, *, seed: int = 0) -> tuple[SynthScene, Grid, int, int]:
    """The scene model for `aoi` (as written by `write_sample`), its window and offsets."""
    grid = grid_for(aoi)
    preset = _preset_for(aoi, grid)
    row_off, col_off, window = sample_window(
        aoi, preset.size, (preset.center_lon, preset.center_lat)
    )
    mixed = _stable_seed(seed, aoi.id)
    plans = plan_acquisitions(
        np.random.default_rng([mixed, 1]),
        start=START,
        end=END,
        utc_time=overpass_utc(preset.center_lon),
    )
    scene = build_scene(
        shape=window.shape,
        plans=plans,
        seed=mixed,
        lon=preset.center_lon,
        lat=preset.center_lat,
        n_new=preset.n_new,
        n_existing=preset.n_existing,
        n_compounds=preset.n_compounds,
        expansion=preset.expansion,
        pond=preset.pond,
        new_misfire=preset.new_misfire,
        id_prefix=aoi.id,
    )
    return scene, window, row_off, col_off


# ----------------------------------------------------------------------------- STAC metadata


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _compact(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%S")


def _absolute_orbit(platform: str, day: date) -> int:
    # Anchored on real items (S2A 2023-10-08 = 43324, S2B 2025-07-31 = 43879); 14.3 orbits a day.
    anchor = (date(2023, 10, 8), 43324) if platform == "sentinel-2a" else (date(2025, 7, 31), 43879)
    return anchor[1] + round((day - anchor[0]).days * 143 / 10)


def _earth_sun_factor(day: date) -> float:
    doy = day.timetuple().tm_yday
    return round(1.0 / (1.0 - 0.01673 * math.cos(math.radians(0.9856 * (doy - 4)))) ** 2, 12)


def _scl_percentages(scl: np.ndarray) -> dict[str, float]:
    total = scl.size
    valid = int((scl != 0).sum())

    def pct(*classes: int) -> float:
        if valid == 0:
            return 0.0
        return round(100.0 * float(np.isin(scl, classes).sum()) / valid, 6)

    return {
        "eo:cloud_cover": pct(8, 9, 10),
        "s2:degraded_msi_data_percentage": 0.0,
        "s2:nodata_pixel_percentage": round(100.0 * (total - valid) / total, 6),
        "s2:saturated_defective_pixel_percentage": pct(1),
        "s2:dark_features_percentage": pct(2),
        "s2:cloud_shadow_percentage": pct(3),
        "s2:vegetation_percentage": pct(4),
        "s2:not_vegetated_percentage": pct(5),
        "s2:water_percentage": pct(6),
        "s2:unclassified_percentage": pct(7),
        "s2:medium_proba_clouds_percentage": pct(8),
        "s2:high_proba_clouds_percentage": pct(9),
        "s2:thin_cirrus_percentage": pct(10),
        "s2:snow_ice_percentage": pct(11),
    }


def _round_coords(geom: Any, ndigits: int = 8) -> dict[str, Any]:
    def r(obj: Any) -> Any:
        if isinstance(obj, list | tuple):
            if obj and isinstance(obj[0], float | int):
                return [round(float(v), ndigits) for v in obj]
            return [r(o) for o in obj]
        return obj

    m = dict(mapping(geom))
    return {"type": m["type"], "coordinates": r(m["coordinates"])}


def _bbox(footprint: Any) -> list[float]:
    """RFC 7946 bbox of a lon/lat footprint: across the antimeridian its west edge is east of
    its east edge (§5.2)."""
    split = split_at_antimeridian(footprint)
    west, south, east, north = near_longitude(split, lonlat_centroid(split)[0]).bounds
    wrap = [v if -180.0 <= v <= 180.0 else 180.0 - ((180.0 - v) % 360.0) for v in (west, east)]
    return [round(v, 8) for v in (wrap[0], south, wrap[1], north)]


class _Geo:
    """Window pixel ↔ UTM ↔ EPSG:4326 for one window."""

    def __init__(self, window: Grid) -> None:
        self.window = window
        self.to_wgs84 = Transformer.from_crs(window.crs, "EPSG:4326", always_xy=True)

    def pixel_to_lonlat(self, row: float, col: float) -> tuple[float, float]:
        x, y = self.window.transform @ (col, row)
        lon, lat = self.to_wgs84.transform(x, y)
        return (float(lon), float(lat))

    def polygon(self, rowcols: list[tuple[float, float]]) -> Polygon:
        return Polygon([self.pixel_to_lonlat(r, c) for r, c in rowcols])

    def footprint(self, edge: bool) -> Polygon:
        """Data footprint in EPSG:4326 (the window, minus the swath-edge wedge on that date)."""
        H, W = self.window.shape
        area = box(0, 0, W, H)  # (col, row)
        if edge:
            # valid where col < 0.8 W + 0.21 (row - H/2), as in scene._valid_mask
            line = [(0.8 * W + 0.21 * (r - H / 2.0), r) for r in (-10.0 * H, 10.0 * H)]
            half = Polygon([(-10.0 * W, line[0][1]), line[0], line[1], (-10.0 * W, line[1][1])])
            area = area.intersection(half)
        ring = list(area.exterior.coords)[:-1]
        # Keep vertex order stable (shapely's intersection may start anywhere): counter-clockwise
        # on the map from the north-west corner.
        return self.polygon([(r, c) for c, r in ring]).normalize()


@dataclass(frozen=True)
class _Site:
    """One sample's scene and where it sits: what every file written for it needs."""

    aoi: AOI
    seed: int
    scene: SynthScene
    window: Grid
    row_off: int
    col_off: int
    tile: str
    relative_orbit: int
    geo: _Geo


def _site(aoi: AOI, seed: int) -> _Site:
    scene, window, row_off, col_off = sample_scene(aoi, seed=seed)
    preset = _preset_for(aoi, grid_for(aoi))
    tile = str(aoi.properties.get("s2_tile") or mgrs_tile(preset.center_lon, preset.center_lat))
    return _Site(
        aoi, seed, scene, window, row_off, col_off, tile, preset.relative_orbit, _Geo(window)
    )


def _timestamps(plan: AcquisitionPlan, sequence: int) -> tuple[datetime, datetime]:
    """(generated, created): processing times after sensing; a reprocessing comes a month later."""
    generated = (
        plan.when + timedelta(hours=2, minutes=13, seconds=24) + timedelta(days=31 * sequence)
    )
    return generated, generated + timedelta(hours=1, minutes=21, seconds=57)


def _product_ids(
    plan: AcquisitionPlan, tile: str, relative_orbit: int, generated: datetime
) -> dict[str, Any]:
    """The `s2:` product, datatake, datastrip and granule identifiers, as ESA names them."""
    when = plan.when
    baseline = "05.10" if plan.day >= BASELINE_0510_FROM else "05.09"
    nbase = "N" + baseline
    sat = "S2A" if plan.platform == "sentinel-2a" else "S2B"
    abs_orbit = _absolute_orbit(plan.platform, plan.day)
    return {
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": baseline,
        "s2:product_uri": (
            f"{sat}_MSIL2A_{_compact(when)}_{nbase}_R{relative_orbit:03d}_T{tile}_"
            f"{_compact(generated)}.SAFE"
        ),
        "s2:generation_time": _iso(generated).replace("Z", "000Z"),
        "s2:datatake_id": f"G{sat}_{_compact(when)}_{abs_orbit:06d}_N{baseline}",
        "s2:datatake_type": "INS-NOBS",
        "s2:datastrip_id": (
            f"{sat}_OPER_MSI_L2A_DS_{sat[1:]}PS_{_compact(generated)}_S{_compact(when)}_N{baseline}"
        ),
        "s2:granule_id": (
            f"{sat}_OPER_MSI_L2A_TL_{sat[1:]}PS_{_compact(generated)}_A{abs_orbit:06d}_T{tile}_N{baseline}"
        ),
    }


def _item_properties(
    site: _Site, plan: AcquisitionPlan, sequence: int, scl: np.ndarray, rendered: Rendered
) -> dict[str, Any]:
    """Earth Search v1-like item properties (key order as on Earth Search)."""
    tile = site.tile
    generated, created = _timestamps(plan, sequence)
    percentages = _scl_percentages(scl)
    return {
        "created": _iso(created),
        "platform": plan.platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": percentages["eo:cloud_cover"],
        "proj:epsg": site.window.epsg or 0,
        "mgrs:utm_zone": int(tile[:2]),
        "mgrs:latitude_band": tile[2],
        "mgrs:grid_square": tile[3:],
        "grid:code": f"MGRS-{tile}",
        "view:sun_azimuth": round(rendered.sun_azimuth, 6),
        "view:sun_elevation": round(rendered.sun_elevation, 6),
        **{k: v for k, v in percentages.items() if k != "eo:cloud_cover"},
        **_product_ids(plan, tile, site.relative_orbit, generated),
        "s2:reflectance_conversion_factor": _earth_sun_factor(plan.day),
        "datetime": _iso(plan.when),
        "s2:sequence": str(sequence),
        # As on Earth Search: true = DNs already shifted back (raster:bands keeps its -0.1 template
        # value anyway); false = DN = 10000·reflectance + 1000, use the raster:bands offset.
        "earthsearch:boa_offset_applied": plan.offset_applied,
        "processing:software": {"changedet.synth": SCENARIO_VERSION},
        "changedet:synthetic": True,
        "updated": _iso(created),
    }


def _reflectance_asset(key: str, window: Grid) -> dict[str, Any]:
    """The asset of reflectance band `key` (Earth Search v1 key), href relative to the item."""
    fname, title, wl, fwhm, res = _BAND_INFO[key]
    grid = window if res == 10 else window.scaled(2)
    tr = grid.transform
    return {
        "href": f"./{fname}.tif",
        "type": COG_TYPE,
        "title": f"{title} - {res}m",
        "eo:bands": [
            {
                "name": key,
                "common_name": key,
                "description": title,
                "center_wavelength": wl,
                "full_width_half_max": fwhm,
            }
        ],
        "gsd": res,
        "proj:shape": list(grid.shape),
        "proj:transform": [tr.a, tr.b, tr.c, tr.d, tr.e, tr.f],
        "raster:bands": [
            {
                "nodata": 0,
                "data_type": "uint16",
                "bits_per_sample": 15,
                "spatial_resolution": res,
                "scale": 0.0001,
                "offset": -0.1,
            }
        ],
        "roles": ["data", "reflectance"],
    }


def _scl_asset(window: Grid) -> dict[str, Any]:
    t20 = window.scaled(2).transform
    return {
        "href": "./SCL.tif",
        "type": COG_TYPE,
        "title": "Scene classification map (SCL)",
        "proj:shape": list(window.scaled(2).shape),
        "proj:transform": [t20.a, t20.b, t20.c, t20.d, t20.e, t20.f],
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
        "roles": ["data", "reflectance"],
    }


_ITEM_EXTENSIONS = (
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
)


def _item(
    site: _Site,
    plan: AcquisitionPlan,
    *,
    scene_id: str,
    sequence: int,
    scl: np.ndarray,
    rendered: Rendered,
) -> dict[str, Any]:
    """The STAC item of one delivery of one date, as stored in the static catalog."""
    footprint = site.geo.footprint(plan.nodata_edge)
    assets = {key: _reflectance_asset(key, site.window) for key in _BAND_INFO}
    assets["scl"] = _scl_asset(site.window)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": scene_id,
        "properties": _item_properties(site, plan, sequence, scl, rendered),
        "geometry": _round_coords(split_at_antimeridian(footprint)),
        "links": [
            {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
        ],
        "assets": assets,
        "bbox": _bbox(footprint),
        "stac_extensions": list(_ITEM_EXTENSIONS),
        "collection": COLLECTION_ID,
    }


def _structure_feature(
    b: SynthBuilding, geo: _Geo, days: list[str], first_clear: int | None
) -> dict[str, Any]:
    """truth.geojson feature of one building (new or existing)."""

    def day_or_none(i: int | None) -> str | None:
        return None if i is None else days[i]

    length_m, width_m = 20.0 * b.half[0], 20.0 * b.half[1]
    props: dict[str, Any] = {
        "id": b.id,
        "kind": b.kind,
        "appeared": day_or_none(b.appear_index),
        "cleared": day_or_none(b.clear_index),
        "first_clear": day_or_none(first_clear),
        "bermed": b.bermed,
        "area_m2": round(length_m * width_m, 1),
        "length_m": round(length_m, 2),
        "width_m": round(width_m, 2),
        "angle_deg": round(b.angle_deg, 2),
        "roof": b.roof,
        "height_m": b.height_m,
        "scl_misfire": b.scl_misfire,
        "berm_distance_m": round(10.0 * b.berm_distance_px, 2) if b.bermed else None,
        "berm_width_m": round(10.0 * b.berm_width_px, 2) if b.bermed else None,
    }
    ring = split_at_antimeridian(geo.polygon(_to_window(b.corners())))
    return {"type": "Feature", "id": b.id, "properties": props, "geometry": _round_coords(ring)}


def _berm_feature(b: SynthBuilding, geo: _Geo, days: list[str]) -> dict[str, Any]:
    """truth.geojson feature of a building's berm centre line, dated from the ground works."""
    line = _to_window(b.berm_centerline())
    coords = [list(geo.pixel_to_lonlat(r, c)) for r, c in [*line, line[0]]]
    works = b.clear_index if b.clear_index is not None else b.appear_index
    return {
        "type": "Feature",
        "id": f"{b.id}-berm",
        "properties": {
            "id": f"{b.id}-berm",
            "kind": "berm",
            "structure_id": b.id,
            "appeared": None if works is None else days[works],
            "distance_m": round(10.0 * b.berm_distance_px, 2),
            "width_m": round(10.0 * b.berm_width_px, 2),
        },
        "geometry": _round_coords(split_at_antimeridian(LineString(coords))),
    }


def _to_window(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Canvas (row, col) → window (row, col)."""
    return [(r - PAD, c - PAD) for r, c in points]


def _truth(
    scene: SynthScene, geo: _Geo, first_clear: dict[str, int | None], aoi: AOI
) -> dict[str, Any]:
    days = [p.day.isoformat() for p in scene.plans]
    ordered = sorted(scene.buildings, key=lambda b: (b.kind != "building", b.id))
    features = [_structure_feature(b, geo, days, first_clear.get(b.id)) for b in ordered]
    berms = [_berm_feature(b, geo, days) for b in ordered if b.bermed]
    return {
        "type": "FeatureCollection",
        "name": f"{aoi.id}-synthetic-truth",
        "changedet:synthetic": True,
        "description": (
            "SYNTHETIC ground truth for the synthetic sample (not the real site). kind=building: "
            "new structures, 'appeared' = first acquisition whose scene contains the roof; "
            "kind=existing: present from the first date; kind=berm: berm centre lines."
        ),
        "features": features + berms,
    }


# ----------------------------------------------------------------------------- writing


SAMPLE_FILES = frozenset(
    {"catalog.json", "collection.json", "items.json", "scenario.json", "truth.geojson"}
)


def is_previous(path: Path, files: Collection[str]) -> bool:
    """Whether `path` holds what an earlier synthetic sample or series wrote and nothing else:
    it may be replaced as a whole. A run's outputs or an analyst's notes written into it are
    not ours to delete."""
    return _ours(path) and all(p.name in files or p.name == COLLECTION_ID for p in path.iterdir())


def _ours(path: Path) -> bool:
    """A sample marks its catalog synthetic; a semi-real series leaves its series.json."""
    if (path / "series.json").is_file():
        return True
    try:
        text = (path / "catalog.json").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return '"changedet:synthetic": true' in text


def refuse_unless_previous(out_dir: Path, files: Collection[str], what: str) -> None:
    """Refuse to replace a folder that holds anything but an earlier synthetic `what`."""
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_previous(out_dir, files):
        raise OutputError(
            f"'{out_dir}' is not empty and holds more than an earlier synthetic {what} (its "
            "files would be deleted); pass a new or empty folder"
        )


def write_sample(
    aoi: AOI, out_dir: Path, *, seed: int = 0, progress: Progress = no_progress
) -> SampleSummary:
    """Render the synthetic sample for `aoi` into `out_dir` (replaced as a whole, atomically).

    Refuses to replace a non-empty folder that is not a previous synthetic sample."""
    out_dir = Path(out_dir)
    refuse_unless_previous(out_dir, SAMPLE_FILES, "sample")
    site = _site(aoi, seed)
    scene = site.scene
    n = len(scene.plans)
    stage = f"synth {aoi.id}"
    progress(stage, 0, n)
    items: list[dict[str, Any]] = []
    clear10: list[np.ndarray] = []
    dates_meta: list[dict[str, Any]] = []
    with atomic_dir(out_dir) as tmp:
        for t in range(n):
            date_items, clear, meta = _write_date(tmp / COLLECTION_ID, site, t)
            items.extend(date_items)
            clear10.append(clear)
            dates_meta.append(meta)
            progress(stage, t + 1, n)
        _write_catalogs(tmp, site, items)
        first_clear = {b.id: first_clear_index(scene, b, clear10) for b in scene.new_buildings}
        write_json(tmp / "truth.geojson", _truth(scene, site.geo, first_clear, aoi))
        write_json(tmp / "scenario.json", _scenario(site, dates_meta))
    return SampleSummary(
        aoi_id=aoi.id,
        n_items=len(items),
        n_truth=len(scene.new_buildings),
        window=site.window,
        bytes_written=_make_shareable(out_dir),
        out_dir=out_dir,
    )


def _write_date(
    coll_dir: Path, site: _Site, t: int
) -> tuple[list[dict[str, Any]], np.ndarray, dict[str, Any]]:
    """Render date `t` and write its item(s): (items, 10 m clear mask by SCL, scenario entry).

    A duplicate datatake is written twice: a first delivery that lost a block of lines (DN 0)
    and the reprocessing that fixed it."""
    plan = site.scene.plans[t]
    rendered = render(site.scene, t)
    add = not plan.offset_applied
    dn10 = to_dn(rendered.refl10, rendered.valid10, add_offset=add)
    dn20 = to_dn(rendered.refl20, rendered.valid20, add_offset=add)
    scl = rendered.scl
    H, W = site.window.shape
    clear20 = ~np.isin(scl, SCL_INVALID)
    clear10 = np.repeat(np.repeat(clear20, 2, axis=0), 2, axis=1)[:H, :W]
    items = []
    for seq in [0, 1] if plan.duplicate else [0]:
        b10, b20, s20 = dn10, dn20, scl
        if plan.duplicate and seq == 0:
            r0 = _stripe_row(site.scene, H)
            b10, b20, s20 = dn10.copy(), dn20.copy(), scl.copy()
            b10[:, r0 : r0 + 12] = 0
            b20[:, r0 // 2 : r0 // 2 + 6] = 0
            s20[r0 // 2 : r0 // 2 + 6] = 0
        sat = "S2A" if plan.platform == "sentinel-2a" else "S2B"
        scene_id = f"{sat}_{site.tile}_{plan.day:%Y%m%d}_{seq}_L2A"
        _write_cogs(coll_dir / scene_id, site.window, b10, b20, s20)
        item = _item(site, plan, scene_id=scene_id, sequence=seq, scl=s20, rendered=rendered)
        write_json(coll_dir / scene_id / f"{scene_id}.json", item)
        items.append(item)
    meta = _date_meta(t, plan, [it["id"] for it in items], scl, rendered)
    return items, clear10, meta


def _write_cogs(
    item_dir: Path, window: Grid, dn10: np.ndarray, dn20: np.ndarray, scl: np.ndarray
) -> None:
    for i, band in enumerate(BANDS_10M):
        write_cog(item_dir / f"{_BAND_INFO[band][0]}.tif", dn10[i], window, nodata=0)
    for i, band in enumerate(BANDS_20M):
        write_cog(item_dir / f"{_BAND_INFO[band][0]}.tif", dn20[i], window.scaled(2), nodata=0)
    write_cog(item_dir / "SCL.tif", scl, window.scaled(2), nodata=0)


def _date_meta(
    t: int, plan: AcquisitionPlan, ids: list[str], scl: np.ndarray, rendered: Rendered
) -> dict[str, Any]:
    """scenario.json's entry for date `t`: the hidden truth of its plan."""
    return {
        "index": t,
        "datetime": _iso(plan.when),
        "item_ids": ids,
        "platform": plan.platform,
        "shift_px": list(plan.shift_px),
        "cloud_cover_target": round(plan.cloud_cover, 4),
        "scl_cloud_percent": _scl_percentages(scl)["eo:cloud_cover"],
        "cloud_height_m": round(plan.cloud_height_m, 1),
        "cirrus": plan.cirrus,
        "nodata_edge": plan.nodata_edge,
        "duplicate": plan.duplicate,
        "boa_offset_applied": plan.offset_applied,
        "gain": list(plan.gain),
        "offset": list(plan.offset),
        "wetness": round(plan.wetness, 4),
        "sun_azimuth": round(rendered.sun_azimuth, 4),
        "sun_elevation": round(rendered.sun_elevation, 4),
    }


def _description(aoi: AOI) -> str:
    # "changedet.synth" names the `changedet synth` command; kept so the sample stays bit-identical.
    return (
        f"SYNTHETIC Sentinel-2 L2A-like sample for AOI '{aoi.id}', generated by changedet.synth "
        "(seeded scene model: terrain, compounds, new structures with berms, clouds, "
        "misregistration). Not real imagery; it claims nothing about the real site."
    )


def _collection(site: _Site, items: list[dict[str, Any]]) -> dict[str, Any]:
    plans = site.scene.plans
    full = site.geo.footprint(False)
    extent = {
        "spatial": {"bbox": [_bbox(full)]},
        "temporal": {"interval": [[_iso(plans[0].when), _iso(plans[-1].when)]]},
    }
    item_links = [
        {"rel": "item", "href": f"./{it['id']}/{it['id']}.json", "type": "application/json"}
        for it in items
    ]
    return {
        "type": "Collection",
        "id": COLLECTION_ID,
        "stac_version": "1.0.0",
        "title": "Sentinel-2 Level-2A (SYNTHETIC)",
        "description": _description(site.aoi),
        "links": [
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../catalog.json", "type": "application/json"},
            *item_links,
        ],
        "stac_extensions": [],
        "extent": extent,
        "license": "MIT",
        "keywords": ["sentinel", "synthetic", "changedet"],
        "changedet:synthetic": True,
    }


def _write_catalogs(tmp: Path, site: _Site, items: list[dict[str, Any]]) -> None:
    """The static catalog (catalog.json → collection → items), and the same items flat in
    items.json beside a link-free collection.json, for `rustac serve collection.json items.json`."""
    collection = _collection(site, items)
    write_json(tmp / COLLECTION_ID / "collection.json", collection)
    write_json(
        tmp / "catalog.json",
        {
            "type": "Catalog",
            "id": f"changedet-synthetic-{site.aoi.id}",
            "stac_version": "1.0.0",
            "description": _description(site.aoi),
            "changedet:synthetic": True,
            "links": [
                {"rel": "root", "href": "./catalog.json", "type": "application/json"},
                {
                    "rel": "child",
                    "href": f"./{COLLECTION_ID}/collection.json",
                    "type": "application/json",
                },
            ],
        },
    )
    served = []
    for it in items:
        flat = copy.deepcopy(it)
        prefix = f"./{COLLECTION_ID}/{it['id']}/"
        for asset in flat["assets"].values():
            asset["href"] = prefix + asset["href"][2:]
        flat["links"] = []  # a STAC API server adds its own self/root/collection links
        served.append(flat)
    write_json(tmp / "items.json", {"type": "FeatureCollection", "features": served})
    # Without item links: rustac would otherwise try to load them too.
    root_link = {"rel": "root", "href": "./catalog.json", "type": "application/json"}
    write_json(tmp / "collection.json", {**collection, "links": [root_link]})


def _scenario(site: _Site, dates_meta: list[dict[str, Any]]) -> dict[str, Any]:
    """scenario.json: the hidden parameters (window, true shifts, cloud plans) for tests."""
    scene, window = site.scene, site.window
    H, W = window.shape
    wt = window.transform
    return {
        "changedet:synthetic": True,
        "scenario_version": SCENARIO_VERSION,
        "aoi_id": site.aoi.id,
        "seed": site.seed,
        "tile": site.tile,
        "crs": window.crs,
        "window": {
            "row_off": site.row_off,
            "col_off": site.col_off,
            "height": H,
            "width": W,
            "transform": [wt.a, wt.b, wt.c, wt.d, wt.e, wt.f],
        },
        "n_new": len(scene.new_buildings),
        "n_existing": len(scene.buildings) - len(scene.new_buildings),
        "dates": dates_meta,
    }


def _make_shareable(out_dir: Path) -> int:
    """Open up the permissions of a finished sample; returns the bytes written."""
    written = 0
    for path in sorted(out_dir.rglob("*")):
        # Temporary files and folders are private (0600/0700); a sample is meant to be shared.
        path.chmod(0o755 if path.is_dir() else 0o644)
        written += path.stat().st_size if path.is_file() else 0
    out_dir.chmod(0o755)
    return written


def _stripe_row(scene: SynthScene, height: int) -> int:
    """An even row for the lost-lines stripe that misses every SCL-misfire roof."""
    busy: set[int] = set()
    for b in scene.buildings:
        if b.scl_misfire:
            rows = [r - PAD for r, _ in b.corners()]
            busy.update(range(int(min(rows)) - 14, int(max(rows)) + 2))
    for r0 in range(int(height * 0.55) // 2 * 2, height - 12, 2):
        if not busy & set(range(r0, r0 + 12)):
            return r0
    return int(height * 0.3) // 2 * 2


def regenerate_all(
    aoi_dir: Path, out_root: Path, *, seed: int = 0, progress: Progress = no_progress
) -> list[SampleSummary]:
    """Write `<out_root>/<aoi_id>/` for every AOI of every `*.geojson` in `aoi_dir` (sorted by
    file name). Each AOI's scene is seeded from `seed` and its id, so adding an AOI file does
    not change the others' samples."""
    files = sorted(Path(aoi_dir).glob("*.geojson"))
    if not files:
        raise AOIError(f"no *.geojson AOI file in '{aoi_dir}'; pass the folder holding the AOIs")
    out = []
    for path in files:
        for aoi in load_aois(path):
            out.append(write_sample(aoi, Path(out_root) / aoi.id, seed=seed, progress=progress))
    return out
