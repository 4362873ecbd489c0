"""Frozen data objects that flow between stages. No I/O here.

Every array travels with its `Grid`, so no stage has to guess where a pixel is.
Conventions:
- reflectance arrays are float32 surface reflectance (0..1+), invalid pixels are NaN;
- band axis order follows the `bands` tuple of the object that carries the array;
- times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol, overload

import numpy as np
from affine import Affine

__all__ = [
    "AOI",
    "FALSE_POSITIVE",
    "REVIEW_VERDICTS",
    "Asset",
    "Berm",
    "ChangeMap",
    "ChangeObject",
    "Composite",
    "Composites",
    "Coverage",
    "DateSeries",
    "EvidenceImage",
    "Grid",
    "Period",
    "PeriodCount",
    "PeriodCoverage",
    "Probe",
    "Progress",
    "ReadResult",
    "RunResult",
    "Scene",
    "SearchResult",
    "SkippedScene",
    "Spill",
    "SpilledArray",
    "Stack",
    "Structure",
    "StructureEvidence",
    "no_progress",
]


# The verdicts an analyst can give a structure (`changedet review`).
FALSE_POSITIVE = "false-positive"
REVIEW_VERDICTS = ("confirmed", FALSE_POSITIVE, "unsure")

# Progress callback: (stage name, items done, items total). Library code reports, the CLI renders.
Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """Default progress callback: ignore."""


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS, affine transform (pixel corner based) and size."""

    crs: str
    transform: Affine
    width: int
    height: int

    @classmethod
    def from_origin(
        cls, crs: str, x_min: float, y_max: float, res: float, width: int, height: int
    ) -> Grid:
        return cls(crs, Affine(res, 0.0, x_min, 0.0, -res, y_max), width, height)

    @property
    def res(self) -> float:
        """Pixel size along x in CRS units (metres on a UTM grid)."""
        return abs(self.transform.a)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max) in CRS units."""
        t = self.transform
        x0, y0 = t.c, t.f
        x1, y1 = t @ (self.width, self.height)
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    @property
    def epsg(self) -> int | None:
        if self.crs.upper().startswith("EPSG:"):
            return int(self.crs.split(":", 1)[1])
        return None

    @property
    def is_projected_metres(self) -> bool:
        """True for UTM-like grids whose units are metres (so areas can be computed from pixels)."""
        code = self.epsg
        return code is not None and (32601 <= code <= 32660 or 32701 <= code <= 32760)

    @property
    def pixel_area_m2(self) -> float:
        """Area of one pixel in m². Only meaningful on a metre grid; approximated on geographic grids."""
        if self.is_projected_metres:
            return abs(self.transform.a * self.transform.e)
        # Geographic degrees: approximate at the grid centre latitude.
        lat = math.radians((self.bounds[1] + self.bounds[3]) / 2.0)
        m_per_deg = 111_320.0
        return abs(self.transform.a * m_per_deg * math.cos(lat) * self.transform.e * m_per_deg)

    def scaled(self, factor: int) -> Grid:
        """The same extent with pixels `factor` times larger (e.g. 2 for the 20 m grid of a 10 m grid)."""
        t = self.transform
        return Grid(
            self.crs,
            Affine(t.a * factor, t.b, t.c, t.d, t.e * factor, t.f),
            math.ceil(self.width / factor),
            math.ceil(self.height / factor),
        )

    def window(self, row_off: int, col_off: int, height: int, width: int) -> Grid:
        """A sub-grid starting at (row_off, col_off)."""
        t = self.transform @ Affine.translation(col_off, row_off)
        return Grid(self.crs, t, width, height)


@dataclass(frozen=True)
class AOI:
    """An area of interest: a polygon in EPSG:4326 with a file-name-safe id."""

    id: str
    name: str
    geometry: Any  # shapely Polygon | MultiPolygon, EPSG:4326 lon/lat
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Asset:
    """One band file of a scene with what turns its digital numbers into reflectance.

    reflectance = DN * scale + offset; DN == nodata is missing. `offset` already encodes the
    processing-baseline 04.00 BOA_ADD_OFFSET (-0.1 in reflectance units) when it applies.
    """

    href: str
    scale: float = 1e-4
    offset: float = 0.0
    nodata: float | None = 0
    # What the item says the file holds (`raster:bands` data_type, `proj:epsg`/`proj:code`),
    # checked when it is opened: a file that disagrees would be scaled or placed wrongly.
    data_type: str | None = None
    epsg: int | None = None


@dataclass(frozen=True)
class Scene:
    """One acquisition on one tile, with assets keyed by canonical band names (blue, red, nir, scl, ...)."""

    id: str
    datetime: datetime
    collection: str
    tile: str | None
    assets: Mapping[str, Asset]
    cloud_cover: float | None = None
    platform: str | None = None
    processing_baseline: str | None = None
    epsg: int | None = None
    footprint: Any = None  # shapely geometry in EPSG:4326, or None when unknown
    updated: str | None = (
        None  # item 'updated'/'created' time, used to prefer the newest reprocessing
    )
    synthetic: bool = False  # the item says it is synthetic ("changedet:synthetic": true)

    @property
    def date(self) -> date:
        return self.datetime.date()


@dataclass(frozen=True)
class SkippedScene:
    """A scene left out of a run, and why (shown in `changedet search` and recorded in run.json)."""

    scene_id: str
    reason: str
    unreadable: bool = False  # its data could not be read (corrupt, missing, refused): a warning


@dataclass(frozen=True)
class Probe:
    """What the SCL window says about one scene inside the AOI."""

    scene_id: str
    clear_fraction: float  # clear AOI pixels / AOI pixels the scene covers with data (NaN unknown)
    coverage: float  # AOI pixels with data / AOI pixels (NaN unknown)
    has_scl: bool
    skip_reason: str | None = None  # why the scene is not used (None: it is used)
    unreadable: bool = False  # the SCL asset could not be read


@dataclass(frozen=True)
class SearchResult:
    """What a catalog search found: usable scenes and everything left out, with why."""

    scenes: tuple[Scene, ...]  # de-duplicated, sorted by (datetime, id)
    dropped: tuple[SkippedScene, ...]  # duplicates, cloud filter, missing assets, unsafe hrefs...
    source: str  # catalog URL / path with any token stripped
    notes: tuple[str, ...] = ()  # e.g. "cloud filter applied client-side: ..."
    items_seen: int = 0  # items the catalog returned for the AOI and dates, before any filter
    # Every item was read: paging reached the last page and no document was unreadable (else a
    # scene it did not return may still be in the catalog)
    complete: bool = True
    # Where and why paging stopped before the last page: scenes are missing from the run
    stopped: str | None = None


@dataclass(frozen=True)
class Stack:
    """A masked, harmonised time series on one grid.

    reflectance: (T, B, H, W) float32, NaN where not clear; clear: (T, H, W) bool.
    scl: (T, H, W) uint8 scene classification when the data had one, else None.
    """

    grid: Grid
    bands: tuple[str, ...]
    times: tuple[datetime, ...]
    scene_ids: tuple[tuple[str, ...], ...]  # per date: the scene ids mosaicked into it
    reflectance: np.ndarray
    clear: np.ndarray
    scl: np.ndarray | None = None

    def band(self, name: str) -> np.ndarray:
        """(T, H, W) view of one band."""
        return self.reflectance[:, self.bands.index(name)]


class DateSeries(Protocol):
    """A masked, harmonised time series read in pieces: what a `Stack` holds, without holding it.

    The streaming detector (`core.stream`) asks for a few rows of many dates, or the whole grid
    of one date, so the series may live on disk (`read.store`) or in memory (`core.stream
    .StackSeries` wraps a `Stack`). Values are reflectance as read (NaN where not clear); the
    clear mask is the reader's (no temporal screening, no co-registration).
    """

    @property
    def grid(self) -> Grid: ...
    @property
    def bands(self) -> tuple[str, ...]: ...
    @property
    def times(self) -> tuple[datetime, ...]: ...
    @property
    def scene_ids(self) -> tuple[tuple[str, ...], ...]: ...

    def pixels(self, dates: Sequence[int], rows: slice, bands: Sequence[int]) -> np.ndarray:
        """(len(dates), len(bands), rows, W) float32 reflectance, a new array."""
        ...

    def clear_rows(self, dates: Sequence[int], rows: slice) -> np.ndarray:
        """(len(dates), rows, W) bool clear mask, a new array."""
        ...

    def fingerprints(self) -> tuple[str, ...]:
        """Per date, a digest of its pixels and clear mask (equal digests, equal dates): what
        the monitor's composite cache keys on. Computed when asked (it reads every date)."""
        ...


