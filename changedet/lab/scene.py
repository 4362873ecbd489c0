"""The pure scene model behind `changedet.lab.sample`: seeded numpy arrays, no I/O.

A synthetic Sentinel-2 L2A-like time series of an arid hill site with compounds, roads, seasonal
valley vegetation, pre-existing buildings and NEW structures (many with earth berms) that appear at
known acquisition dates; clouds with displaced shadows, thin cirrus, an SCL emulation that misfires
on a bright roof, sensor noise, per-date radiometric drift and sub-pixel misregistration.

Pixel coordinates are (row, col) on the rendering canvas: the output window plus `PAD` pixels on
every side (so shifts and blur have real content at the edges). Every random draw comes from
`np.random.default_rng([seed, stream, ...])`, so a scene and each rendered date are bit-identical on
rerun and independent of rendering order.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
from scipy import ndimage

__all__ = [
    "BANDS",
    "BANDS_10M",
    "BANDS_20M",
    "PAD",
    "SPECTRA",
    "AcquisitionPlan",
    "Rendered",
    "SynthBuilding",
    "SynthScene",
    "block_mean",
    "build_scene",
    "coverage_rect",
    "first_clear_index",
    "fractal_noise",
    "plan_acquisitions",
    "render",
    "sun_position",
    "to_dn",
]

BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")
BANDS_10M: tuple[str, ...] = BANDS[:4]
BANDS_20M: tuple[str, ...] = BANDS[4:]
PAD = 8  # canvas margin in 10 m pixels around the window
_SS = 5  # supersampling per pixel side when rasterising shapes (odd: symmetric sub-pixel centres)

# BOA reflectance (blue, green, red, nir, swir16, swir22) of the surfaces in the scene. Values are
# typical library/field spectra for arid alluvium, rock, sparse grass, gravel, roofing, clouds.
SPECTRA: dict[str, tuple[float, ...]] = {
    "soil_light": (0.115, 0.155, 0.205, 0.255, 0.335, 0.285),
    "soil_dark": (0.075, 0.105, 0.140, 0.180, 0.245, 0.205),
    "vegetation": (0.035, 0.075, 0.045, 0.380, 0.210, 0.105),
    "gravel_road": (0.160, 0.195, 0.230, 0.265, 0.335, 0.295),
    "water": (0.060, 0.065, 0.045, 0.025, 0.012, 0.008),
    "disturbed_soil": (0.150, 0.200, 0.270, 0.315, 0.420, 0.370),
    "cleared_ground": (0.140, 0.185, 0.245, 0.290, 0.390, 0.340),
    "concrete": (0.250, 0.270, 0.285, 0.305, 0.330, 0.300),
    "metal": (0.300, 0.310, 0.315, 0.320, 0.300, 0.270),
    "white_metal": (0.560, 0.580, 0.580, 0.570, 0.500, 0.430),
    "dark_roof": (0.080, 0.085, 0.090, 0.100, 0.110, 0.100),
    "cloud": (0.480, 0.470, 0.460, 0.490, 0.380, 0.260),
}
_CIRRUS = np.array([0.30, 0.29, 0.28, 0.27, 0.20, 0.12])  # additive reflectance per unit cirrus


def _spec(name: str) -> np.ndarray:
    return np.array(SPECTRA[name], dtype=np.float64)[:, None, None]


# ----------------------------------------------------------------------------- small pure helpers


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float) -> np.ndarray:
    """Zero-mean, unit-std random field with power spectrum ~ f**-beta (bigger beta = smoother)."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = np.inf
    field_ = np.fft.irfft2(np.fft.rfft2(white) * f ** (-beta / 2.0), s=shape)
    return (field_ - field_.mean()) / (field_.std() + 1e-12)


def block_mean(a: np.ndarray, factor: int = 2) -> np.ndarray:
    """Average non-overlapping factor×factor blocks over the last two axes (10 m → 20 m)."""
    h, w = a.shape[-2] // factor, a.shape[-1] // factor
    view = a[..., : h * factor, : w * factor]
    return view.reshape(*a.shape[:-2], h, factor, w, factor).mean(axis=(-3, -1))


def sun_position(when: datetime, lon: float, lat: float) -> tuple[float, float]:
    """(azimuth, elevation) of the sun in degrees (NOAA low-precision formulas, < 0.5° error)."""
    doy = when.timetuple().tm_yday
    hour = when.hour + when.minute / 60.0 + when.second / 3600.0
    g = 2.0 * math.pi / 365.0 * (doy - 1 + (hour - 12.0) / 24.0)
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * math.cos(g)
        - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g)
        - 0.040849 * math.sin(2 * g)
    )
    decl = (
        0.006918
        - 0.399912 * math.cos(g)
        + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g)
        + 0.00148 * math.sin(3 * g)
    )
    true_solar_min = hour * 60.0 + eqtime + 4.0 * lon
    hour_angle = math.radians(true_solar_min / 4.0 - 180.0)
    phi = math.radians(lat)
    cos_zen = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    zen = math.acos(max(-1.0, min(1.0, cos_zen)))
    az = math.degrees(
        math.atan2(
            math.sin(hour_angle),
            math.cos(hour_angle) * math.sin(phi) - math.tan(decl) * math.cos(phi),
        )
    )
    return ((az + 180.0) % 360.0, 90.0 - math.degrees(zen))


def coverage_rect(
    center: tuple[float, float],
    half: tuple[float, float],
    angle_deg: float,
    *,
    ss: int = _SS,
) -> tuple[int, int, np.ndarray]:
    """Fractional pixel coverage of a rotated rectangle.

    center (row, col) and half sizes (along, across) in pixels; `angle_deg` turns the long axis
    from the +col (east) axis towards north. Returns (row0, col0, patch) with patch in 0..1.
    """
    cy, cx = center
    ha, hc = half
    t = math.radians(angle_deg)
    ux, uy = math.cos(t), -math.sin(t)  # long axis in (col, row); rows grow southwards
    reach = math.hypot(ha, hc) + 1.0
    r0, r1 = math.floor(cy - reach), math.ceil(cy + reach)
    c0, c1 = math.floor(cx - reach), math.ceil(cx + reach)
    sub = (np.arange(ss) + 0.5) / ss
    ys = (np.arange(r0, r1)[:, None] + sub[None, :]).ravel()
    xs = (np.arange(c0, c1)[:, None] + sub[None, :]).ravel()
    dy = ys[:, None] - cy
    dx = xs[None, :] - cx
    along = dx * ux + dy * uy
    across = -dx * uy + dy * ux
    inside = (np.abs(along) <= ha) & (np.abs(across) <= hc)
    patch = inside.reshape(r1 - r0, ss, c1 - c0, ss).mean(axis=(1, 3))
    return r0, c0, patch


