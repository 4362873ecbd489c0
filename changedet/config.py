"""TOML config → frozen, typed dataclasses.

Unknown keys are rejected with a "did you mean"; values are type-checked; every run records a
fingerprint of the effective config. Defaults here match `configs/default.toml`.
A config file may `extends = "other.toml"` (relative to itself) and override only what differs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from changedet.errors import ConfigError

__all__ = [
    "CATALOG_DOCUMENTS",
    "EARTH_SEARCH_ASSETS",
    "PLANETARY_COMPUTER_ASSETS",
    "SENTINEL2_BAND_IDS",
    "AOIConfig",
    "BermConfig",
    "CatalogConfig",
    "ChangeConfig",
    "ComputeConfig",
    "Config",
    "KindConfig",
    "MaskConfig",
    "OutputConfig",
    "ReadConfig",
    "TimeConfig",
    "TrackConfig",
    "load_config",
    "local_catalog_problem",
    "parse_date",
    "scheduler_address_problem",
    "to_dict",
    "validate",
]

# What a local catalog folder is read from, first present wins.
CATALOG_DOCUMENTS = ("catalog.json", "collection.json", "items.json")

EARTH_SEARCH_ASSETS: dict[str, str] = {
    "coastal": "coastal",
    "blue": "blue",
    "green": "green",
    "red": "red",
    "rededge1": "rededge1",
    "rededge2": "rededge2",
    "rededge3": "rededge3",
    "nir": "nir",
    "nir08": "nir08",
    "nir09": "nir09",
    "swir16": "swir16",
    "swir22": "swir22",
    "scl": "scl",
}
# Canonical band name -> Sentinel-2 band id (file names, Planetary Computer asset keys).
SENTINEL2_BAND_IDS: dict[str, str] = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "nir09": "B09",
    "cirrus": "B10",  # L1C only
    "swir16": "B11",
    "swir22": "B12",
}
PLANETARY_COMPUTER_ASSETS: dict[str, str] = {
    **{name: band for name, band in SENTINEL2_BAND_IDS.items() if name != "cirrus"},
    "scl": "SCL",
}


@dataclass(frozen=True)
class CatalogConfig:
    url: str = (
        "https://earth-search.aws.element84.com/v1"  # STAC API URL, or a static catalog path/URL
    )
    collection: str = "sentinel-2-l2a"
    provider: str = "earth-search"  # key into `asset_keys`; "planetary-computer" also signs hrefs
    max_cloud_cover: float = (
        80.0  # scene-level eo:cloud_cover % upper bound (AOI-level test is separate)
    )
    page_size: int = 100
    max_items: int = 5000
    retries: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 30.0
    # Local static catalogs may point only at files under their own folder, and these folders.
    allowed_folders: tuple[str, ...] = ()
    asset_keys: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: {
            "earth-search": EARTH_SEARCH_ASSETS,
            "planetary-computer": PLANETARY_COMPUTER_ASSETS,
        }
    )


@dataclass(frozen=True)
class TimeConfig:
    start: date = date(2023, 6, 1)
    end: date = date(2024, 6, 30)  # inclusive
    period: str = "month"  # composite period length for time-series mode: "month" | "quarter"
    baseline_periods: int = 2  # the first N periods form the "before" baseline
    baseline_min_clear: float = (
        0.5  # a period joins the baseline when this share of the AOI is clear
    )


@dataclass(frozen=True)
class ReadConfig:
    bands: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")
    cache_dir: str = "~/.cache/changedet"  # "" disables the pixel cache
    cache_max_gb: float = 20.0  # past it, the least recently used cache entries are removed
    max_workers: int = 4  # concurrent asset reads
    retries: int = 3
    # Scenes clearer than this over the window read around the AOI (`context_m`) are used.
    min_aoi_clear_fraction: float = 0.2
    probe_scl: bool = True  # read the cheap 20 m SCL window first to drop cloudy scenes
    min_aoi_coverage: float = (
        0.01  # a scene with data on less than this share of the AOI is "outside AOI"
    )
    resampling: str = "bilinear"  # 20 m (and reprojected) reflectance bands onto the 10 m grid; SCL is always nearest
    timeout_s: float = 30.0  # per HTTP request of an asset read
    backoff_s: float = 0.5  # first retry delay of an asset read; doubles per retry
    # Statistics (classes, normalisation, thresholds) come from the AOI grown by this much and
    # snapped to 1 km blocks, so they do not depend on how tightly the AOI is drawn.
    context_m: float = 2000.0


@dataclass(frozen=True)
class MaskConfig:
    scl_invalid: tuple[int, ...] = (
        0,
        1,
        3,
        8,
        9,
        10,
        11,
    )  # nodata, defective, shadow, clouds, cirrus, snow
    # A pixel SCL calls cloud on at least this fraction of dates is a bright roof, not a cloud: keep it.
    persistent_cloud_fraction: float = 0.6
    dilate_px: int = 1  # grow cloud and shadow masks by this many 10 m pixels
    cloud_classes: tuple[int, ...] = (8, 9, 10)  # SCL classes the bright-roof rule looks at
    persistent_min_dates: int = 5  # observations a pixel needs before the bright-roof rule applies
    # A clear observation brighter in blue than both the previous and the next clear observation
    # of that pixel by more than this (reflectance) is a cloud edge, thin cloud or haze SCL missed:
    # clouds move, new roofs stay. 0 turns the screen off.
    spike_tolerance: float = 0.02
    # A clear observation darker in SWIR (1.6 um) than both the previous and the next clear one by
    # more than this is a cloud shadow SCL missed: shadows move, new dark roofs stay. 0 = off.
    dip_tolerance: float = 0.02
    # ...plus this share of the darker of the two: a cloud shadow's soft edge darkens bright sand
    # by about a tenth (semi-real abudhabi), which 0.1 let through.
    dip_relative: float = 0.05


@dataclass(frozen=True)
class ChangeConfig:
    coregister: bool = True
    coreg_threshold_px: float = 0.25  # between two composites or two dates: correct above this (px)
    # Between the dates of a series, each lined up with the baseline's median before compositing:
    # both sides of every comparison are then medians of resampled dates, so a smaller shift is
    # worth its resampling; phase correlation also reads a bilinearly resampled shift short (about
    # three quarters of it), so 0.25 px left most 0.2-0.5 px misregistration in place. With a
    # one-date baseline `coreg_threshold_px` applies (`core.timeseries.date_shift_threshold`).
    date_coreg_threshold_px: float = 0.1
    # When > 0, each date of a series is levelled to the baseline composite before compositing:
    # its difference from it, as block medians on this many pixels, is subtracted (haze, thin
    # veils and illumination vary over kilometres, construction over tens of metres;
    # `core.level`). On the semi-real series 32 px lifts hazy cities (aguasclaras 0.53 -> 0.61)
    # at some precision elsewhere; 0 turns it off (README: "Levelling hazy dates").
    level_block_px: int = 32
    z_threshold: float = 10.0  # robust z of the change score that seeds a change region
    z_low: float = 3.0  # hysteresis: seeded regions grow through pixels with robust z >= this
    # Shifts above this are not corrected: Sentinel-2 misregistration stays near a pixel, a larger
    # measured "shift" is new construction pulling the phase correlation.
    max_shift_px: float = 3.0
    # Structures are cut from change the neighbourhood cannot explain: an "after" value inside the
    # range of its neighbours within this many pixels "before" is misregistration, resampling or a
    # longer shadow, not construction (0 turns it off).
    tolerance_px: int = 1
    # Opt-in, off by default (README: Faint small changes): a neighbour explains only this share
    # of the way from the pixel's own value before towards its own (a residual misalignment of a
    # fraction of a pixel blends in that share of a neighbour; 1: the whole way, band by band).
    # Below 1 it finds more faint small changes, and more false ones.
    tolerance_fraction: float = 1.0
    # With tolerance_fraction below 1: a pixel is explained too where its "after" spectrum is, in
    # every band at once, the "before" spectrum of one neighbour (a shadow edge moved by a pixel,
    # a whole-pixel shift). At 1 the band-by-band range already explains that.
    tolerance_match: bool = False
    # Structures seed at this robust z of that tolerant score (the pixel change map at z_threshold):
    # the tolerant score is damped where the neighbourhood explains change, so its seed sits lower.
    structure_z_threshold: float = 8.0
    # ...and grow through pixels with that score's robust z >= this. Lower than z_low: a seed the
    # neighbourhood cannot explain vouches for a fainter rim, so a faint change's outline covers
    # more of it (semi-real aguasclaras 0.58 -> 0.63 at seed 2; README: Accuracy).
    structure_z_low: float = 2.0
    # ...and a structure's footprint is where that unexplained change reaches this many noise units
    # (smoothing lends evidence to a rim of unchanged pixels; this takes it back).
    min_excess: float = 1.0
    # ...and a strong object's footprint leaves out its blur rim: the outer pixels whose unexplained
    # change is under this share of the object's peak (README: Accuracy; 0 turns it off).
    rim_share: float = 0.15
    min_area_m2: float = 400.0  # minimum mapping unit (4 pixels at 10 m)
    min_clear_obs: int = 1  # per period and pixel
    split_objects: bool = False  # watershed-split blobs holding several separate seed cores
    smooth_sigma_px: float = 1.0  # Gaussian smoothing of the change evidence (spatial context)
    n_classes: int = 8  # k-means land-cover classes for the class-conditional change
    fill_holes: bool = True  # fill holes enclosed by a change region
    vegetation_gate: bool = True  # damp change that ends in vegetation (not a new structure)
    water_gate: bool = True  # damp change on pixels that are water on both dates (turbidity, tides)
    # No structure is seeded where every 10 m band darkened by one common factor: a shadow
    # lengthening with the season or a dimmer date (a seeded one may still grow through it; the
    # pixel map keeps it all).
    shadow_gate: bool = True


@dataclass(frozen=True)
class KindConfig:
    """What a structure is (`core.kinds`): thresholds on its spectral flattening and shape."""

    roof_flattening: float = 0.15  # blue->SWIR16 slope drop at and above which a change is a roof
    soil_flattening: float = 0.05  # |drop| below which a brighter, barer change stayed soil-like
    line_width_px: float = 1.8  # a shape this thin (area / skeleton length) ...
    line_min_length_px: int = 6  # ... and at least this long is a line: berm, cut, track


@dataclass(frozen=True)
class TrackConfig:
    min_persistence: int = 2  # confirmed when present in >= N later clear periods (incl. first)
    match_iou: float = 0.1
    match_overlap: float = 0.5  # ...or when the overlap covers this share of the smaller of the two
    min_presence_fraction: float = 0.5  # present in >= this share of observed periods since first
    # ...and stays confirmed while its confidence (mean object confidence x share) reaches
    # this: transients are not structures.
    min_confidence: float = 0.35
    min_observed_fraction: float = 0.5  # a structure is observed when this share of it is clear
    # A known structure with no object in a period is still present when the median change score
    # of its pixels reaches this (temporal hysteresis: a seed must reach change.z_threshold once).
    continue_z: float = 4.0
    # ...or, for a candidate, where its pixels keep this share of the change it was first seen
    # with: the median of their per-band change projected on that change vector (and 3 noise
    # units of such a median). A month resting on one noisy date lowers every robust z, a faint
    # new roof's among them, but not its reflectance change; noise does not repeat its vector.
    # Only where the baseline rests on 3 or more dates at the pixel: a baseline's own noise
    # repeats in every later period. 0 turns it off (README: Accuracy).
    same_change: float = 0.7
    # A clear period is evidence that nothing stands at a structure's place only where most of its
    # pixels score below this (0: the period's median pixel, unchanged ground scores about -2):
    # weak change there (a roof before its shadow lengthened, a site before it was graded) opens
    # the first-seen interval earlier rather than dating the structure late, and a confirmed
    # structure faded by a wet winter or a low sun is faint, not vanished.
    absent_below_z: float = 0.0
    drop_after_absent: int = (
        2  # an unconfirmed candidate absent this many clear periods in a row is dropped
    )
    vanish_after_absent: int = (
        3  # a confirmed structure absent this many clear periods in a row vanished
    )
    new_part_fraction: float = (
        0.5  # new pixels beside a known structure form a new one above this share
    )
    # Pixels this close to a known structure grow it rather than start a new one: a 20 m rim, the
    # width of a partly seen hall at 10 m.
    growth_rim_px: int = 2
    # Ground pieces (not roof-like) first seen in one period this close to each other are one
    # site seen in pieces (a compound graded at once), not several structures: 20 m.
    site_gap_px: int = 2


@dataclass(frozen=True)
class BermConfig:
    enabled: bool = True
    ring_inner_m: float = 10.0
    ring_outer_m: float = 40.0
    ring_threshold: float = 0.6  # share of angular sectors around a structure with berm pixels
    evidence_threshold: float = 1.0  # ridge response (z units) that marks a berm pixel
    min_pixels: int = 4  # berm-mask components smaller than this are specks
    min_length_m: float = 50.0  # shortest berm line reported in berms.geojson
    max_width_px: float = 3.0  # lines wider than this on average are blobs (buildings, plots)
    sectors: int = 16  # angular sectors of the ring test


@dataclass(frozen=True)
class OutputConfig:
    geopackage: bool = True
    cogs: bool = True
    report: bool = True
    chips: bool = True
    max_chips: int = (
        200  # evidence chips: confirmed structures first, then candidates (keeps report.html small)
    )
    imagery: bool = True  # true-colour COGs of the baseline, the latest and every period
    # Warn (CLI, report, run.json) when less than this share of the AOI could be analysed.
    coverage_warning: float = 0.9


@dataclass(frozen=True)
class ComputeConfig:
    """Where AOIs run (`changedet.compute`); never changes a result, so not in the fingerprint."""

    cluster: str = ""  # "" = this machine; else a Dask scheduler, e.g. "tcp://10.0.0.5:8786"
    workers: int = 0  # AOIs at once in a local process pool; 0 or 1 = one at a time, in-process


@dataclass(frozen=True)
class AOIConfig:
    max_area_km2: float = 2500.0  # size guard: bigger AOIs are almost always a mistake
    id_property: str = "id"  # feature property used as AOI id (falls back to name, then index)


@dataclass(frozen=True)
class Config:
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    time: TimeConfig = field(default_factory=TimeConfig)
    read: ReadConfig = field(default_factory=ReadConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    change: ChangeConfig = field(default_factory=ChangeConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    kinds: KindConfig = field(default_factory=KindConfig)
    berms: BermConfig = field(default_factory=BermConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    aoi: AOIConfig = field(default_factory=AOIConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def fingerprint(self) -> str:
        """Short stable hash of the effective config, recorded with every output (where the
        work ran is left out: it never changes a result)."""
        settings = to_dict(self)
        settings.pop("compute", None)
        blob = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def asset_keys(self) -> Mapping[str, str]:
        """Canonical band name → the provider's asset key."""
        return self.catalog.asset_keys[self.catalog.provider]