@dataclass(frozen=True)
class ReadResult:
    """A masked, harmonised stack and the record of how it was made."""

    stack: Stack | DateSeries  # a DateSeries when the reader streams dates to disk
    skipped: tuple[SkippedScene, ...]
    # scene id -> clear fraction of the window around the AOI (absent when unmeasurable)
    probes: Mapping[str, float]
    bytes_fetched: int  # bytes downloaded over the network by this read (0 from cache/local)
    coverage: Mapping[str, float] = field(default_factory=dict)  # scene id -> AOI share with data
    notes: tuple[str, ...] = ()
    cache_hits: int = 0
    assets_read: int = 0
    # Dates read 0.1 off in every band (a wrong offset flag), corrected or not: what to say
    offsets: tuple[str, ...] = ()
    # Scenes read without an SCL asset (clear = valid data): nothing was masked on them
    unmasked: tuple[str, ...] = ()


@dataclass(frozen=True)
class Period:
    """A half-open date interval [start, end) with a label such as '2023-08'."""

    start: date
    end: date
    label: str

    def contains(self, d: date) -> bool:
        return self.start <= d < self.end


@dataclass(frozen=True)
class Composite:
    """A per-pixel composite of the clear observations in one period.

    reflectance: (B, H, W) float32, NaN where no clear observation;
    count: (H, W) uint16 clear observations; source_date: (H, W) int32 days since 1970-01-01
    of the observation closest to the median (-1 where none).
    made_from: when known, a digest of everything the composite was computed from (the
    monitor's `core.reuse` key, which names its grid): with `grid`, it stands for the pixels in
    the keys of drawings made from the composite. A crop (`core.clip`) keeps it: the crop's
    `grid` says which window of the digested one it holds.
    """

    grid: Grid
    bands: tuple[str, ...]
    period: Period
    reflectance: np.ndarray
    count: np.ndarray
    source_date: np.ndarray
    scene_ids: tuple[str, ...] = ()
    made_from: bytes | None = field(default=None, compare=False)

    def band(self, name: str) -> np.ndarray:
        return self.reflectance[self.bands.index(name)]