def _ring(
    center: tuple[float, float], half: tuple[float, float], angle: float, dist: float, width: float
) -> tuple[int, int, np.ndarray]:
    """Coverage of a rectangular ring `dist` px outside a rectangle, `width` px wide (a berm)."""
    r0, c0, outer = coverage_rect(center, (half[0] + dist + width, half[1] + dist + width), angle)
    ri, ci, inner = coverage_rect(center, (half[0] + dist, half[1] + dist), angle)
    out = outer.copy()
    out[ri - r0 : ri - r0 + inner.shape[0], ci - c0 : ci - c0 + inner.shape[1]] -= inner
    return r0, c0, np.clip(out, 0.0, 1.0)


def _segment_coverage(
    p: tuple[float, float], q: tuple[float, float], half_width: float, ss: int = 4
) -> tuple[int, int, np.ndarray]:
    """Fractional coverage of a thick line segment between (row, col) points p and q."""
    r0 = math.floor(min(p[0], q[0]) - half_width - 1)
    r1 = math.ceil(max(p[0], q[0]) + half_width + 1)
    c0 = math.floor(min(p[1], q[1]) - half_width - 1)
    c1 = math.ceil(max(p[1], q[1]) + half_width + 1)
    sub = (np.arange(ss) + 0.5) / ss
    ys = (np.arange(r0, r1)[:, None] + sub[None, :]).ravel()[:, None]
    xs = (np.arange(c0, c1)[:, None] + sub[None, :]).ravel()[None, :]
    vy, vx = q[0] - p[0], q[1] - p[1]
    length2 = max(vy * vy + vx * vx, 1e-9)
    t = np.clip(((ys - p[0]) * vy + (xs - p[1]) * vx) / length2, 0.0, 1.0)
    d = np.hypot(ys - (p[0] + t * vy), xs - (p[1] + t * vx))
    patch = (d <= half_width).reshape(r1 - r0, ss, c1 - c0, ss).mean(axis=(1, 3))
    return r0, c0, patch