def to_dict(obj: Any) -> Any:
    """Dataclass tree → plain JSON-able values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, date):
        return obj.isoformat()
    return obj


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return (
        f" (did you mean '{close[0]}'?)"
        if close
        else f" (known keys: {', '.join(sorted(options))})"
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one TOML value to the annotated type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config: [{where}] must be a table, got {value!r}")
        return _build(tp, value, where)
    if origin in (types.UnionType, typing.Union):
        return _coerce_union(value, typing.get_args(tp), where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config: {where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config: {where} must be a table, got {value!r}")
        args = typing.get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    return _coerce_scalar(value, tp, where)


def _coerce_union(value: Any, members: tuple[Any, ...], where: str) -> Any:
    """The value as the first member type that accepts it (None for an optional None)."""
    errors = []
    for arg in members:
        if arg is type(None) and value is None:
            return None
        try:
            return _coerce(value, arg, where)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if errors else f"config: {where} has an invalid value {value!r}")


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    """bool, float (ints accepted), int, str and date (a TOML date or YYYY-MM-DD text)."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config: {where} must be true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config: {where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config: {where} must be a whole number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config: {where} must be a string, got {value!r}")
        return value
    if tp is date:
        if isinstance(value, date) and not isinstance(value, datetime):  # a TOML date, not a time
            return value
        if isinstance(value, str):
            return parse_date(value, where)
        raise ConfigError(f"config: {where} must be a date YYYY-MM-DD, got {value!r}")
    return value  # Any, or a type the config does not use


