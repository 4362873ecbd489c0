"""Semi-real monthly series from a real OSCD pair: how counting and dating are tested on real spectra.

From one labelled OSCD city (two real Sentinel-2 dates and a change label), build a monthly series in
which every labelled change region (8-connected component of >= `min_region_px` changed pixels)
appears at an assigned date: each acquisition shows `imgs_2` pixels inside regions revealed by then
and `imgs_1` pixels elsewhere. On top come per-date radiometric gain, sensor noise, sub-pixel
misregistration, synthetic clouds with displaced shadows and an SCL emulation (including faint cloud
edges that slip through, and bright surfaces SCL calls cloud), and one processing-baseline switch:
before `switch_date` DN = 10000·ρ (offset 0, baseline 03.01), from it on DN = 10000·ρ + 1000
(`raster:bands` offset −0.1, baseline 04.00) — so the reader's harmonisation is exercised.

Grid choice: the OSCD pair is L1C in EPSG:4326. The series is written on the UTM 10 m grid of the
city's centre (bounds snapped inward to 10 m multiples, bilinear for reflectance, nearest for the
label), because that is the grid `changedet run` builds for an AOI: with the `aoi.geojson` written
beside the catalog, `grid_for(aoi)` reproduces this grid exactly and no second resampling happens.
The spectra are L1C top-of-atmosphere values presented as L2A bottom-of-atmosphere reflectance.

Output folder:
    catalog.json, sentinel-2-l2a/collection.json, sentinel-2-l2a/<item>/<item>.json  (static STAC,
        Earth Search v1 asset keys: blue green red nir at 10 m, swir16 swir22 scl at 20 m)
    sentinel-2-l2a/<item>/<band>.tif   COGs
    truth.geojson      one feature per change region (EPSG:4326): region_id, appeared, razed
                       (null unless razed again), n_pixels, area_m2, bermed (null: OSCD has none)
    aoi.geojson        the series extent as an AOI (id = city)
    series.json        grid, dates, switch date, seed, and per-acquisition cloud cover and shift

`detect_series` runs the time-series core on a series in memory; `lab.score.score_structures` scores
its ledger against the truth regions. `make_oscd_series(..., calm=...)` switches named nuisances off
(`NUISANCES`) while every other draw stays as it was, to measure what each one costs
(`bench/nuisance.py`); the yardstick itself always has them all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import shapely
from pyproj import Transformer
from scipy import ndimage

from changedet.aoi import reproject_geometry, to_grid_crs, utm_epsg
from changedet.config import Config
from changedet.core.mask import persistent_from_counts, scl_clear, scl_cloudy
from changedet.core.track import footprint_geometry
from changedet.errors import DataError
from changedet.lab.oscd import OSCDCity, load_city
from changedet.lab.sample import refuse_unless_previous
from changedet.lab.scene import block_mean, fractal_noise
from changedet.models import Grid, Progress, Stack, no_progress
from changedet.outputs.fsio import atomic_dir, write_cog, write_json
from changedet.read.cog import reproject_array

__all__ = [
    "NUISANCES",
    "SERIES_BANDS",
    "Acquisition",
    "OSCDSeries",
    "SeriesSummary",
    "TruthRegion",
    "acquisition_dn",
    "detect_series",
    "load_truth",
    "make_oscd_series",
    "render_acquisition",
    "series_stack",
    "truth_labels",
    "write_oscd_series",
]

SERIES_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")
SERIES_FILES = frozenset({"catalog.json", "truth.geojson", "aoi.geojson", "series.json"})
BANDS_20M: tuple[str, ...] = ("swir16", "swir22")
_CLOUD = np.array([0.48, 0.47, 0.46, 0.49, 0.38, 0.26], np.float32)[:, None, None]
_OLD_BASELINE, _NEW_BASELINE = "03.01", "04.00"
# What `calm` can switch off: misregistration; per-band gain and haze; clouds, their shadows and
# the thin sheets and edges SCL misses (every date clear); seasonal vegetation and shadow length.
NUISANCES: tuple[str, ...] = ("shift", "radiometry", "cloud", "season")


@dataclass(frozen=True)
class TruthRegion:
    """One labelled change region and the date it appears in the series."""

    region_id: int
    appeared: date
    n_pixels: int
    area_m2: float
    geometry: Any  # shapely polygon in the series grid CRS
    razed: date | None = None  # from this day the region shows the first real date again


@dataclass(frozen=True)
class Acquisition:
    """One synthetic acquisition date and its random draws."""

    index: int
    when: datetime
    scene_id: str
    cloud_cover: float  # target cloud fraction 0..1
    shift_px: tuple[float, float]  # (row, col) misregistration
    gain: tuple[float, ...]  # per band
    baseline: str  # processing baseline: "03.01" (offset 0) or "04.00" (offset -0.1)
    haze: float = 0.0  # additive path radiance in blue (0: none); weaker at longer wavelengths
    thin_cloud: float = 0.0  # opacity of a thin cloud sheet SCL does not see (0: none)
    # Earth Search's `earthsearch:boa_offset_applied`: the provider already removed the 04.00
    # offset from the DNs (True) or left it in (False). Older baselines never had it.
    offset_applied: bool = False

    @property
    def boa_offset(self) -> float:
        """Additive reflectance offset a reader must apply to this acquisition's DNs."""
        return -0.1 if self.baseline == _NEW_BASELINE and not self.offset_applied else 0.0

    @property
    def dn_offset(self) -> float:
        """What the written DNs carry on top of 10000 x reflectance."""
        return -self.boa_offset * 10000.0