def _paste(dst: np.ndarray, r0: int, c0: int, patch: np.ndarray, *, mode: str = "max") -> None:
    """Combine a patch into `dst` at (r0, c0), clipped to the array."""
    h, w = dst.shape
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + patch.shape[0], h), min(c0 + patch.shape[1], w)
    if rr0 >= rr1 or cc0 >= cc1:
        return
    src = patch[rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
    if mode == "max":
        np.maximum(dst[rr0:rr1, cc0:cc1], src, out=dst[rr0:rr1, cc0:cc1])
    else:
        dst[rr0:rr1, cc0:cc1] += src


def _full(shape: tuple[int, int], r0: int, c0: int, patch: np.ndarray) -> np.ndarray:
    out = np.zeros(shape)
    _paste(out, r0, c0, patch)
    return out


def _blend(surface: np.ndarray, material: str, cover: np.ndarray) -> None:
    """Paint `material` over `surface` (B, H, W) with fractional `cover` (H, W), in place."""
    surface *= 1.0 - cover
    surface += _spec(material) * cover


# ----------------------------------------------------------------------------- acquisition plan


@dataclass(frozen=True)
class AcquisitionPlan:
    """What happens on one acquisition date (everything rendering needs besides the scene)."""

    when: datetime
    platform: str
    cloud_cover: float  # target fraction of the window under cloud (alpha >= 0.5), 0..1
    cloud_height_m: float
    cirrus: bool
    shift_px: tuple[float, float]  # (row, col) misregistration applied to the whole image
    gain: tuple[float, ...]  # per-band multiplicative radiometric drift (atmospheric residual)
    offset: tuple[float, ...]  # per-band additive drift, reflectance units
    wetness: float  # 0..1 soil-moisture darkening after rain
    nodata_edge: bool = False  # swath edge: an eastern wedge of the window has no data
    duplicate: bool = False  # this datatake is also published reprocessed (`_1_L2A`)
    # Earth Search already shifted these DNs back (DN = 10000·ρ, `boa_offset_applied: true`);
    # the others keep the baseline >= 04.00 offset (DN = 10000·ρ + 1000).
    offset_applied: bool = False

    @property
    def day(self) -> date:
        return self.when.date()


def _month_starts(start: date, end: date) -> list[date]:
    out, d = [], date(start.year, start.month, 1)
    while d <= end:
        out.append(d)
        d = date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return out


def _revisit_days(reference: date, start: date, end: date) -> list[date]:
    """Sentinel-2's 5-day revisit grid through `reference`, from `start` to `end`."""
    grid: list[date] = []
    d = reference
    while d > start:
        d -= timedelta(days=5)
    while d <= end:
        if d >= start:
            grid.append(d)
        d += timedelta(days=5)
    return grid


def _monthly_dates(
    rng: np.random.Generator, grid: list[date], months: list[date], n_cloudy_months: int
) -> list[tuple[date, float]]:
    """(day, cloud cover), sorted: one revisit day a month, mid-month when possible; in
    `n_cloudy_months` winter months that day is heavily clouded and a clear one follows."""
    winter = [i for i, m in enumerate(months) if m.month in (11, 12, 1, 2, 3)]
    cloudy = set(rng.choice(winter, size=min(n_cloudy_months, len(winter)), replace=False).tolist())
    days: list[tuple[date, float]] = []
    for i, m in enumerate(months):
        in_month = [g for g in grid if (g.year, g.month) == (m.year, m.month)]
        if not in_month:
            continue
        middle = [g for g in in_month if 3 <= g.day <= 20] or in_month
        first = middle[int(rng.integers(len(middle)))]
        if i in cloudy:
            days.append((first, float(rng.uniform(0.45, 0.75))))
            later = [g for g in in_month if (g - first).days >= 10]
            if later:
                days.append((later[int(rng.integers(len(later)))], float(rng.uniform(0.0, 0.04))))
            continue
        dry = m.month in (6, 7, 8, 9)
        clear = rng.random() < (0.75 if dry else 0.5)
        cover = 0.0 if clear else float(rng.uniform(0.005, 0.03 if dry else 0.12))
        days.append((first, cover))
    days.sort()
    return days


@dataclass(frozen=True)
class _Roles:
    """Which dates (indices into the sorted dates; -1 = none) carry the special cases."""

    edge: int  # swath-edge no-data wedge
    big_shift: int  # the ~1 px misregistration
    duplicate: int  # also published reprocessed
    cirrus: set[int]
    harmonised: set[int]  # DNs written with the offset already removed


def _assign_roles(
    rng: np.random.Generator, days: list[tuple[date, float]], n_offset_applied: int
) -> _Roles:
    """Spread the special cases over distinct, mostly clear dates."""
    n = len(days)
    low_cloud = [i for i, (_, c) in enumerate(days) if c < 0.05]
    pool = [i for i in low_cloud if 0 < i < n - 1] or low_cloud or list(range(n))
    edge = int(pool[int(rng.integers(len(pool)))])
    big_pool = [i for i in pool if i != edge] or [i for i in range(1, n)] or [-1]
    big = int(big_pool[int(rng.integers(len(big_pool)))])
    dup_pool = [i for i in pool if i != edge and i != big] or [i for i in range(n) if i != edge]
    dup = int(dup_pool[len(dup_pool) // 2]) if dup_pool else -1
    cirrus_pool = [i for i in low_cloud if i not in (edge, dup)]
    cirrus = set(rng.choice(cirrus_pool, size=min(2, len(cirrus_pool)), replace=False).tolist())
    harmonised_pool = [i for i in range(n) if i != dup]
    harmonised = set(
        rng.choice(
            harmonised_pool, size=min(n_offset_applied, len(harmonised_pool)), replace=False
        ).tolist()
    )
    return _Roles(edge, big, dup, cirrus, harmonised)


def _plan(
    rng: np.random.Generator,
    i: int,
    day: date,
    cover: float,
    roles: _Roles,
    *,
    platform: str,
    big_shift_px: float,
    utc_time: tuple[int, int, int],
) -> AcquisitionPlan:
    """The random draws of date `i`: shift, cloud height, drift, wetness, time of day."""
    # One date carries the ~1 px misregistration; the others stay within 0.5 px.
    if i == roles.big_shift:
        mag, ang = big_shift_px * float(rng.uniform(0.9, 1.1)), float(rng.uniform(0, 2 * np.pi))
    else:
        mag, ang = 0.5 * math.sqrt(float(rng.random())), float(rng.uniform(0, 2 * np.pi))
    winter_day = day.month in (12, 1, 2)
    ms = int(rng.integers(0, 999))
    return AcquisitionPlan(
        when=datetime(day.year, day.month, day.day, *utc_time, ms * 1000, tzinfo=UTC),
        platform=platform,
        cloud_cover=cover,
        cloud_height_m=float(rng.uniform(500.0, 1200.0)),
        cirrus=i in roles.cirrus,
        shift_px=(round(mag * math.sin(ang), 4), round(mag * math.cos(ang), 4)),
        gain=tuple(round(float(g), 4) for g in rng.normal(1.0, 0.015, len(BANDS))),
        offset=tuple(round(float(o), 4) for o in rng.normal(0.0, 0.002, len(BANDS))),
        wetness=float(rng.uniform(0.3, 1.0) if winter_day else rng.uniform(0.0, 0.15)),
        nodata_edge=i == roles.edge,
        duplicate=i == roles.duplicate,
        offset_applied=i in roles.harmonised,
    )


def plan_acquisitions(
    rng: np.random.Generator,
    *,
    start: date,
    end: date,
    reference: date = date(2023, 6, 2),
    n_cloudy_months: int = 3,
    utc_time: tuple[int, int, int] = (7, 5, 30),
    big_shift_px: float = 1.0,
    n_offset_applied: int = 3,
) -> list[AcquisitionPlan]:
    """About one date a month on Sentinel-2's 5-day revisit grid, plus a clear second date in
    `n_cloudy_months` winter months whose first date is heavily clouded."""
    grid = _revisit_days(reference, start, end)
    days = _monthly_dates(rng, grid, _month_starts(start, end), n_cloudy_months)
    roles = _assign_roles(rng, days, n_offset_applied)
    # Sentinel-2A and 2B alternate on the revisit grid.
    ref_k = {g: k for k, g in enumerate(sorted({*grid, reference}))}
    return [
        _plan(
            rng,
            i,
            day,
            cover,
            roles,
            platform="sentinel-2a" if ref_k.get(day, 0) % 2 == 0 else "sentinel-2b",
            big_shift_px=big_shift_px,
            utc_time=utc_time,
        )
        for i, (day, cover) in enumerate(days)
    ]


# ----------------------------------------------------------------------------- the static scene


@dataclass(frozen=True)
class SynthBuilding:
    """One building in canvas pixel coordinates. `appear_index` None = present from the start."""

    id: str
    kind: str  # "building" (new) | "existing"
    center: tuple[float, float]  # (row, col) on the canvas
    half: tuple[float, float]  # half length, half width in pixels
    angle_deg: float
    roof: str  # key of SPECTRA
    height_m: float
    appear_index: int | None
    clear_index: int | None  # ground cleared from this date (before the roof), or None
    bermed: bool
    berm_distance_px: float
    berm_width_px: float
    scl_misfire: bool
    roof_patch: tuple[int, int, np.ndarray] = field(repr=False, compare=False)
    pad_patch: tuple[int, int, np.ndarray] | None = field(default=None, repr=False, compare=False)
    berm_patch: tuple[int, int, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def present(self, t: int) -> bool:
        return self.appear_index is None or t >= self.appear_index

    def ground_works(self, t: int) -> bool:
        """Berm and graded apron visible (from clearing, or with the roof)."""
        start = self.clear_index if self.clear_index is not None else self.appear_index
        return start is None or t >= start

    def corners(self) -> list[tuple[float, float]]:
        """Footprint corners (row, col) on the canvas, counter-clockwise on the map."""
        return _rect_corners(self.center, self.half, self.angle_deg)

    def berm_centerline(self) -> list[tuple[float, float]]:
        d = self.berm_distance_px + self.berm_width_px / 2.0
        return _rect_corners(self.center, (self.half[0] + d, self.half[1] + d), self.angle_deg)


def _rect_corners(
    center: tuple[float, float], half: tuple[float, float], angle_deg: float
) -> list[tuple[float, float]]:
    t = math.radians(angle_deg)
    ux, uy = math.cos(t), -math.sin(t)
    vx, vy = -uy, ux
    out = []
    for sa, sc in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        col = center[1] + sa * half[0] * ux + sc * half[1] * vx
        row = center[0] + sa * half[0] * uy + sc * half[1] * vy
        out.append((row, col))
    return out


_Compound = tuple[float, float, float, float, float]  # cy, cx, hy, hx, angle on the canvas


@dataclass(frozen=True)
class SynthScene:
    """Static layers on the canvas (window + PAD on each side) and the acquisition plans."""

    shape: tuple[int, int]  # window (H, W), 10 m pixels
    seed: int
    plans: tuple[AcquisitionPlan, ...]
    lon: float
    lat: float
    dem: np.ndarray = field(repr=False)  # (Hc, Wc) metres
    soil: np.ndarray = field(repr=False)  # (6, Hc, Wc) reflectance of bare ground incl. texture
    vegetation: np.ndarray = field(repr=False)  # (Hc, Wc) max green cover 0..1 in valleys
    roads: np.ndarray = field(repr=False)  # (Hc, Wc) coverage
    water: np.ndarray = field(repr=False)  # (Hc, Wc) coverage
    wet_pattern: np.ndarray = field(repr=False)  # (Hc, Wc) 0..1 where rain darkens the soil most
    buildings: tuple[SynthBuilding, ...] = ()
    compounds: tuple[_Compound, ...] = ()

    @property
    def canvas_shape(self) -> tuple[int, int]:
        return (self.shape[0] + 2 * PAD, self.shape[1] + 2 * PAD)

    @property
    def new_buildings(self) -> tuple[SynthBuilding, ...]:
        return tuple(b for b in self.buildings if b.kind == "building")


def _season(day: date) -> float:
    """Green-up of valley vegetation, 0..1: dry summer/autumn, rising from February to a May peak;
    spring 2024 is greener than the tail of spring 2023."""
    by_month = {1: 0.12, 2: 0.25, 3: 0.55, 4: 0.9, 5: 1.0, 6: 0.45, 7: 0.15}
    by_month |= {8: 0.06, 9: 0.05, 10: 0.06, 11: 0.1, 12: 0.12}
    value = by_month[day.month]
    if day.year == 2023 and day.month == 6:
        value = 0.3
    return value


def _layout_rng(seed: int, stream: int) -> np.random.Generator:
    """The scene layout's random stream `stream` (one per layer, so layers draw independently)."""
    return np.random.default_rng([seed, 1000 + stream])


def _terrain(seed: int, canvas: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dem, rock, texture): fractal relief scaled to hill slopes, rock share, static texture."""
    dem = fractal_noise(_layout_rng(seed, 1), canvas, 3.4)
    gy, gx = np.gradient(dem, 10.0)
    dem *= math.tan(math.radians(13.0)) / (np.hypot(gx, gy).mean() + 1e-12)
    rock = np.clip(
        0.5 + 0.35 * fractal_noise(_layout_rng(seed, 2), canvas, 2.6) + 0.004 * dem, 0.0, 1.0
    )
    texture = 1.0 + 0.035 * fractal_noise(_layout_rng(seed, 3), canvas, 1.2)
    return dem, rock, texture


def _place_compounds(
    rng: np.random.Generator, shape: tuple[int, int], n_compounds: int
) -> list[_Compound]:
    """Up to `n_compounds` rotated rectangles inside the window, apart from each other."""
    H, W = shape
    compounds: list[_Compound] = []
    margin = 10
    extents: list[tuple[float, float, float, float]] = []
    for _ in range(300):
        if len(compounds) >= n_compounds:
            break
        hy = float(rng.uniform(0.08, 0.12)) * H + 10
        hx = float(rng.uniform(0.09, 0.14)) * W + 10
        ang = float(rng.uniform(-25.0, 25.0))
        t = math.radians(ang)
        ey = abs(hx * math.sin(t)) + abs(hy * math.cos(t))  # extent of the rotated rectangle
        ex = abs(hx * math.cos(t)) + abs(hy * math.sin(t))
        lo_y, hi_y = PAD + margin + ey, PAD + H - margin - ey
        lo_x, hi_x = PAD + margin + ex, PAD + W - margin - ex
        if lo_y >= hi_y or lo_x >= hi_x:
            continue
        cy, cx = float(rng.uniform(lo_y, hi_y)), float(rng.uniform(lo_x, hi_x))
        if all(
            abs(cy - oy) > ey + oey + 8 or abs(cx - ox) > ex + oex + 8
            for oy, ox, oey, oex in extents
        ):
            extents.append((cy, cx, ey, ex))
            compounds.append((cy, cx, hy, hx, ang))
    return compounds


def _grade_compounds(
    compounds: list[_Compound], dem: np.ndarray, rock: np.ndarray, texture: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(graded, dem, soil): compounds are levelled and their ground light, untextured soil."""
    in_compound = np.zeros(dem.shape)
    for cy, cx, hy, hx, ang in compounds:
        _paste(in_compound, *coverage_rect((cy, cx), (hx, hy), ang, ss=1))
    graded = ndimage.gaussian_filter(in_compound, 3.0)
    level = ndimage.gaussian_filter(dem, 25.0)
    dem = dem * (1.0 - graded) + level * graded
    rock = rock * (1.0 - graded)
    texture = 1.0 + (texture - 1.0) * (1.0 - 0.6 * graded)
    soil = (_spec("soil_light")[:, :, :] * (1.0 - rock) + _spec("soil_dark") * rock) * texture
    return graded, dem, soil


def _lay_roads(
    rng: np.random.Generator, compounds: list[_Compound], canvas: tuple[int, int]
) -> np.ndarray:
    """Road coverage: a gravel perimeter road around each compound and a winding road linking
    them from the west edge to the east edge."""
    Hc, Wc = canvas
    roads = np.zeros(canvas)
    half_road = 0.45
    for cy, cx, hy, hx, ang in compounds:
        ring = [*_rect_corners((cy, cx), (hx + 2.0, hy + 2.0), ang)]
        for a, b in zip(ring, [*ring[1:], ring[0]], strict=True):
            _paste(roads, *_segment_coverage(a, b, half_road))
    stops = sorted(((cy, cx) for cy, cx, *_ in compounds), key=lambda p: p[1])
    path = [
        (float(rng.uniform(0.2, 0.8)) * Hc, 0.0),
        *stops,
        (float(rng.uniform(0.2, 0.8)) * Hc, Wc),
    ]
    for a, b in itertools.pairwise(path):
        n_seg = 6
        pts = [a]
        for k in range(1, n_seg):
            f = k / n_seg
            jitter = float(rng.normal(0.0, 4.0))
            pts.append((a[0] + (b[0] - a[0]) * f + jitter, a[1] + (b[1] - a[1]) * f))
        pts.append(b)
        for p, q in itertools.pairwise(pts):
            _paste(roads, *_segment_coverage(p, q, half_road))
    return roads


class _Placer:
    """Places buildings one at a time on free ground, drawing from one random stream in a fixed
    order (so a layout is reproducible); `occupied` is updated as buildings are placed."""

    def __init__(
        self,
        rng: np.random.Generator,
        shape: tuple[int, int],
        compounds: list[_Compound],
        occupied: np.ndarray,
        window_dates: list[int],
        *,
        cleared_fraction: float,
        id_prefix: str,
    ) -> None:
        self.rng = rng
        self.shape = shape
        self.compounds = compounds
        self.occupied = occupied
        self.window_dates = window_dates
        self.cleared_fraction = cleared_fraction
        self.id_prefix = id_prefix
        self.buildings: list[SynthBuilding] = []

    def place(self, kind: str, index: int, *, misfire: bool, isolated: bool, bermed: bool) -> bool:
        """Try up to 400 spots for one building; False when none is free."""
        # Berm decided by the caller and kept across attempts, so crowded compounds do not bias
        # the sample towards small unbermed structures.
        dist = float(self.rng.uniform(1.0, 3.0)) if bermed else 0.0
        bwidth = float(self.rng.uniform(1.0, 2.0)) if bermed else 0.0
        apron = dist + bwidth if bermed else 1.0
        width_m, length_m = 40.0, 60.0  # the SCL-misfire roof's size, never redrawn
        for attempt in range(400):
            if not misfire and attempt % 100 == 0:  # a new size now and then, if it does not fit
                width_m, length_m = self._draw_size(kind)
            half = (length_m / 20.0, width_m / 20.0)
            spot = self._draw_spot(half, apron, misfire=misfire, isolated=isolated)
            if spot is None or not self._claim(spot, half, apron):
                continue
            self.buildings.append(
                self._building(
                    kind, index, spot, half, misfire=misfire, bermed=bermed, berm=(dist, bwidth)
                )
            )
            return True
        return False

    def _draw_size(self, kind: str) -> tuple[float, float]:
        """(width, length) in metres."""
        rng = self.rng
        if kind == "existing":
            width_m = float(rng.uniform(15.0, 50.0))
            return width_m, float(np.clip(width_m * rng.uniform(1.3, 2.6), 30.0, 120.0))
        width_m = float(rng.uniform(20.0, 60.0))
        return width_m, float(np.clip(width_m * rng.uniform(1.4, 2.4), 40.0, 100.0))

    def _draw_spot(
        self, half: tuple[float, float], apron: float, *, misfire: bool, isolated: bool
    ) -> tuple[float, float, float] | None:
        """(row, col, angle) of a candidate centre, or None when it falls too near an edge."""
        rng = self.rng
        H, W = self.shape
        if isolated or not self.compounds:
            cy = float(rng.uniform(PAD + 12, PAD + H - 12))
            cx = float(rng.uniform(PAD + 12, PAD + W - 12))
            if misfire:  # keep the misfire roof in the west half, away from the swath edge
                cx = float(rng.uniform(PAD + 12, PAD + W * 0.45))
            ang = float(rng.uniform(-40.0, 40.0))
        else:
            cy, cx, ang = self._spot_in_compound(half, apron)
            if misfire and cx > PAD + W * 0.45:
                return None
        reach = math.hypot(half[0] + apron, half[1] + apron) + 2.0
        if not (PAD + reach < cy < PAD + H - reach and PAD + reach < cx < PAD + W - reach):
            return None
        return cy, cx, ang

    def _spot_in_compound(
        self, half: tuple[float, float], apron: float
    ) -> tuple[float, float, float]:
        """A centre inside a random compound, aligned with it (now and then turned 90°)."""
        rng = self.rng
        ccy, ccx, chy, chx, cang = self.compounds[int(rng.integers(len(self.compounds)))]
        a = float(rng.uniform(-1.0, 1.0)) * max(chx - half[0] - apron - 1.0, 0.0)
        b = float(rng.uniform(-1.0, 1.0)) * max(chy - half[1] - apron - 1.0, 0.0)
        t = math.radians(cang)
        cx = ccx + a * math.cos(t) + b * math.sin(t)
        cy = ccy - a * math.sin(t) + b * math.cos(t)
        ang = cang + float(rng.normal(0.0, 2.0)) + (90.0 if rng.random() < 0.2 else 0.0)
        return cy, cx, ang

    def _claim(
        self, spot: tuple[float, float, float], half: tuple[float, float], apron: float
    ) -> bool:
        """Mark the footprint, its apron and a margin occupied, if all of it is free."""
        cy, cx, ang = spot
        keep_out = coverage_rect(
            (cy, cx), (half[0] + apron + 1.5, half[1] + apron + 1.5), ang, ss=1
        )
        r0, c0, patch = keep_out
        if r0 < 0 or c0 < 0:
            return False
        region = self.occupied[r0 : r0 + patch.shape[0], c0 : c0 + patch.shape[1]]
        if region.shape != patch.shape or np.any(region & (patch > 0)):
            return False
        region |= patch > 0
        return True

    def _schedule_new(self, misfire: bool) -> tuple[int, int | None, str]:
        """(appear index, clear index or None, roof) of a new structure."""
        rng = self.rng
        dates = self.window_dates
        k = dates[int(rng.integers(len(dates)))]
        if misfire:
            k = dates[min(1, len(dates) - 1)]
        cleared = k - 1 if k - 1 in dates and rng.random() < self.cleared_fraction else None
        roof = "white_metal" if misfire else ("metal" if rng.random() < 0.45 else "concrete")
        return k, cleared, roof

    def _existing_roof(self, misfire: bool) -> str:
        r = self.rng.random()
        if misfire:
            return "white_metal"
        return "concrete" if r < 0.6 else "metal" if r < 0.9 else "dark_roof"

    def _building(
        self,
        kind: str,
        index: int,
        spot: tuple[float, float, float],
        half: tuple[float, float],
        *,
        misfire: bool,
        bermed: bool,
        berm: tuple[float, float],
    ) -> SynthBuilding:
        """The building at `spot`: its dates and roof (new) or roof (existing), then height."""
        cy, cx, ang = spot
        dist, bwidth = berm  # distance and width of the berm, pixels
        if kind == "building":
            k, cleared, roof = self._schedule_new(misfire)
        else:
            k, cleared, roof = None, None, self._existing_roof(misfire)
        height = float(self.rng.uniform(5.0, 12.0))
        prefix = "new" if kind == "building" else "existing"
        return SynthBuilding(
            id=f"{self.id_prefix}-{prefix}-{index:03d}",
            kind=kind,
            center=(round(cy, 4), round(cx, 4)),
            half=(round(half[0], 4), round(half[1], 4)),
            angle_deg=round(ang, 4),
            roof=roof,
            height_m=round(height, 2),
            appear_index=k,
            clear_index=cleared,
            bermed=bermed,
            berm_distance_px=round(dist, 4),
            berm_width_px=round(bwidth, 4),
            scl_misfire=misfire,
            roof_patch=coverage_rect((cy, cx), half, ang),
            pad_patch=coverage_rect((cy, cx), (half[0] + 1.0, half[1] + 1.0), ang),
            berm_patch=_ring((cy, cx), half, ang, dist, bwidth) if bermed else None,
        )


def _place_buildings(
    placer: _Placer, *, n_existing: int, n_new: int, bermed_fraction: float, new_misfire: bool
) -> list[SynthBuilding]:
    """Existing buildings first (incl. the white roof SCL calls cloud), then the new ones."""
    rng = placer.rng
    if n_existing > 0:
        for isolated in (False, True):
            if placer.place("existing", 1, misfire=True, isolated=isolated, bermed=False):
                break
    for i in range(2, n_existing + 1):
        placer.place("existing", i, misfire=False, isolated=False, bermed=bool(rng.random() < 0.3))
    # An exact share of bermed new structures, in random order.
    n_bermed = round(bermed_fraction * n_new)
    berm_order = rng.permutation(np.arange(n_new) < n_bermed)
    placed = 0
    for i in range(n_new):
        if not placer.window_dates:
            break
        isolated = bool(rng.random() < 0.15)
        misfire = new_misfire and i == 0
        bermed = bool(berm_order[i]) and not misfire
        for iso in (isolated, True) if not isolated else (True,):
            if placer.place("building", placed + 1, misfire=misfire, isolated=iso, bermed=bermed):
                placed += 1
                break
    return placer.buildings


def _level_sites(
    dem: np.ndarray, buildings: list[SynthBuilding], graded: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(site, dem): the ground under isolated structures is levelled too (sites are graded
    before building)."""
    site = np.zeros(dem.shape)
    for bld in buildings:
        grown = (bld.half[0] + 4, bld.half[1] + 4)
        _paste(site, *coverage_rect(bld.center, grown, bld.angle_deg, ss=1))
    site = ndimage.gaussian_filter(site, 2.0) * (1.0 - graded)
    dem = dem * (1.0 - site) + ndimage.gaussian_filter(dem, 12.0) * site
    return site, dem


def _valley_floor(dem: np.ndarray) -> np.ndarray:
    """0..1: 1 on the lowest 5 % of the ground, fading out at the 35 % quantile."""
    low = np.quantile(dem, 0.35)
    lower = np.quantile(dem, 0.05)
    return np.clip((low - dem) / (low - lower + 1e-9), 0.0, 1.0)


def _free_ground(graded: np.ndarray, site: np.ndarray, roads: np.ndarray) -> np.ndarray:
    """0..1: 1 away from compounds, building sites and roads."""
    return 1.0 - np.clip(graded * 2.0 + site * 2.0 + ndimage.gaussian_filter(roads, 1.0), 0.0, 1.0)


def _pond(
    rng: np.random.Generator,
    shape: tuple[int, int],
    valley: np.ndarray,
    free: np.ndarray,
    occupied: np.ndarray,
) -> np.ndarray | None:
    """Water coverage of a small pond on free valley floor in the west, or None if none fits."""
    H, W = shape
    Hc, Wc = valley.shape
    cand = np.argwhere((valley > 0.7) & (free > 0.95) & ~occupied)
    cand = cand[
        (cand[:, 0] > PAD + 10)
        & (cand[:, 0] < PAD + H - 10)
        & (cand[:, 1] > PAD + 10)
        & (cand[:, 1] < PAD + W * 0.6)
    ]
    if not len(cand):
        return None
    py, px = cand[int(rng.integers(len(cand)))]
    yy, xx = np.mgrid[0:Hc, 0:Wc]
    return np.clip(3.0 - np.hypot((yy - py) / 2.5, (xx - px) / 4.0) * 3.0, 0.0, 1.0)


def build_scene(
    *,
    shape: tuple[int, int],
    plans: list[AcquisitionPlan] | tuple[AcquisitionPlan, ...],
    seed: int,
    lon: float,
    lat: float,
    n_new: int,
    n_existing: int,
    n_compounds: int,
    expansion: tuple[date, date],
    bermed_fraction: float = 0.6,
    cleared_fraction: float = 0.4,
    pond: bool = False,
    new_misfire: bool = False,
    id_prefix: str = "synth",
) -> SynthScene:
    """Lay out terrain, compounds, roads and buildings. Places up to `n_new` new structures (fewer
    only if the window is too small); new ones appear on plan dates inside `expansion`."""
    H, W = shape
    canvas = (H + 2 * PAD, W + 2 * PAD)
    dem, rock, texture = _terrain(seed, canvas)
    compounds = _place_compounds(_layout_rng(seed, 4), shape, n_compounds)
    graded, dem, soil = _grade_compounds(compounds, dem, rock, texture)
    roads = _lay_roads(_layout_rng(seed, 5), compounds, canvas)
    placer = _Placer(
        _layout_rng(seed, 6),
        shape,
        compounds,
        occupied=ndimage.binary_dilation(roads > 0.05, iterations=2),
        window_dates=[i for i, p in enumerate(plans) if expansion[0] <= p.day <= expansion[1]],
        cleared_fraction=cleared_fraction,
        id_prefix=id_prefix,
    )
    buildings = _place_buildings(
        placer,
        n_existing=n_existing,
        n_new=n_new,
        bermed_fraction=bermed_fraction,
        new_misfire=new_misfire,
    )
    site, dem = _level_sites(dem, buildings, graded)

    valley, free = _valley_floor(dem), _free_ground(graded, site, roads)
    patchy = np.clip(0.6 + 0.5 * fractal_noise(_layout_rng(seed, 7), canvas, 2.0), 0.0, 1.0)
    vegetation = 0.6 * valley * patchy * free  # low ground away from works and roads, patchy

    water = _pond(_layout_rng(seed, 8), shape, valley, free, placer.occupied) if pond else None
    if water is None:
        water = np.zeros(canvas)
    else:
        vegetation *= 1.0 - np.clip(water * 3.0, 0.0, 1.0)
    wet_pattern = np.clip(0.6 + 0.4 * fractal_noise(_layout_rng(seed, 9), canvas, 3.0), 0.0, 1.0)
    return SynthScene(
        shape=(H, W),
        seed=seed,
        plans=tuple(plans),
        lon=lon,
        lat=lat,
        dem=dem,
        soil=soil,
        vegetation=vegetation,
        roads=roads,
        water=water,
        wet_pattern=wet_pattern,
        buildings=tuple(buildings),
        compounds=tuple(compounds),
    )


# ----------------------------------------------------------------------------- rendering one date


@dataclass(frozen=True)
class Rendered:
    """One rendered date on the window. Reflectance is BOA (before DN conversion)."""

    refl10: np.ndarray  # (4, H, W) blue, green, red, nir
    refl20: np.ndarray  # (2, H/2, W/2) swir16, swir22
    scl: np.ndarray  # (H/2, W/2) uint8
    cloud: np.ndarray  # (H, W) cloud opacity alpha 0..1
    shadow: np.ndarray  # (H, W) cloud-shadow strength 0..1
    cirrus: np.ndarray  # (H, W) cirrus amount
    valid10: np.ndarray  # (H, W) bool, False in the swath-edge no-data wedge
    valid20: np.ndarray  # (H/2, W/2) bool
    sun_azimuth: float
    sun_elevation: float


def _hillshade_factor(dem: np.ndarray, az: float, el: float) -> np.ndarray:
    """Terrain illumination relative to flat ground (Lambert, softened for diffuse light)."""
    drow, dcol = np.gradient(dem, 10.0)
    gx, gy = dcol, -drow  # slopes towards east and north
    norm = np.sqrt(gx * gx + gy * gy + 1.0)
    a, e = math.radians(az), math.radians(el)
    sx, sy, sz = math.sin(a) * math.cos(e), math.cos(a) * math.cos(e), math.sin(e)
    cos_i = np.maximum((-gx * sx - gy * sy + sz) / norm, 0.0)
    factor = 1.0 + 0.8 * (cos_i / sz - 1.0)
    return np.clip(factor, 0.25, 1.8)


def _shift_blur(band: np.ndarray, shift: tuple[float, float], sigma: float) -> np.ndarray:
    """Fourier shift by (row, col) pixels with a Gaussian PSF of `sigma` pixels."""
    h, w = band.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx * fx + fy * fy))
    transfer = transfer * np.exp(-2j * np.pi * (fy * shift[0] + fx * shift[1]))
    return np.fft.irfft2(np.fft.rfft2(band) * transfer, s=(h, w))


def _valid_mask(shape: tuple[int, int], res_factor: int, edge: bool) -> np.ndarray:
    """True where the sensor has data; a swath edge cuts an eastern wedge, tilted like the track."""
    h, w = shape
    if not edge:
        return np.ones(shape, dtype=bool)
    rows = (np.arange(h)[:, None] + 0.5) * res_factor
    cols = (np.arange(w)[None, :] + 0.5) * res_factor
    full_h, full_w = h * res_factor, w * res_factor
    return cols < 0.8 * full_w + 0.21 * (rows - full_h / 2.0)


def _ground(
    scene: SynthScene, plan: AcquisitionPlan, az: float, el: float
) -> tuple[np.ndarray, np.ndarray]:
    """(surface (B, Hc, Wc), hillshade factor): soil, seasonal vegetation, roads and water under
    the date's sun, darkened after rain."""
    surf = scene.soil.copy()
    green = scene.vegetation * _season(plan.day)
    _blend(surf, "vegetation", green)
    _blend(surf, "gravel_road", scene.roads)
    _blend(surf, "water", scene.water)
    hill = _hillshade_factor(scene.dem, az, el)
    surf *= hill * (1.0 - 0.12 * plan.wetness * scene.wet_pattern)
    return surf, hill


def _paint_buildings(surf: np.ndarray, scene: SynthScene, t: int, az: float, el: float) -> None:
    """Works and buildings present on date `t` (flat, so no terrain shading), in place."""
    canvas = scene.canvas_shape
    zen = math.radians(90.0 - el)
    for b in scene.buildings:
        if b.ground_works(t) and b.pad_patch is not None and b.kind == "building":
            _blend(surf, "cleared_ground", _full(canvas, *b.pad_patch))
        if b.ground_works(t) and b.berm_patch is not None:
            _blend(surf, "disturbed_soil", _full(canvas, *b.berm_patch))
        if b.present(t):
            _paint_roof(surf, b, canvas, az, zen)


def _paint_roof(
    surf: np.ndarray, b: SynthBuilding, canvas: tuple[int, int], az: float, zen: float
) -> None:
    """A roof and its shadow: the roof swept away from the sun by height * tan(zenith)."""
    length = b.height_m * math.tan(zen) / 10.0
    dcol, drow = -math.sin(math.radians(az)) * length, math.cos(math.radians(az)) * length
    shade = np.zeros(canvas)
    for f in (0.5, 1.0):
        r0, c0, patch = coverage_rect(
            (b.center[0] + f * drow, b.center[1] + f * dcol), b.half, b.angle_deg
        )
        _paste(shade, r0, c0, patch)
    roof = _full(canvas, *b.roof_patch)
    shade = np.clip(shade - roof, 0.0, 1.0)
    surf *= 1.0 - 0.55 * shade
    _blend(surf, b.roof, roof)


def _clouds(
    rng: np.random.Generator, plan: AcquisitionPlan, shape: tuple[int, int], az: float, el: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cloud opacity, cloud shadow, cirrus) on the window. Clouds are drawn on a canvas wide
    enough that shadows of clouds outside the window can fall inside."""
    H, W = shape
    # A sun at or below the horizon casts no finite shadow: 5° (long shadows) at the least.
    reach = plan.cloud_height_m * math.tan(math.radians(90.0 - max(el, 5.0))) / 10.0
    s_col = -math.sin(math.radians(az)) * reach
    s_row = math.cos(math.radians(az)) * reach
    m = math.ceil(reach) + 2
    cloud = np.zeros((H, W))
    shadow = np.zeros((H, W))
    if plan.cloud_cover > 0:
        big = fractal_noise(rng, (H + 2 * m, W + 2 * m), 3.6)
        inner = big[m : m + H, m : m + W]
        thr = float(np.quantile(inner, 1.0 - plan.cloud_cover))
        alpha = np.clip((big - thr) / 0.35 + 0.5, 0.0, 1.0) ** 0.8
        cloud = alpha[m : m + H, m : m + W]
        r0, c0 = m - round(s_row), m - round(s_col)
        shadow = alpha[r0 : r0 + H, c0 : c0 + W]
    cirrus = np.zeros((H, W))
    if plan.cirrus:
        cirrus = 0.12 * np.clip(fractal_noise(rng, (H, W), 3.0) - 0.3, 0.0, 1.5) / 1.5
    return cloud, shadow, cirrus


def _with_noise(rng: np.random.Generator, win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(10 m bands, 20 m bands) with sensor noise: a floor plus a signal-dependent part."""
    refl10 = win[:4] + rng.standard_normal(win[:4].shape) * (0.0015 + 0.006 * np.abs(win[:4]))
    r20 = block_mean(win[4:])
    refl20 = r20 + rng.standard_normal(r20.shape) * (0.0015 + 0.006 * np.abs(r20))
    return refl10, refl20


def render(scene: SynthScene, t: int) -> Rendered:
    """Render acquisition `t` of `scene` (deterministic for a given scene, seed and t)."""
    plan = scene.plans[t]
    rng = np.random.default_rng([scene.seed, 2000 + t])
    H, W = scene.shape
    az, el = sun_position(plan.when, scene.lon, scene.lat)
    surf, hill = _ground(scene, plan, az, el)
    _paint_buildings(surf, scene, t, az, el)

    # Misregistration and the sensor PSF, then crop the window; the date's radiometric drift.
    shifted = np.stack([_shift_blur(surf[i], plan.shift_px, 0.45) for i in range(len(BANDS))])
    win = shifted[:, PAD : PAD + H, PAD : PAD + W]
    win = win * np.array(plan.gain)[:, None, None] + np.array(plan.offset)[:, None, None]

    cloud, shadow, cirrus = _clouds(rng, plan, (H, W), az, el)
    win = win * (1.0 - 0.62 * shadow * (1.0 - cloud))
    win = win * (1.0 - cloud) + (_spec("cloud") * float(rng.uniform(0.85, 1.1))) * cloud
    win = win + _CIRRUS[:, None, None] * cirrus
    refl10, refl20 = _with_noise(rng, win)

    valid10 = _valid_mask((H, W), 1, plan.nodata_edge)
    valid20 = _valid_mask((H // 2, W // 2), 2, plan.nodata_edge)
    scl = _scl(scene, t, win, cloud, shadow, cirrus, hill, valid20)
    return Rendered(
        refl10=refl10.astype(np.float32),
        refl20=refl20.astype(np.float32),
        scl=scl,
        cloud=cloud.astype(np.float32),
        shadow=shadow.astype(np.float32),
        cirrus=cirrus.astype(np.float32),
        valid10=valid10,
        valid20=valid20,
        sun_azimuth=az,
        sun_elevation=el,
    )


def _scl(
    scene: SynthScene,
    t: int,
    win: np.ndarray,
    cloud: np.ndarray,
    shadow: np.ndarray,
    cirrus: np.ndarray,
    hill: np.ndarray,
    valid20: np.ndarray,
) -> np.ndarray:
    """Emulate Sen2Cor's 20 m scene classification from the rendered fields.

    Clouds above alpha 0.5 are 9, 0.2..0.5 are 8, faint edges 0.08..0.2 slip through as 7
    (unclassified, as Sen2Cor often does); shadows 3; cirrus 10; vegetation 4; water 6; dark
    terrain 2; the rest 5. Roofs flagged `scl_misfire` are called cloud on every date — the
    brightness-test failure that real SCL shows on white roofs.
    """
    H, W = scene.shape
    h2, w2 = H // 2, W // 2
    a20 = block_mean(cloud)
    s20 = block_mean(shadow * (1.0 - cloud))
    c20 = block_mean(cirrus)
    red, nir = block_mean(win[2]), block_mean(win[3])
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    crop = (slice(PAD, PAD + H), slice(PAD, PAD + W))
    hill20 = block_mean(hill[crop])
    water20 = block_mean(scene.water[crop])
    scl = np.full((h2, w2), 5, dtype=np.uint8)
    scl[ndvi >= 0.3] = 4
    scl[hill20 < 0.45] = 2
    scl[water20 >= 0.5] = 6
    scl[(a20 >= 0.08) & (a20 < 0.2)] = 7
    scl[(c20 >= 0.03) & (a20 < 0.2)] = 10
    scl[(s20 >= 0.25) & (a20 < 0.2)] = 3
    scl[(a20 >= 0.2) & (a20 < 0.5)] = 8
    scl[a20 >= 0.5] = 9
    for b in scene.buildings:
        if b.scl_misfire and b.present(t):
            roof20 = block_mean(_full(scene.canvas_shape, *b.roof_patch)[crop])
            scl[roof20 >= 0.5] = 9 if t % 2 == 0 else 8
    scl[~valid20] = 0
    return scl[:h2, :w2]


def first_clear_index(scene: SynthScene, b: SynthBuilding, clear10: list[np.ndarray]) -> int | None:
    """First date from the building's appearance on which most of its roof pixels are clear.

    `clear10[t]` is the (H, W) clear mask of date t (valid, not cloud/shadow by SCL)."""
    if b.appear_index is None:
        return None
    roof = _full(scene.canvas_shape, *b.roof_patch)[
        PAD : PAD + scene.shape[0], PAD : PAD + scene.shape[1]
    ]
    core = roof >= 0.5
    if not core.any():
        core = roof >= roof.max() * 0.5
    for t in range(b.appear_index, len(clear10)):
        if clear10[t][core].mean() >= 0.5:
            return t
    return None


def to_dn(reflectance: np.ndarray, valid: np.ndarray, *, add_offset: bool = True) -> np.ndarray:
    """BOA reflectance → L2A uint16 DN with the baseline >= 04.00 convention (DN = 10000·ρ + 1000),
    or without the offset (`add_offset=False`: DN = 10000·ρ, as Earth Search's harmonised files);
    0 is nodata, so valid pixels are clipped to at least 1."""
    dn = np.rint(reflectance.astype(np.float64) * 10000.0 + (1000.0 if add_offset else 0.0))
    dn = np.clip(dn, 1, 65535).astype(np.uint16)
    dn[..., ~valid] = 0
    return dn