def parse_date(text: str, where: str = "date") -> date:
    """Parse YYYY-MM-DD with a clear error (an impossible date such as 2023-02-30 is refused)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{where}: '{text}' is not a valid date; use YYYY-MM-DD (e.g. 2023-06-01)"
        ) from None


# Keys that once existed, and what replaced them: a config written for an older version gets told.
_REMOVED = {
    "change.structures": "every structure now has a kind (building, ground works, other) and all "
    "are tracked; delete the line",
    "change.roof_z_threshold": "structures are seeded at change.z_threshold like all change; "
    "delete the line",
}


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        removed = _REMOVED.get(f"{where}.{key}")
        if removed:
            raise ConfigError(f"config: [{where}] {key} was removed: {removed}")
        if key not in names:
            if not where and key in ("watch", "state"):
                raise ConfigError(
                    f"config: '{key}' belongs to a watch-list, not a run config; run it with "
                    "`changedet monitor run --config FILE`"
                )
            place = f"[{where}]" if where else "top level"
            known = names if where else [*names, "extends"]  # taken before the sections
            raise ConfigError(f"config: unknown key '{key}' in {place}{_suggest(key, known)}")
        sub = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(value, hints[key], sub)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config: [{where}] {exc}") from None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    """Local paths in a config file are relative to that file, not to the working directory."""
    catalog = data.get("catalog")
    if isinstance(catalog, dict) and isinstance(catalog.get("url"), str):
        url = catalog["url"]
        if "://" not in url and not Path(url).expanduser().is_absolute():
            catalog["url"] = str((base / url).resolve())
    if isinstance(catalog, dict) and isinstance(catalog.get("allowed_folders"), list):
        catalog["allowed_folders"] = [
            str((base / f).resolve())
            if isinstance(f, str) and not Path(f).expanduser().is_absolute()
            else f
            for f in catalog["allowed_folders"]
        ]
    read = data.get("read")
    if isinstance(read, dict) and isinstance(read.get("cache_dir"), str):
        cache = read["cache_dir"]
        if cache and not cache.startswith("~") and not Path(cache).is_absolute():
            read["cache_dir"] = str((base / cache).resolve())


def _read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config: '{path}' extends itself in a loop; fix the 'extends' chain")
    if not path.is_file():
        raise ConfigError(
            f"config: file '{path}' not found; pass an existing TOML file to --config"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: '{path}' is not valid TOML ({exc}); fix the syntax") from None
    _resolve_relative_paths(data, path.parent)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"config: 'extends' in '{path}' must be a file path string")
    target = (path.parent / parent).resolve()
    if not target.is_file():
        what = "is a folder, not a config file" if target.is_dir() else "does not exist"
        raise ConfigError(
            f"config: '{path}' says extends = \"{parent}\", which resolves to '{target}' and "
            f"{what}; the path is relative to {path.parent}: fix or remove that line"
        )
    base = _read_toml(target, (*seen, path))
    return _merge(base, data)


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Load a config file (or the built-in defaults) and apply dotted-key overrides such as
    {"time.start": "2023-06-01"} (used for CLI flags)."""
    data: dict[str, Any] = _read_toml(Path(path)) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"config: [{section}] must be a table")
        data[section][key] = value
    config: Config = _build(Config, data, "")
    validate(config)
    return config


