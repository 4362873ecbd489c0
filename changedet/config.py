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
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from changedet.errors import ConfigError

__all__ = [
    "EARTH_SEARCH_ASSETS",
    "PLANETARY_COMPUTER_ASSETS",
    "SENTINEL2_BAND_IDS",
    "AOIConfig",
    "BermConfig",
    "CatalogConfig",
    "ChangeConfig",
    "Config",
    "MaskConfig",
    "OutputConfig",
    "ReadConfig",
    "TimeConfig",
    "TrackConfig",
    "load_config",
    "parse_date",
    "to_dict",
    "validate",
]

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
    max_workers: int = 4  # concurrent asset reads
    retries: int = 3
    min_aoi_clear_fraction: float = 0.2  # scenes clearer than this inside the AOI are used
    probe_scl: bool = True  # read the cheap 20 m SCL window first to drop cloudy scenes
    min_aoi_coverage: float = (
        0.01  # a scene with data on less than this share of the AOI is "outside AOI"
    )
    resampling: str = "bilinear"  # 20 m (and reprojected) reflectance bands onto the 10 m grid; SCL is always nearest
    timeout_s: float = 30.0  # per HTTP request of an asset read
    backoff_s: float = 0.5  # first retry delay of an asset read; doubles per retry


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


@dataclass(frozen=True)
class ChangeConfig:
    coregister: bool = True
    coreg_threshold_px: float = 0.25  # correct shifts larger than this (pixels)
    z_threshold: float = 10.0  # robust z of the change score that seeds a change region
    z_low: float = 3.0  # hysteresis: seeded regions grow through pixels with robust z >= this
    # Seed threshold for roof-like change in time-series mode: the roof-like spectral test is a
    # second, independent line of evidence (and persistence a third), so the seed may be lower.
    roof_z_threshold: float = 6.0
    # Which change the time-series ledger tracks: "roof-like" (new buildings; graded ground,
    # berms and cleared plots are left to the berm stage) or "any" non-vegetated change (urban
    # change in general, as OSCD labels it).
    structures: str = "roof-like"
    min_area_m2: float = 400.0  # minimum mapping unit (4 pixels at 10 m)
    min_clear_obs: int = 1  # per period and pixel
    split_objects: bool = True  # watershed-split merged blobs
    smooth_sigma_px: float = 1.0  # Gaussian smoothing of the change evidence (spatial context)
    n_classes: int = 8  # k-means land-cover classes for the class-conditional change
    fill_holes: bool = True  # fill holes enclosed by a change region
    vegetation_gate: bool = True  # damp change that ends in vegetation (not a new structure)
    water_gate: bool = True  # damp change on pixels that are water on both dates (turbidity, tides)


@dataclass(frozen=True)
class TrackConfig:
    min_persistence: int = 2  # confirmed when present in >= N later clear periods (incl. first)
    match_iou: float = 0.1
    match_overlap: float = 0.5  # ...or when the overlap covers this share of the smaller of the two
    min_presence_fraction: float = 0.5  # present in >= this share of observed periods since first
    min_observed_fraction: float = 0.5  # a structure is observed when this share of it is clear
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
        200  # evidence chips for the most confident structures only (keeps report.html small)
    )


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
    berms: BermConfig = field(default_factory=BermConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    aoi: AOIConfig = field(default_factory=AOIConfig)

    def fingerprint(self) -> str:
        """Short stable hash of the effective config, recorded with every output."""
        blob = json.dumps(to_dict(self), sort_keys=True, default=str)
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
        if isinstance(value, date):
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


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            place = f"[{where}]" if where else "top level"
            raise ConfigError(f"config: unknown key '{key}' in {place}{_suggest(key, names)}")
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
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: '{path}' is not valid TOML ({exc}); fix the syntax") from None
    _resolve_relative_paths(data, path.parent)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"config: 'extends' in '{path}' must be a file path string")
    base = _read_toml((path.parent / parent), (*seen, path))
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


def validate(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    t = config.time
    if t.end < t.start:
        raise ConfigError(
            f"time: end {t.end} is before start {t.start}; pass an --end after --start"
        )
    if t.period not in ("month", "quarter"):
        raise ConfigError(f"time.period must be 'month' or 'quarter', got '{t.period}'")
    if config.catalog.provider not in config.catalog.asset_keys:
        known = ", ".join(sorted(config.catalog.asset_keys))
        raise ConfigError(
            f"catalog.provider '{config.catalog.provider}' has no [catalog.asset_keys] map; use one of: {known}"
        )
    if not 0.0 <= config.read.min_aoi_clear_fraction <= 1.0:
        raise ConfigError("read.min_aoi_clear_fraction must be between 0 and 1")
    if config.change.structures not in ("roof-like", "any"):
        raise ConfigError(
            f"change.structures must be 'roof-like' or 'any', got '{config.change.structures}'"
        )
    if config.change.min_area_m2 < 0:
        raise ConfigError("change.min_area_m2 must be >= 0")