class Composites(Sequence[Composite]):
    """A run's period composites, each made when asked for: the pixels of a period the caller
    has let go of do not stay in memory (they lie in a `Spill`), so a history of many periods
    costs memory for the few a stage holds at once, not for all of them. `map` derives another
    sequence (a crop of each) without making any."""

    def __init__(self, n: int, make: Callable[[int], Composite]) -> None:
        self._n, self._make = n, make

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> Composite: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Composite]: ...
    def __getitem__(self, index: int | slice) -> Composite | Sequence[Composite]:
        if isinstance(index, slice):
            return [self[i] for i in range(self._n)[index]]
        if not -self._n <= index < self._n:
            raise IndexError(f"composite {index} of {self._n}")
        return self._make(index % self._n)

    def map(self, change: Callable[[Composite], Composite]) -> Composites:
        return Composites(self._n, lambda i: change(self._make(i)))


class SpilledArray(Protocol):
    """One (..., H, W) array kept out of memory: written a few rows at a time, read back whole
    (`read.store.ArraySpill`)."""

    def write_rows(self, rows: slice, values: np.ndarray) -> None:
        """values: (..., len(rows), W), cast as an assignment casts; any thread may write."""
        ...

    def array(self) -> np.ndarray:
        """The array, read-only; its pixels are in memory only while the caller holds it."""
        ...