# Numeric ranges: (lowest, highest) allowed; `None` = unbounded; a low bound in `_ABOVE` is
# exclusive (the value must be above it). Every float must also be finite (NaN and inf are refused).
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "catalog.max_cloud_cover": (0.0, 100.0),
    "catalog.page_size": (1, 10_000),  # STAC APIs cap `limit` at 10000
    "catalog.max_items": (1, None),
    "catalog.retries": (0, 100),
    "catalog.backoff_s": (0.0, 600.0),
    "catalog.timeout_s": (0.0, 3600.0),
    "time.baseline_periods": (1, None),
    "time.baseline_min_clear": (0.0, 1.0),
    "read.cache_max_gb": (0.0, 1e6),  # a petabyte: more is a typo, and overflows a byte count
    "read.max_workers": (1, 256),
    "read.retries": (0, 100),
    "read.min_aoi_clear_fraction": (0.0, 1.0),
    "read.min_aoi_coverage": (0.0, 1.0),
    "read.timeout_s": (0.0, 3600.0),
    "read.backoff_s": (0.0, 600.0),
    "read.context_m": (0.0, 50000.0),
    "mask.persistent_cloud_fraction": (0.0, 1.0),
    "mask.dilate_px": (0, 100),
    "mask.persistent_min_dates": (1, None),
    "mask.spike_tolerance": (0.0, 1.0),
    "mask.dip_tolerance": (0.0, 1.0),
    "mask.dip_relative": (0.0, 1.0),
    "change.coreg_threshold_px": (0.0, None),
    "change.date_coreg_threshold_px": (0.0, None),
    "change.level_block_px": (0, 1024),
    "change.z_threshold": (0.0, None),
    "change.z_low": (0.0, None),
    "change.max_shift_px": (0.0, 100.0),
    "change.tolerance_px": (0, 5),
    "change.tolerance_fraction": (0.0, 1.0),
    "change.structure_z_threshold": (0.0, None),
    "change.structure_z_low": (0.0, None),
    "change.min_excess": (0.0, None),
    "change.rim_share": (0.0, 0.99),
    "change.min_area_m2": (0.0, None),
    "change.min_clear_obs": (1, None),
    "change.smooth_sigma_px": (0.0, 100.0),
    "change.n_classes": (1, 64),
    "kinds.roof_flattening": (0.0, 1.0),
    "kinds.soil_flattening": (0.0, 1.0),
    "kinds.line_width_px": (0.0, 100.0),
    "kinds.line_min_length_px": (1, None),
    "track.min_persistence": (1, None),
    "track.match_iou": (0.0, 1.0),
    "track.match_overlap": (0.0, 1.0),
    "track.min_presence_fraction": (0.0, 1.0),
    "track.min_observed_fraction": (0.0, 1.0),
    "track.min_confidence": (0.0, 1.0),
    "track.continue_z": (0.0, None),
    "track.same_change": (0.0, 1.0),
    "track.drop_after_absent": (1, None),
    "track.vanish_after_absent": (1, None),
    "track.new_part_fraction": (0.0, 1.0),
    "track.growth_rim_px": (0, 10),  # 100 m; its search grows with the square of it
    "track.site_gap_px": (0, 100),
    "berms.ring_inner_m": (0.0, None),
    "berms.ring_outer_m": (0.0, None),
    "berms.ring_threshold": (0.0, 1.0),
    "berms.evidence_threshold": (0.0, None),
    "berms.min_pixels": (1, None),
    "berms.min_length_m": (0.0, None),
    "berms.max_width_px": (0.0, None),
    "berms.sectors": (1, 360),
    "output.max_chips": (0, None),
    "compute.workers": (0, 1024),
    "output.coverage_warning": (0.0, 1.0),
    "aoi.max_area_km2": (0.0, None),
}
_ABOVE = frozenset(
    {
        "catalog.timeout_s",
        "read.timeout_s",
        "mask.persistent_cloud_fraction",
        "read.cache_max_gb",
        "change.z_threshold",
        "change.z_low",
        "change.structure_z_threshold",
        "change.structure_z_low",
        "track.match_iou",
        "track.match_overlap",
        "berms.ring_outer_m",
        "berms.evidence_threshold",
        "berms.max_width_px",
        "aoi.max_area_km2",
    }
)
_SCL_CLASSES = range(0, 12)  # Sentinel-2 scene classification values 0..11
RESAMPLING = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average")
# Bands detection can use: the atmospheric ones (coastal aerosol, water vapour, cirrus) alone cannot.
# What every run needs: true colour for the pictures, and blue, red, nir and swir16 for
# detection, a structure's kind (the blue→SWIR slope) and the berm test. Without swir16 every
# structure was "other" and the headline said "0 new buildings".
_NEEDED_BANDS = ("blue", "green", "red", "nir", "swir16")