@dataclass(frozen=True)
class OSCDSeries:
    """A semi-real series in memory: the two real dates on the UTM grid and the plan."""

    city: str
    grid: Grid
    bands: tuple[str, ...]
    before: np.ndarray  # (B, H, W) float32, NaN where no data
    after: np.ndarray  # (B, H, W) float32
    regions: np.ndarray  # (H, W) int32, 0 = none, else region_id
    truth: tuple[TruthRegion, ...]
    acquisitions: tuple[Acquisition, ...]
    switch_date: date
    start: date
    months: int
    seed: int
    tile: str
    # What razed regions show: "cleared" (the first real date again) or "rubble" (`_rubble`).
    razed_as: str = "cleared"
    calm: frozenset[str] = frozenset()  # nuisances switched off (`NUISANCES`)

    @property
    def end(self) -> date:
        """Last day of the series (inclusive)."""
        total = self.start.year * 12 + self.start.month - 1 + self.months
        return date(total // 12, total % 12 + 1, 1) - timedelta(days=1)


@dataclass(frozen=True)
class SeriesSummary:
    city: str
    out_dir: Path
    catalog: Path
    truth: Path
    aoi: Path
    grid: Grid
    n_acquisitions: int
    n_regions: int
    start: date
    end: date
    switch_date: date
    n_razed: int = 0

    def __str__(self) -> str:
        razed = f", {self.n_razed} razed again later" if self.n_razed else ""
        return (
            f"{self.city}: {self.n_acquisitions} SYNTHETIC acquisitions from real OSCD spectra, "
            f"{self.start} to {self.end} (processing baseline switch {self.switch_date}), "
            f"{self.n_regions} labelled change regions{razed} → {self.out_dir}\n"
            f"  catalog {self.catalog.name}, truth {self.truth.name}, AOI {self.aoi.name}\n"
            # The run's default window is not the series': without these, changes built in
            # the months before its start hide in the baseline and its last months go unseen.
            f"  run it: changedet run {self.aoi} --catalog {self.catalog} "
            f"--start {self.start} --end {self.end} --out OUT"
        )


# ----------------------------------------------------------------------------- building the series


def _add_months(d: date, months: int) -> date:
    total = d.year * 12 + (d.month - 1) + months
    return date(total // 12, total % 12 + 1, 1)


def _utm_grid(src: Grid, res: float = 10.0) -> Grid:
    """UTM grid of the source extent's centre, bounds snapped inward to `res` multiples.

    Not `aoi.grid_for`: that snaps an AOI's bounds outward, which here would add edge pixels the
    source does not cover. The zone is chosen the same way (`aoi.utm_epsg`)."""
    x0, y0, x1, y1 = src.bounds
    # The centre in degrees: OSCD ships EPSG:4326 bands, a reprojected copy may be in metres.
    lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(
        (x0 + x1) / 2, (y0 + y1) / 2
    )
    crs = f"EPSG:{utm_epsg(lon, lat)}"
    tr = Transformer.from_crs(src.crs, crs, always_xy=True)
    xs, ys = tr.transform([x0, x0, x1, x1], [y0, y1, y0, y1])
    # Inward: the largest axis-aligned box inside the (slightly rotated) source footprint.
    left, right = max(xs[0], xs[1]), min(xs[2], xs[3])
    bottom, top = max(ys[0], ys[2]), min(ys[1], ys[3])
    left, bottom = math.ceil(left / res) * res, math.ceil(bottom / res) * res
    right, top = math.floor(right / res) * res, math.floor(top / res) * res
    return Grid.from_origin(
        crs, left, top, res, round((right - left) / res), round((top - bottom) / res)
    )


_BANDS = "CDEFGHJKLMNPQRSTUVWX"  # MGRS latitude bands, 8° each from 80° S (X: 72-84° N)
_COLUMNS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")  # 100 km columns, by zone mod 3
_ROWS = "ABCDEFGHJKLMNPQRSTUV"  # 100 km rows, cycling every 2000 km (even zones start at F)


def mgrs_tile(grid: Grid) -> str:
    """The MGRS tile ('31UDQ') holding the centre of a UTM grid, as Sentinel-2 names its tiles,
    so a series' scene ids read like real ones of that place."""
    zone = int(grid.crs.split(":")[1]) % 100
    x0, y0, x1, y1 = grid.bounds
    east, north = (x0 + x1) / 2, (y0 + y1) / 2
    _, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(east, north)
    band = _BANDS[min(max(int((lat + 80) // 8), 0), len(_BANDS) - 1)]
    column = _COLUMNS[(zone - 1) % 3][int(east // 100_000) - 1]
    row = _ROWS[(int(north // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone:02d}{band}{column}{row}"


def _regions(label: np.ndarray, min_px: int) -> tuple[np.ndarray, int]:
    lab, n = ndimage.label(label, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = np.flatnonzero(sizes >= min_px)
    keep = keep[keep > 0]
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    return lut[lab], int(keep.size)


def _check_city(city: OSCDCity, months: int, baseline_months: int) -> None:
    if city.label is None:
        raise DataError(
            f"OSCD city '{city.name}' has no label; the series needs its change regions"
        )
    if months < baseline_months + 2:
        raise DataError(f"a series needs at least {baseline_months + 2} months, got {months}")
    missing = [b for b in SERIES_BANDS if b not in city.bands]
    if missing:
        raise DataError(f"OSCD city '{city.name}' lacks bands {missing}")


def _on_utm_grid(city: OSCDCity) -> tuple[Grid, np.ndarray, np.ndarray, np.ndarray]:
    """(grid, before, after, label): the series bands and the label on the city's UTM grid
    (bilinear for reflectance, nearest for the label)."""
    assert city.label is not None
    idx = [city.bands.index(b) for b in SERIES_BANDS]
    grid = _utm_grid(city.grid)
    before = reproject_array(
        city.before[idx].astype(np.float32), city.grid, grid, nearest=False, nodata=np.nan
    )
    after = reproject_array(
        city.after[idx].astype(np.float32), city.grid, grid, nearest=False, nodata=np.nan
    )
    label = reproject_array(city.label.astype(np.uint8), city.grid, grid, nearest=True) > 0
    return grid, before, after, label


def _date_regions(
    rng: np.random.Generator,
    regions: np.ndarray,
    n: int,
    grid: Grid,
    *,
    start: date,
    months: int,
    baseline_months: int,
) -> list[TruthRegion]:
    """Each region's appearance: a uniform day in a month `baseline_months` .. `months - 2`."""
    truth: list[TruthRegion] = []
    slices = ndimage.find_objects(regions)
    for rid in range(1, n + 1):
        month = int(rng.integers(baseline_months, months - 1))
        m0 = _add_months(start, month)
        m1 = _add_months(start, month + 1)
        day = m0 + timedelta(days=int(rng.integers(0, (m1 - m0).days)))
        sl = slices[rid - 1]
        assert sl is not None
        mask = np.zeros(grid.shape, dtype=bool)
        mask[sl] = regions[sl] == rid
        npx = int(mask.sum())
        truth.append(
            TruthRegion(rid, day, npx, npx * grid.pixel_area_m2, footprint_geometry(mask, grid))
        )
    return truth


def _acquisition(
    rng: np.random.Generator, index: int, day: date, tile: str, switch: date
) -> Acquisition:
    """One date's draws: cloud cover (half the dates clear), a 0.2-0.5 px misregistration in a
    random direction, per-band gain, haze on ~30 % and an unseen thin cloud sheet on ~20 % of the
    dates, and (after the switch) which offset convention the provider used."""
    when = datetime(day.year, day.month, day.day, 7, 5, tzinfo=UTC)
    u = rng.random()
    cover = 0.0 if u < 0.5 else (rng.uniform(0.05, 0.4) if u < 0.8 else rng.uniform(0.5, 0.95))
    size, angle = rng.uniform(0.2, 0.5), rng.uniform(0.0, 2.0 * math.pi)
    shift = (float(size * math.sin(angle)), float(size * math.cos(angle)))
    gain = tuple(float(g) for g in rng.normal(1.0, 0.02, len(SERIES_BANDS)))
    haze = float(rng.uniform(0.01, 0.05)) if rng.random() < 0.3 else 0.0
    thin = float(rng.uniform(0.04, 0.12)) if rng.random() < 0.2 else 0.0
    applied = bool(rng.random() < 0.5)
    sid = f"S2A_{tile}_{day:%Y%m%d}_{index}_L2A"
    base = _NEW_BASELINE if day >= switch else _OLD_BASELINE
    return Acquisition(
        index,
        when,
        sid,
        float(cover),
        shift,
        gain,
        base,
        haze,
        thin,
        applied and base == _NEW_BASELINE,
    )


def _monthly_acquisitions(
    rng: np.random.Generator,
    tile: str,
    *,
    start: date,
    months: int,
    scenes_per_month: int,
    switch: date,
) -> list[Acquisition]:
    """`scenes_per_month` dates a month, evenly spread with ±2 days of jitter."""
    acqs: list[Acquisition] = []
    for m in range(months):
        m0, m1 = _add_months(start, m), _add_months(start, m + 1)
        span = (m1 - m0).days
        for k in range(scenes_per_month):
            jitter = rng.integers(-2, 3)
            day = m0 + timedelta(
                days=min(span - 1, int(span * (k + 0.5) / scenes_per_month + jitter))
            )
            acqs.append(_acquisition(rng, len(acqs), day, tile, switch))
    return acqs


def make_oscd_series(
    city: OSCDCity,
    *,
    seed: int = 0,
    start: date = date(2023, 1, 1),
    months: int = 12,
    scenes_per_month: int = 3,
    baseline_months: int = 2,
    min_region_px: int = 10,
    switch_month: int | None = None,
    razed_share: float = 0.0,
    razed_as: str = "cleared",
    calm: Collection[str] = (),
) -> OSCDSeries:
    """Plan a semi-real series from an `oscd.OSCDCity` loaded with its label.

    Regions appear in months `baseline_months` .. `months - 2` (so each has at least two later
    months to be confirmed in), on a uniformly drawn day. The baseline switch happens at the start
    of month `switch_month` (default: the middle month). `razed_share`: the share of regions
    razed again later (`_raze`; 0: none, and the series is the same as without it), showing
    `razed_as`: "cleared" (the first real date again) or "rubble" (`_rubble`). `calm`: nuisances
    (`NUISANCES`) switched off; every random draw is made as without it, so the rest of the series
    (dates, regions, the other nuisances) stays the same.
    """
    if razed_as not in ("cleared", "rubble"):
        raise ValueError(f"razed_as must be 'cleared' or 'rubble', not {razed_as!r}")
    unknown = sorted(set(calm) - set(NUISANCES))
    if unknown:
        raise ValueError(f"unknown nuisances {unknown}; known: {', '.join(NUISANCES)}")
    _check_city(city, months, baseline_months)
    grid, before, after, label = _on_utm_grid(city)
    regions, n = _regions(label, min_region_px)
    truth = _date_regions(
        np.random.default_rng([seed, 11]),
        regions,
        n,
        grid,
        start=start,
        months=months,
        baseline_months=baseline_months,
    )
    if razed_share > 0:
        truth = _raze(
            np.random.default_rng([seed, 13]), truth, start=start, months=months, share=razed_share
        )
    switch = _add_months(start, switch_month if switch_month is not None else months // 2)
    tile = mgrs_tile(grid)
    acqs = _monthly_acquisitions(
        np.random.default_rng([seed, 12]),
        tile,
        start=start,
        months=months,
        scenes_per_month=scenes_per_month,
        switch=switch,
    )
    acqs = [_calmed(a, frozenset(calm)) for a in acqs]
    return OSCDSeries(
        city=city.name,
        grid=grid,
        bands=SERIES_BANDS,
        before=before,
        after=after,
        regions=regions,
        truth=tuple(truth),
        acquisitions=tuple(acqs),
        switch_date=switch,
        start=start,
        months=months,
        seed=seed,
        tile=tile,
        razed_as=razed_as,
        calm=frozenset(calm),
    )


def _calmed(acq: Acquisition, calm: frozenset[str]) -> Acquisition:
    """`acq` without the per-date nuisances named in `calm` (season is `_ground`'s)."""
    if "shift" in calm:
        acq = replace(acq, shift_px=(0.0, 0.0))
    if "radiometry" in calm:
        acq = replace(acq, gain=tuple(1.0 for _ in acq.gain), haze=0.0)
    if "cloud" in calm:
        acq = replace(acq, cloud_cover=0.0, thin_cloud=0.0)
    return acq


def _block_mean(a: np.ndarray, factor: int = 2) -> np.ndarray:
    """10 m → 20 m on the series' 20 m grid (`Grid.scaled`), which covers an odd last 10 m row
    or column whole: that 20 m pixel is the mean of the 10 m pixels it holds."""
    pad = [(0, 0)] * (a.ndim - 2) + [(0, -a.shape[-2] % factor), (0, -a.shape[-1] % factor)]
    return np.asarray(block_mean(np.pad(a, pad, mode="edge"), factor))


# Haze (aerosol path radiance) is strongest in blue and fades towards the SWIR.
_HAZE = np.array([1.0, 0.75, 0.55, 0.3, 0.1, 0.05], np.float32)[:, None, None]


def _season(day: date, peak_doy: int) -> float:
    """cos of the year's phase: 1 on `peak_doy`, -1 half a year away."""
    return math.cos(2.0 * math.pi * (day.timetuple().tm_yday - peak_doy) / 365.25)


def _razed_by(region: TruthRegion, day: date) -> bool:
    return region.razed is not None and region.razed <= day


def _raze(
    rng: np.random.Generator,
    truth: list[TruthRegion],
    *,
    start: date,
    months: int,
    share: float,
) -> list[TruthRegion]:
    """About `share` of the regions that leave room for it razed again: on a uniform day of a
    month at least two months after the one they appeared in (long enough to be confirmed) and
    at least four months before the end (long enough to be seen gone three clear months in a
    row). Razed ground shows the first real date again, as a site cleared back to its old
    surface would; rubble that looks like neither date is not modelled."""
    out: list[TruthRegion] = []
    for r in truth:
        first = (r.appeared.year - start.year) * 12 + r.appeared.month - start.month + 2
        last = months - 4
        if first > last or rng.random() >= share:
            out.append(r)
            continue
        month = int(rng.integers(first, last + 1))
        m0, m1 = _add_months(start, month), _add_months(start, month + 1)
        day = m0 + timedelta(days=int(rng.integers(0, (m1 - m0).days)))
        out.append(replace(r, razed=day))
    return out


def _ground(series: OSCDSeries, day: date) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance of the ground on `day` ((B, H, W), 0 where no data) and the no-data mask:
    revealed regions (appeared, not razed yet) show the second real date, the rest the first;
    vegetation greens up towards late June and browns in winter; shadows north of tall objects
    grow by up to a pixel towards the winter solstice (shadows fall north at Sentinel-2's morning
    overpass)."""
    revealed = np.array(
        [r.region_id for r in series.truth if r.appeared <= day and not _razed_by(r, day)],
        np.int32,
    )
    inside = np.isin(series.regions, revealed) & np.isfinite(series.after).all(axis=0)
    refl = np.where(inside[None], series.after, series.before).astype(np.float32)
    if series.razed_as == "rubble":
        refl = _rubble(series, day, refl)
    nodata = np.asarray(~np.isfinite(refl).all(axis=0))
    refl = np.nan_to_num(refl, nan=0.0)
    red, nir = refl[2], refl[3]
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = np.nan_to_num((nir - red) / np.maximum(nir + red, 1e-6))
    still = "season" in series.calm  # no seasonal swing: vegetation and shadows as at equinox
    green_up = 0.15 * (0.0 if still else _season(day, 170)) * np.clip((ndvi - 0.2) / 0.5, 0.0, 1.0)
    refl[3] *= 1.0 + 1.5 * green_up
    refl[2] *= 1.0 - 1.2 * green_up
    refl[4] *= 1.0 - 0.5 * green_up
    # Tall objects: built pixels much brighter than their surroundings (buildings, not sand).
    bright = refl[:3].mean(axis=0)
    tall = (bright - ndimage.median_filter(bright, size=5) > 0.04) & (ndvi < 0.2)
    north = np.zeros_like(tall)
    north[:-1] = tall[1:] & ~tall[:-1]
    length = 0.5 + 0.5 * (0.0 if still else _season(day, 355))
    refl *= (1.0 - 0.5 * length * north)[None]
    return refl, nodata


def _rubble(series: OSCDSeries, day: date, refl: np.ndarray) -> np.ndarray:
    """Razed regions as rubble: each pixel a mix of 20-50 % of the structure's real spectrum
    (what still stands, debris of it) and the rest the old ground's, darkened by 15 % (ash,
    shadowed debris); the same mix on every date. Our model of a struck building, not
    observed data: it only tells whether a site that stays changed, but no longer like the
    structure, is reported gone."""
    razed = [r.region_id for r in series.truth if _razed_by(r, day)]
    where = np.isin(series.regions, razed) & np.isfinite(series.after).all(axis=0)
    if not where.any():
        return refl
    share = np.random.default_rng([series.seed, 14]).uniform(0.2, 0.5, where.shape)
    mix = share * np.nan_to_num(series.after) + (1.0 - share) * np.nan_to_num(series.before)
    return np.where(where[None], np.float32(0.85) * mix.astype(np.float32), refl)


def _fractal_field(rng: np.random.Generator, shape: tuple[int, int], beta: float) -> np.ndarray:
    field = fractal_noise(rng, shape, beta)
    return (field - field.min()) / max(float(np.ptp(field)), 1e-6)


def _clouds(
    rng: np.random.Generator, acq: Acquisition, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cloud opacity, its displaced shadow, an unseen thin cloud sheet), each (H, W) 0..1."""
    h, w = shape
    cloud = np.zeros(shape, np.float32)
    shadow = np.zeros(shape, np.float32)
    if acq.cloud_cover > 0:
        m = 16
        big = fractal_noise(rng, (h + 2 * m, w + 2 * m), 3.6)
        thr = float(np.quantile(big[m : m + h, m : m + w], 1.0 - acq.cloud_cover))
        alpha = np.clip((big - thr) / 0.35 + 0.5, 0.0, 1.0) ** 0.8
        cloud = alpha[m : m + h, m : m + w].astype(np.float32)
        dr, dc = int(rng.integers(-m + 2, m - 1)), int(rng.integers(-m + 2, m - 1))
        shadow = alpha[m - dr : m - dr + h, m - dc : m - dc + w].astype(np.float32)
    thin = np.zeros(shape, np.float32)
    if acq.thin_cloud > 0:
        field = _fractal_field(rng, shape, 3.2)
        thin = (np.clip((field - 0.6) * 2.5, 0.0, 1.0) * acq.thin_cloud).astype(np.float32)
    return cloud, shadow, thin


def _scl(
    refl: np.ndarray,
    cloud: np.ndarray,
    shadow: np.ndarray,
    nodata: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sen2Cor-like SCL at 20 m from the fields: faint cloud edges slip through as 7 (unclassified),
    only dark shadow cores are flagged, thin cloud sheets and haze are not seen at all, and bright
    roofs and sand are called cloud on some dates."""
    a20, s20 = _block_mean(cloud), _block_mean(shadow * (1.0 - cloud))
    red, nir, blue = _block_mean(refl[2]), _block_mean(refl[3]), _block_mean(refl[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    scl = np.full(a20.shape, 5, dtype=np.uint8)
    scl[ndvi >= 0.3] = 4
    scl[(nir < 0.05) & (blue < 0.1)] = 6
    scl[(blue > 0.25) & (rng.random() < 0.4)] = 8  # bright roofs and sand called cloud sometimes
    scl[(a20 >= 0.08) & (a20 < 0.25)] = 7
    scl[(s20 >= 0.35) & (a20 < 0.25)] = 3
    scl[(a20 >= 0.25) & (a20 < 0.5)] = 8
    scl[a20 >= 0.5] = 9
    scl[_block_mean(np.asarray(nodata, dtype=np.float32)) > 0.5] = 0
    scl[~np.isfinite(nir)] = 0
    return scl


def render_acquisition(series: OSCDSeries, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Acquisition `t` as (reflectance (B, H, W) float32 NaN = no data, scl (H/2, W/2) uint8 at
    20 m, cloud opacity (H, W) float32). Deterministic in (series seed, t).

    The ground of the day (`_ground`), misregistered by the acquisition's sub-pixel shift
    (bilinear, as a resampled product would be), scaled by its per-band gain, hazed, clouded
    (with shadows and thin sheets), with sensor noise, and its SCL (`_scl`)."""
    acq = series.acquisitions[t]
    rng = np.random.default_rng([series.seed, 1000 + t])
    refl, nodata = _ground(series, acq.when.date())
    refl = ndimage.shift(refl, (0, *acq.shift_px), order=1, mode="nearest")
    refl *= np.asarray(acq.gain, np.float32)[:, None, None]
    if acq.haze > 0:
        refl += _HAZE * (acq.haze * _fractal_field(rng, series.grid.shape, 3.0))[None]
    cloud, shadow, thin = _clouds(rng, acq, series.grid.shape)
    refl *= 1.0 - 0.6 * shadow * (1.0 - cloud)
    opacity = np.clip(cloud + thin, 0.0, 1.0)
    refl = refl * (1.0 - opacity) + _CLOUD * float(rng.uniform(0.85, 1.1)) * opacity
    refl += rng.standard_normal(refl.shape).astype(np.float32) * (0.002 + 0.01 * np.abs(refl))
    refl[:, nodata] = np.nan
    return refl, _scl(refl, cloud, shadow, nodata, rng), cloud


def acquisition_dn(series: OSCDSeries, t: int) -> dict[str, np.ndarray]:
    """Digital numbers of acquisition `t` as written: 10 m bands (H, W), 20 m bands and scl
    (H/2, W/2); uint16 with 0 = nodata, offset per the acquisition's processing baseline."""
    refl, scl, _ = render_acquisition(series, t)
    add = series.acquisitions[t].dn_offset
    out: dict[str, np.ndarray] = {}
    for i, band in enumerate(series.bands):
        r = _block_mean(refl[i]) if band in BANDS_20M else refl[i]
        valid = np.isfinite(r)
        dn = np.clip(np.rint(np.nan_to_num(r) * 10000.0 + add), 1, 65535).astype(np.uint16)
        dn[~valid] = 0
        out[band] = dn
    out["scl"] = scl
    return out


def series_stack(
    series: OSCDSeries, indices: Sequence[int], *, config: Config | None = None
) -> Stack:
    """The Stack `changedet run` would read from the written series, built in memory.

    The same steps as the COG reader: DN → reflectance with each acquisition's baseline offset,
    20 m bands resampled bilinearly and SCL by nearest onto the 10 m grid, bright-roof pixels
    (SCL cloud on most dates) kept clear, cloud and shadow masks dilated, and acquisitions less
    clear than `read.min_aoi_clear_fraction` left out. For drivers and tests that bypass the files
    (`tests/test_synth_oscd.py` checks it against the real reader).
    """
    cfg = config or Config()
    dns = [acquisition_dn(series, t) for t in indices]
    scl = np.stack([_to_grid(dn["scl"], series.grid, nearest=True) for dn in dns])
    roof = persistent_from_counts(
        scl_cloudy(scl, cloud_classes=cfg.mask.cloud_classes).sum(axis=0, dtype=np.int32),
        (scl != 0).sum(axis=0, dtype=np.int32),
        fraction=cfg.mask.persistent_cloud_fraction,
        min_dates=cfg.mask.persistent_min_dates,
    )
    refl = np.stack([_reflectance(series, t, dn) for t, dn in zip(indices, dns, strict=True)])
    keep = roof[None] & scl_cloudy(scl, cloud_classes=cfg.mask.cloud_classes)
    clear = scl_clear(scl, invalid=cfg.mask.scl_invalid, dilate_px=cfg.mask.dilate_px, keep=keep)
    clear &= np.isfinite(refl).all(axis=1)
    weather = (scl != 0) & ~roof[None]
    share = (clear & weather).sum(axis=(1, 2)) / np.maximum(weather.sum(axis=(1, 2)), 1)
    used = np.flatnonzero(share >= cfg.read.min_aoi_clear_fraction)
    refl, clear, scl = refl[used], clear[used], scl[used]
    refl[~np.broadcast_to(clear[:, None], refl.shape)] = np.nan
    acqs = [series.acquisitions[indices[j]] for j in used.tolist()]
    return Stack(
        grid=series.grid,
        bands=series.bands,
        times=tuple(a.when for a in acqs),
        scene_ids=tuple((a.scene_id,) for a in acqs),
        reflectance=refl,
        clear=clear,
        scl=scl,
    )


def _to_grid(a: np.ndarray, grid: Grid, *, nearest: bool) -> np.ndarray:
    """A 10 m or 20 m array of the series onto its 10 m grid, as the reader resamples it."""
    if a.shape == grid.shape:
        return a
    nodata = None if nearest else np.nan
    return reproject_array(a, grid.scaled(2), grid, nearest=nearest, nodata=nodata)


def _reflectance(series: OSCDSeries, t: int, dn: dict[str, np.ndarray]) -> np.ndarray:
    """(B, H, W) float32 reflectance of acquisition `t` on the 10 m grid (NaN = no data)."""
    offset = series.acquisitions[t].boa_offset
    out = np.empty((len(series.bands), *series.grid.shape), np.float32)
    for i, band in enumerate(series.bands):
        d = dn[band]
        r = d.astype(np.float32) * np.float32(1e-4) + np.float32(offset)
        r[d == 0] = np.nan
        out[i] = _to_grid(r, series.grid, nearest=False)
    return out


# ----------------------------------------------------------------------------- writing


def _to_wgs84(geom: Any, crs: str) -> Any:
    return reproject_geometry(geom, crs, "EPSG:4326")


def _raster_bands(band: str, offset: float) -> list[dict[str, Any]]:
    if band == "scl":
        return [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}]
    res = 20 if band in BANDS_20M else 10
    return [
        {
            "nodata": 0,
            "data_type": "uint16",
            "bits_per_sample": 15,
            "spatial_resolution": res,
            "scale": 0.0001,
            "offset": offset,
        }
    ]


def write_oscd_series(
    root: Path,
    city: str,
    out_dir: Path,
    *,
    seed: int = 0,
    start: date = date(2023, 1, 1),
    months: int = 12,
    scenes_per_month: int = 3,
    razed_share: float = 0.0,
    progress: Progress = no_progress,
) -> SeriesSummary:
    """Build the semi-real series of OSCD `city` under `root` and write it to `out_dir` (replaced
    atomically): COGs, a static STAC catalog with Earth Search keys, truth.geojson, aoi.geojson."""
    data = load_city(Path(root), city, with_label=True)
    series = make_oscd_series(
        data,
        seed=seed,
        start=start,
        months=months,
        scenes_per_month=scenes_per_month,
        razed_share=razed_share,
    )
    out_dir = Path(out_dir)
    refuse_unless_previous(out_dir, SERIES_FILES, "series")
    with atomic_dir(out_dir) as tmp:
        _write_catalog(tmp, series, progress)
        write_json(tmp / "truth.geojson", _truth_geojson(series))
        write_json(tmp / "aoi.geojson", _aoi_geojson(series))
        write_json(tmp / "series.json", _series_json(series))
    return SeriesSummary(
        city=city,
        out_dir=out_dir,
        catalog=out_dir / "catalog.json",
        truth=out_dir / "truth.geojson",
        aoi=out_dir / "aoi.geojson",
        grid=series.grid,
        n_acquisitions=len(series.acquisitions),
        n_regions=len(series.truth),
        start=series.start,
        end=series.end,
        switch_date=series.switch_date,
        n_razed=sum(r.razed is not None for r in series.truth),
    )


def _write_catalog(tmp: Path, series: OSCDSeries, progress: Progress) -> None:
    """The static STAC catalog → collection → one item (and its COGs) per acquisition."""
    city = series.city
    footprint_ll = _to_wgs84(shapely.box(*series.grid.bounds), series.grid.crs)
    catalog = pystac.Catalog(
        id=f"oscd-series-{city}",
        description=(
            f"Semi-real monthly Sentinel-2 series built from the OSCD pair of {city} "
            "(contains modified Copernicus Sentinel data 2015-2018; labels CC BY-NC-SA)"
        ),
    )
    collection = pystac.Collection(
        id="sentinel-2-l2a",
        description="Semi-real Sentinel-2 L2A-like acquisitions (changedet synth oscd-series)",
        extent=pystac.Extent(
            pystac.SpatialExtent([list(footprint_ll.bounds)]),
            pystac.TemporalExtent([[series.acquisitions[0].when, series.acquisitions[-1].when]]),
        ),
        license="other",
    )
    catalog.add_child(collection)
    n = len(series.acquisitions)
    for t in range(n):
        collection.add_item(_write_acquisition(tmp, series, t, footprint_ll))
        progress("oscd-series", t + 1, n)
    # Absolute: pystac lays a relative root out from the working folder (a relative --out put
    # catalog.json and every item's JSON there, the COGs in --out).
    catalog.normalize_hrefs(str(tmp.resolve()) + "/")
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)


def _write_acquisition(tmp: Path, series: OSCDSeries, t: int, footprint_ll: Any) -> pystac.Item:
    """Write acquisition `t`'s COGs; return its item (Earth Search v1 asset keys)."""
    acq = series.acquisitions[t]
    dn = acquisition_dn(series, t)
    item_dir = tmp / "sentinel-2-l2a" / acq.scene_id
    valid = dn["scl"] > 0
    cloudy = np.isin(dn["scl"], (8, 9, 10)) & valid
    item = pystac.Item(
        id=acq.scene_id,
        geometry=shapely.geometry.mapping(footprint_ll),
        bbox=list(footprint_ll.bounds),
        datetime=acq.when,
        properties={
            "platform": "sentinel-2a",
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": round(100.0 * float(cloudy.sum()) / max(int(valid.sum()), 1), 3),
            "proj:epsg": series.grid.epsg,
            "grid:code": f"MGRS-{series.tile}",
            "s2:processing_baseline": acq.baseline,
            "earthsearch:boa_offset_applied": acq.offset_applied,
            "updated": acq.when.isoformat().replace("+00:00", "Z"),
            "changedet:synthetic": True,  # real spectra, generated acquisitions: runs say so
            "changedet:oscd_city": series.city,
            "changedet:shift_px": list(acq.shift_px),
        },
    )
    for band, arr in dn.items():
        g = series.grid.scaled(2) if arr.shape != series.grid.shape else series.grid
        write_cog(item_dir / f"{band}.tif", arr, g, nodata=0)
        item.add_asset(
            band,
            pystac.Asset(
                href=f"./{band}.tif",
                media_type=pystac.MediaType.COG,
                roles=["data"],
                extra_fields={
                    "raster:bands": _raster_bands(
                        band, -0.1 if acq.baseline == _NEW_BASELINE else 0.0
                    ),
                    "proj:shape": list(g.shape),
                    "proj:transform": list(g.transform)[:6],
                },
            ),
        )
    return item


def _aoi_geojson(series: OSCDSeries) -> dict[str, Any]:
    """The series extent as an AOI (id = city)."""
    footprint = shapely.box(*series.grid.bounds)
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {
                    "id": series.city,
                    "name": f"OSCD {series.city} (semi-real series)",
                },
                # 1 m inside the grid so grid_for() snaps outward onto exactly this grid.
                "geometry": shapely.geometry.mapping(
                    _to_wgs84(footprint.buffer(-1.0, join_style="mitre"), series.grid.crs)
                ),
            }
        ],
    }


def _truth_geojson(series: OSCDSeries) -> dict[str, Any]:
    feats = []
    for r in series.truth:
        feats.append(
            {
                "type": "Feature",
                "properties": {
                    "region_id": r.region_id,
                    "appeared": r.appeared.isoformat(),
                    "razed": None if r.razed is None else r.razed.isoformat(),
                    "n_pixels": r.n_pixels,
                    "area_m2": round(r.area_m2, 1),
                    "bermed": None,
                },
                "geometry": shapely.geometry.mapping(_to_wgs84(r.geometry, series.grid.crs)),
            }
        )
    return {
        "type": "FeatureCollection",
        "properties": {"city": series.city, "grid_crs": series.grid.crs, "seed": series.seed},
        "features": feats,
    }


def _series_json(series: OSCDSeries) -> dict[str, Any]:
    g = series.grid
    return {
        "city": series.city,
        "seed": series.seed,
        "start": series.start.isoformat(),
        "end": series.end.isoformat(),
        "months": series.months,
        "switch_date": series.switch_date.isoformat(),
        "grid": {
            "crs": g.crs,
            "transform": list(g.transform)[:6],
            "width": g.width,
            "height": g.height,
        },
        "n_regions": len(series.truth),
        "acquisitions": [
            {
                "id": a.scene_id,
                "datetime": a.when.isoformat(),
                "cloud_cover": round(a.cloud_cover, 3),
                "shift_px": [round(a.shift_px[0], 3), round(a.shift_px[1], 3)],
                "processing_baseline": a.baseline,
            }
            for a in series.acquisitions
        ],
    }


# ----------------------------------------------------------------------------- truth


def load_truth(path: Path, grid: Grid) -> list[TruthRegion]:
    """Read truth.geojson (EPSG:4326) back as TruthRegions in `grid`'s CRS."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read truth file '{path}': {exc}") from None
    out: list[TruthRegion] = []
    for f in data.get("features", []):
        p = f["properties"]
        geom = to_grid_crs(shapely.geometry.shape(f["geometry"]), grid.crs)
        out.append(
            TruthRegion(
                int(p.get("region_id", len(out) + 1)),
                date.fromisoformat(p["appeared"]),
                int(p.get("n_pixels", 0)),
                float(p.get("area_m2", geom.area)),
                geom,
                date.fromisoformat(p["razed"]) if p.get("razed") else None,
            )
        )
    return out


def truth_labels(truth: Sequence[TruthRegion], grid: Grid) -> np.ndarray:
    """(H, W) int32 raster of the truth regions: truth[i] → i + 1."""
    from rasterio.features import rasterize

    out = np.zeros(grid.shape, dtype=np.int32)
    shapes = [(r.geometry, i + 1) for i, r in enumerate(truth) if not r.geometry.is_empty]
    if shapes:
        rasterize(shapes, out=out, transform=grid.transform, dtype="int32")
    return out


# ----------------------------------------------------------------------------- reference driver


def detect_series(
    series: OSCDSeries,
    config: Any = None,
    *,
    n_months: int | None = None,
    skip_months: int = 0,
    progress: Progress = no_progress,
) -> Any:
    """Run the time-series core (`core.timeseries.analyse_stack`) on an in-memory series,
    bypassing catalog and COG reads. Returns its `Analysis`.
    n_months: use only the first n months (to test that extending a run keeps ids);
    skip_months: start that many months later (to test a later start).
    """
    from changedet.blas import one_blas_thread
    from changedet.config import Config
    from changedet.core.periods import make_periods
    from changedet.core.timeseries import analyse_stack

    cfg: Config = config if config is not None else Config()
    end = (
        series.end if n_months is None else _add_months(series.start, n_months) - timedelta(days=1)
    )
    start = _add_months(series.start, skip_months) if skip_months else series.start
    periods = make_periods(start, end, cfg.time.period)
    used = [a.index for a in series.acquisitions if start <= a.when.date() <= end]
    stack = series_stack(series, used, config=cfg)
    with one_blas_thread():  # as `pipeline.run_aoi` runs the core
        return analyse_stack(
            stack,
            inside=np.ones(series.grid.shape, dtype=bool),
            periods=periods,
            config=cfg,
            progress=progress,
        )