class Spill(Protocol):
    """Where the streaming detector keeps its composites out of memory."""

    def reserve(self, shape: tuple[int, ...], dtype: type[np.generic]) -> SpilledArray: ...


@dataclass(frozen=True)
class ChangeMap:
    """Per-pixel change evidence between two composites on one grid.

    score: (H, W) float32 combined change score (robust z units; NaN where unobserved);
    likelihood: (H, W) float32 0..1 "new structure" likelihood; mask: (H, W) bool decided change.
    structure_score / structure_mask: the same with evidence the neighbourhood explains
        (misregistration, resampling, shadow length) damped: what structures are cut from. None
        when the detector ran without the tolerance step (then structures use score / mask).
    indicators: named per-pixel layers that went into the score (for evidence and debugging).
    shift_px: measured (row, col) shift of `after` relative to `before`, before any correction.
    """

    grid: Grid
    score: np.ndarray
    likelihood: np.ndarray
    mask: np.ndarray
    threshold: float  # robust z that seeded the mask
    low_threshold: float = 3.0  # robust z the seeded regions grew down to (hysteresis)
    indicators: Mapping[str, np.ndarray] = field(default_factory=dict)
    shift_px: tuple[float, float] = (0.0, 0.0)
    shift_corrected: bool = False
    structure_score: np.ndarray | None = None
    structure_mask: np.ndarray | None = None
    structure_threshold: float | None = None  # robust z that seeded the structure mask
    structure_low_threshold: float | None = None  # robust z the structure mask grew down to
    # (B, H, W) int8: each band's change in eighths of its noise (`core.change.band_change_codes`),
    # what the tracker tells a faint structure's lasting change from noise by; None when unscored.
    band_change: np.ndarray | None = None

    @property
    def structures(self) -> tuple[np.ndarray, np.ndarray]:
        """(score, mask) that structures are cut from."""
        if self.structure_score is None or self.structure_mask is None:
            return self.score, self.mask
        return self.structure_score, self.structure_mask

    @property
    def structure_low(self) -> float:
        """The robust z the structure mask was grown down to."""
        if self.structure_mask is None or self.structure_low_threshold is None:
            return self.low_threshold
        return self.structure_low_threshold

    @property
    def structure_seed(self) -> float:
        """The robust z the structure mask was seeded at."""
        if self.structure_mask is None or self.structure_threshold is None:
            return self.threshold
        return self.structure_threshold


@dataclass(frozen=True)
class ChangeObject:
    """A connected change region. `geometry` is in the grid CRS (metres on UTM grids)."""

    label: int
    geometry: Any  # shapely Polygon | MultiPolygon
    area_m2: float
    n_pixels: int
    confidence: float  # 0..1
    mean_score: float
    likelihood: float
    evidence: Mapping[str, float] = field(default_factory=dict)  # mean indicator values (kinds)


@dataclass(frozen=True)
class Structure:
    """A tracked new structure in the ledger. `geometry` is in the grid CRS.

    first_seen_start..first_seen_end bracket the appearance: the last clear period where it was
    absent (start date of that period) and the first period where it was present (end date).
    """

    id: str
    geometry: Any
    area_m2: float
    confidence: float
    first_seen_start: date | None = None
    first_seen_end: date | None = None
    confirmed: bool = False
    n_clear_obs: int = 0
    bermed: bool | None = None
    berm_score: float | None = None
    source_scenes: tuple[str, ...] = ()
    status: str = "active"  # "active" | "vanished" | "dropped"
    vanished_after: date | None = None
    # What the spectra say it is: "building", "ground works" (pads, cuts, berms) or "other".
    kind: str = "building"
    # The evidence behind `kind`: median over its periods of the spectral flattening, bare-soil
    # and brightness gains and vegetation loss, plus its width and length in pixels.
    evidence: Mapping[str, float] = field(default_factory=dict)
    # The analyst's verdict (`changedet review`): "confirmed" | "false-positive" | "unsure", or
    # None when not reviewed. A false positive stays in the outputs and leaves every count.
    review: str | None = None
    review_note: str | None = None
    # A confirmed structure still "active" that was absent in the latest clear periods, one
    # short of `track.vanish_after_absent` in a row (at least one): the first day of the first
    # of them; None otherwise (seen, or still faint, since; or not active).
    absent_since: date | None = None