def validate(config: Config) -> None:
    """Every value checked at load time, before any network or pixel work: types (done while
    building), finiteness, ranges, choices, bands, and the checks that span several keys.
    Raises ConfigError with one line naming the key, the value and what is allowed."""
    _check_numbers(config)
    _check_choices(config)
    _check_bands(config)
    _check_catalog_location(config.catalog)
    _check_cross_field(config)
    problem = scheduler_address_problem(config.compute.cluster)
    if problem:
        raise ConfigError(f"config: compute.cluster {problem}")


# A Dask scheduler: protocol://host:port (an IPv6 host in brackets).
_SCHEDULER = re.compile(r"(tcp|tls|ucx|ws|wss)://(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+):(\d{1,5})")


def scheduler_address_problem(address: str) -> str | None:
    """Why `address` is not a Dask scheduler address ("" is: it means this machine), worded to
    follow the option's name; None when it is one."""
    match = _SCHEDULER.fullmatch(address)
    if not address or (match and 1 <= int(match.group(3)) <= 65535):
        return None
    return (
        f"'{address}' is not a Dask scheduler address; write it as tcp://HOST:PORT "
        "(e.g. tcp://10.0.0.5:8786), or leave it out to run on this machine"
    )


def _values(obj: Any, where: str = "") -> list[tuple[str, Any]]:
    """(dotted name, value) of every leaf of the config tree except the asset-key maps."""
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        name = f"{where}.{f.name}" if where else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(_values(value, name))
        elif not isinstance(value, Mapping):
            out.append((name, value))
    return out


def _check_numbers(config: Config) -> None:
    for name, value in _values(config):
        numbers = value if isinstance(value, tuple) else (value,)
        for number in numbers:
            if isinstance(number, float) and not math.isfinite(number):
                raise ConfigError(f"config: {name} = {number} is not a finite number; set a number")
        bounds = _RANGES.get(name)
        if bounds is None:
            continue
        low, high = bounds
        above = name in _ABOVE
        if (low is not None and (value <= low if above else value < low)) or (
            high is not None and value > high
        ):
            raise ConfigError(f"config: {name} = {value!r} is out of range; {_allowed(name)}")


def _allowed(name: str) -> str:
    """'use a value between 0 and 1' and the like, for the error message."""
    low, high = _RANGES[name]
    lowest = f"above {low:g}" if name in _ABOVE else f"at least {low:g}"
    if high is None:
        return f"use a value {lowest}"
    if name in _ABOVE:
        return f"use a value above {low:g} and at most {high:g}"
    return f"use a value between {low:g} and {high:g}"


def _check_choices(config: Config) -> None:
    t = config.time
    if t.period not in ("month", "quarter"):
        raise ConfigError(f"config: time.period must be 'month' or 'quarter', got '{t.period}'")
    if config.read.resampling not in RESAMPLING:
        raise ConfigError(
            f"config: read.resampling '{config.read.resampling}' is unknown; use one of: "
            + ", ".join(RESAMPLING)
        )
    for name in ("scl_invalid", "cloud_classes"):
        bad = [c for c in getattr(config.mask, name) if c not in _SCL_CLASSES]
        if bad:
            raise ConfigError(
                f"config: mask.{name} holds {bad}, not Sentinel-2 SCL classes; use values 0 to 11"
            )
    for name in ("catalog.url", "catalog.collection", "aoi.id_property"):
        section, key = name.split(".")
        if not str(getattr(getattr(config, section), key)).strip():
            raise ConfigError(f"config: {name} is empty; set it (see configs/default.toml)")