@dataclass(frozen=True)
class Berm:
    """A berm-like earthwork line. `geometry` is a LineString/MultiLineString in the grid CRS."""

    id: str
    geometry: Any
    length_m: float
    score: float
    structure_id: str | None = None


@dataclass(frozen=True)
class PeriodCount:
    """Confirmed new structures per period, with a range for what the data cannot pin down;
    all kinds, and new buildings alone (`core.counts` says how the ranges are made)."""

    period: Period
    new_confirmed: int
    cumulative: int
    cumulative_low: int
    cumulative_high: int
    clear_fraction: float  # share of AOI pixels with a clear observation in this period
    buildings_new: int = 0
    buildings: int = 0
    buildings_low: int = 0
    buildings_high: int = 0


@dataclass(frozen=True)
class PeriodCoverage:
    """How much of the AOI one period saw clearly."""

    label: str
    clear_km2: float  # AOI area with a clear observation in the period
    share: float  # clear_km2 / the AOI's area (0..1)


@dataclass(frozen=True)
class Coverage:
    """Where a run could see: the AOI's area against the part of it actually analysed.

    analysed: (H, W) bool on `grid`, AOI pixels with a clear baseline and at least one clear
    later observation (where a new structure could have been found at all). The AOI's area is
    its polygon's, not the grid's: pixels the grid or the scenes do not reach count as missed.
    """

    grid: Grid
    analysed: np.ndarray
    aoi_km2: float
    analysed_km2: float
    periods: tuple[PeriodCoverage, ...] = ()
    warn_below: float = 0.9  # `[output] coverage_warning`: a share under this is warned about

    @property
    def share(self) -> float:
        """Analysed share of the AOI (0..1)."""
        return min(1.0, self.analysed_km2 / self.aoi_km2) if self.aoi_km2 > 0 else 0.0

    @property
    def is_partial(self) -> bool:
        """True when the analysed share is below the warning share."""
        return self.share < self.warn_below


@dataclass(frozen=True)
class EvidenceImage:
    """One side of a structure's evidence: a true-colour window and when it was seen.

    rgb: (3, h, w) float32 reflectance of red, green, blue on the evidence window (NaN where not
    clear or off the grid). `when` is the acquisition date, None for a composite.
    """

    rgb: np.ndarray
    label: str  # "2023-08-26" for an acquisition, "composite 2023-08" for a composite
    when: date | None
    source: str  # "acquisition" | "composite"
    scene_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class StructureEvidence:
    """Dated before/after pictures of one structure on a window of the run grid (which may
    reach beyond the grid's edge)."""

    structure_id: str
    window: Grid
    before: EvidenceImage
    after: EvidenceImage


@dataclass(frozen=True)
class RunResult:
    """Everything one AOI run produced; `outputs` turns it into files."""

    aoi: AOI
    grid: Grid
    config_fingerprint: str
    scenes_used: tuple[Scene, ...]
    scenes_skipped: tuple[SkippedScene, ...]
    before: Composite
    after: Composite
    change: ChangeMap
    structures: tuple[Structure, ...]
    min_mapping_unit_m2: float
    berms: tuple[Berm, ...] = ()
    counts: tuple[PeriodCount, ...] = ()
    composites: Sequence[Composite] = ()  # per period (a `Composites`: made when asked for)
    timings: Mapping[str, float] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    coverage: Coverage | None = None  # analysed area against the AOI's (None: not measured)
    evidence: tuple[StructureEvidence, ...] = ()  # dated before/after windows per structure
    config: Mapping[str, Any] = field(default_factory=dict)  # the effective config, as plain data

    @property
    def synthetic(self) -> bool:
        """The run read generated data (items marked `changedet:synthetic`): its outputs say so."""
        return bool(self.provenance.get("synthetic", False))