def _check_bands(config: Config) -> None:
    """Bands to read: a non-empty list of known, distinct Sentinel-2 band names, each with an
    asset key for the provider, holding the bands every run needs; the provider must be known."""
    cat = config.catalog
    if cat.provider not in cat.asset_keys:
        known = ", ".join(sorted(cat.asset_keys))
        raise ConfigError(
            f"catalog.provider '{cat.provider}' has no [catalog.asset_keys] map; use one of: {known}"
        )
    bands = config.read.bands
    if not bands:
        raise ConfigError(
            "config: read.bands is empty; list the bands to read, e.g. ['red', 'nir']"
        )
    if "scl" in bands:
        raise ConfigError(
            "config: read.bands must not list 'scl'; SCL is read for masking on its own"
        )
    unknown = [b for b in bands if b not in SENTINEL2_BAND_IDS]
    if unknown:
        raise ConfigError(
            f"config: read.bands holds unknown band(s) {unknown}; use names from: "
            + ", ".join(SENTINEL2_BAND_IDS)
        )
    repeated = sorted({b for b in bands if bands.count(b) > 1})
    if repeated:
        raise ConfigError(
            f"config: read.bands lists {repeated} more than once; list each band once"
        )
    missing = [b for b in _NEEDED_BANDS if b not in bands]
    if missing:
        raise ConfigError(
            f"config: read.bands {list(bands)} lacks {missing}: true colour, detection, kinds "
            f"and berms need {list(_NEEDED_BANDS)}; add them"
        )
    keys = cat.asset_keys[cat.provider]
    unmapped = [b for b in bands if not str(keys.get(b, "")).strip()]
    if unmapped:
        raise ConfigError(
            f"config: read.bands {unmapped} have no asset key for provider '{cat.provider}'; "
            f"add them to [catalog.asset_keys.{cat.provider}]"
        )
    named = [str(keys[b]) for b in (*bands, "scl") if b in keys]
    shared = sorted({a for a in named if named.count(a) > 1})
    if shared:
        raise ConfigError(
            f"config: [catalog.asset_keys.{cat.provider}] maps several bands to asset(s) "
            f"{shared}; give each band its own asset"
        )


def _check_catalog_location(cat: CatalogConfig) -> None:
    """An http(s) URL, or a local path that exists (a missing one fails now, not per AOI)."""
    for folder in cat.allowed_folders:
        if not Path(folder).expanduser().is_dir():
            raise ConfigError(
                f"config: catalog.allowed_folders entry '{folder}' is not a folder; fix or remove it"
            )
    url = cat.url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        return
    if scheme not in ("", "file"):
        raise ConfigError(
            f"config: catalog.url '{url}' has scheme '{scheme}'; use an http(s) STAC API URL or a local path"
        )
    problem = local_catalog_problem(url[len("file://") :] if scheme == "file" else url)
    if problem:
        raise ConfigError(
            f"config: catalog.url '{url}' {problem}; pass a STAC API URL or a catalog.json / item collection"
        )


def local_catalog_problem(location: str) -> str | None:
    """Why a local catalog path cannot be read (None when it can): found before any search, so a
    mistyped folder is a usage error, not a failed AOI."""
    path = Path(location).expanduser()
    if not path.exists():
        return "does not exist"
    if path.is_dir() and not any((path / name).is_file() for name in CATALOG_DOCUMENTS):
        return f"is a folder without {', '.join(CATALOG_DOCUMENTS[:-1])} or {CATALOG_DOCUMENTS[-1]}"
    return None


# A levelling block must be several times a building's width: its median is the ground's.
_MIN_LEVEL_BLOCK_PX = 8


def _check_tolerance(c: ChangeConfig) -> None:
    """The opt-in narrower tolerance needs the tolerance, and its match a narrowed range: set
    otherwise, they would silently change nothing."""
    narrowed = c.tolerance_fraction < 1.0
    if c.tolerance_px == 0 and (narrowed or c.tolerance_match):
        raise ConfigError(
            "config: change.tolerance_fraction and tolerance_match narrow the tolerance, which "
            "change.tolerance_px = 0 turns off; set tolerance_px to 1 or more, or leave them out"
        )
    if c.tolerance_match and not narrowed:
        raise ConfigError(
            "config: change.tolerance_match = true changes nothing with tolerance_fraction = 1 "
            "(each band's range already explains a neighbour's whole spectrum); set "
            "tolerance_fraction below 1, e.g. 0.5, or leave tolerance_match out"
        )


def _check_cross_field(config: Config) -> None:
    t, c, b = config.time, config.change, config.berms
    if t.end < t.start:
        raise ConfigError(
            f"time: end {t.end} is before start {t.start}; pass an --end after --start"
        )
    if t.end.year >= 9999:  # the period after it would fall past the calendar's last year
        raise ConfigError(
            f"time: end {t.end} is past what periods can count to; pass one before 9999"
        )
    if 0 < c.level_block_px < _MIN_LEVEL_BLOCK_PX:
        raise ConfigError(
            f"config: change.level_block_px = {c.level_block_px} levels away the buildings "
            f"themselves (1 px found nothing on the demo); use 0 (off) or {_MIN_LEVEL_BLOCK_PX} "
            "and more"
        )
    _check_tolerance(c)
    if c.z_low > c.z_threshold:
        raise ConfigError(
            f"config: change.z_low = {c.z_low:g} is above its seed threshold z_threshold = "
            f"{c.z_threshold:g}; set z_low lower"
        )
    if c.structure_z_low > c.structure_z_threshold:
        raise ConfigError(
            f"config: change.structure_z_low = {c.structure_z_low:g} is above its seed threshold "
            f"structure_z_threshold = {c.structure_z_threshold:g}; set structure_z_low lower"
        )
    if b.ring_outer_m <= b.ring_inner_m:
        raise ConfigError(
            f"config: berms.ring_outer_m = {b.ring_outer_m:g} is not above ring_inner_m = "
            f"{b.ring_inner_m:g}; make the ring wider"
        )
    k = config.kinds
    if k.soil_flattening >= k.roof_flattening:  # a change would be soil-like and a roof at once
        raise ConfigError(
            f"config: kinds.soil_flattening = {k.soil_flattening:g} is not below "
            f"roof_flattening = {k.roof_flattening:g}; a roof flattens the slope more than soil"
        )
