"""OSCD (Onera Satellite Change Detection) reading and the evaluation driver (`lab.score` scores).

This module is the OSCD data boundary (it reads the dataset's GeoTIFFs with rasterio itself).
The original layout is read as distributed:

    <root>/Onera Satellite Change Detection dataset - Images/<city>/imgs_1/*_B02.tif ...
    <root>/Onera Satellite Change Detection dataset - Images/<city>/dates.txt
    <root>/Onera Satellite Change Detection dataset - Train Labels/<city>/cm/<city>-cm.tif

Bands are L1C top-of-atmosphere reflectance x 10000 in EPSG:4326; every band of both dates is
resampled onto the grid of that city's `imgs_1` B02 band. Labels (1 = no change, 2 = change) have
no georeferencing and align pixel-for-pixel with `imgs_1` B02.

`evaluate` predicts from `load_city(..., with_label=False)` data only and reads the labels
afterwards, for scoring: labels never reach the detector.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from changedet.config import SENTINEL2_BAND_IDS, ChangeConfig
from changedet.errors import DataError
from changedet.lab.score import CityScore, pool_city_scores, score_prediction
from changedet.models import ChangeMap, Composite, Grid, Period, Progress, no_progress
from changedet.read.cog import reproject_array

__all__ = [
    "OSCD_BANDS",
    "EvalReport",
    "OSCDCity",
    "city_composites",
    "evaluate",
    "labelled_cities",
    "list_cities",
    "load_city",
    "load_label",
    "predict_city",
]

IMAGES_DIR = "Onera Satellite Change Detection dataset - Images"
LABELS_DIR = "Onera Satellite Change Detection dataset - Train Labels"

# Canonical band name -> Sentinel-2 band id in the OSCD file names (..._B02.tif): all 13 bands.
OSCD_BANDS: dict[str, str] = dict(SENTINEL2_BAND_IDS)


@dataclass(frozen=True)
class OSCDCity:
    """One OSCD city: both dates on the `imgs_1` B02 grid.

    before/after: (B, H, W) float32 TOA reflectance (0..1+), NaN where the file holds 0 (no data);
    label: (H, W) bool change mask, or None when not requested or not present.
    """

    name: str
    grid: Grid
    bands: tuple[str, ...]
    before: np.ndarray
    after: np.ndarray
    label: np.ndarray | None
    dates: tuple[date, date]


@dataclass(frozen=True)
class EvalReport:
    cities: tuple[CityScore, ...]
    pooled: CityScore


def _images_dir(root: Path) -> Path:
    """Accept the folder holding the two OSCD folders, or the Images folder itself."""
    root = Path(root)
    if (root / IMAGES_DIR).is_dir():
        return root / IMAGES_DIR
    if root.name == IMAGES_DIR and root.is_dir():
        return root
    raise DataError(
        f"'{root}' has no '{IMAGES_DIR}' folder; pass --root the folder that holds the OSCD download"
    )


def _labels_dir(root: Path) -> Path:
    root = Path(root)
    if root.name == IMAGES_DIR:
        root = root.parent
    return root / LABELS_DIR


def list_cities(root: Path) -> list[str]:
    """Names of the cities under `root` that have both `imgs_1` and `imgs_2`, sorted."""
    images = _images_dir(root)
    return sorted(
        p.name for p in images.iterdir() if (p / "imgs_1").is_dir() and (p / "imgs_2").is_dir()
    )


def labelled_cities(root: Path) -> list[str]:
    """The cities of `list_cities` whose change label is present under `root`, sorted."""
    return [
        c for c in list_cities(root) if (_labels_dir(root) / c / "cm" / f"{c}-cm.tif").is_file()
    ]


def _band_file(folder: Path, band_id: str) -> Path:
    hits = sorted(folder.glob(f"*_{band_id}.tif"))
    if not hits:
        raise DataError(f"no *_{band_id}.tif in '{folder}'; the OSCD city folder is incomplete")
    return hits[0]


def _read_dates(city_dir: Path) -> tuple[date, date]:
    path = city_dir / "dates.txt"
    found: dict[str, date] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise DataError(f"cannot read '{path}'; the OSCD city folder is incomplete") from None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key.strip() in ("date_1", "date_2") and len(value) == 8 and value.isdigit():
            found[key.strip()] = date(int(value[:4]), int(value[4:6]), int(value[6:]))
    if len(found) != 2:
        raise DataError(f"'{path}' must hold 'date_1: YYYYMMDD' and 'date_2: YYYYMMDD' lines")
    return found["date_1"], found["date_2"]


def _read_date_stack(
    folder: Path, bands: Sequence[str], grid: Grid | None
) -> tuple[np.ndarray, Grid]:
    """Read `bands` of one date onto `grid` (the B02 grid of this folder when None)."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        if grid is None:
            with rasterio.open(_band_file(folder, "B02")) as src:
                grid = Grid(str(src.crs), src.transform, src.width, src.height)
        out = np.empty((len(bands), grid.height, grid.width), dtype=np.float32)
        for i, name in enumerate(bands):
            with rasterio.open(_band_file(folder, OSCD_BANDS[name])) as src:
                data = src.read(1)
                same = (src.width, src.height) == (grid.width, grid.height) and np.allclose(
                    tuple(src.transform)[:6], tuple(grid.transform)[:6], rtol=0, atol=1e-9
                )
                if same:
                    out[i] = data
                else:
                    # Bilinear for coarser bands and for a second date on a slightly different grid;
                    # 0 is the no-data value of the uint16 files.
                    src_grid = Grid(str(src.crs), src.transform, src.width, src.height)
                    out[i] = reproject_array(
                        data.astype(np.float32), src_grid, grid, nearest=False, nodata=0.0
                    )
    except RasterioError as exc:
        raise DataError(f"cannot read OSCD bands in '{folder}': {exc}") from None
    out[out <= 0] = np.nan
    out *= np.float32(1e-4)
    return out, grid


def load_label(root: Path, city: str, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """(H, W) bool change label of `city` (value 2), or None when the label file is absent."""
    import rasterio
    import rasterio.errors
    from rasterio.errors import RasterioError

    path = _labels_dir(root) / city / "cm" / f"{city}-cm.tif"
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            # OSCD labels carry no georeferencing by design: they align with imgs_1 B02 by shape.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                raw = src.read(1)
    except RasterioError as exc:
        raise DataError(f"cannot read label '{path}': {exc}") from None
    values = set(np.unique(raw).tolist())
    if not values <= {1, 2}:
        raise DataError(f"label '{path}' holds values {sorted(values)}; expected 1 (no change) / 2")
    if shape is not None and raw.shape != shape:
        raise DataError(f"label '{path}' is {raw.shape}, but imgs_1 B02 is {shape}")
    return raw == 2


def load_city(
    root: Path,
    city: str,
    *,
    with_label: bool = True,
    bands: Sequence[str] | None = None,
) -> OSCDCity:
    """Read one OSCD city: all (or `bands`) bands of both dates on the `imgs_1` B02 grid."""
    city_dir = _images_dir(root) / city
    if not (city_dir / "imgs_1").is_dir() or not (city_dir / "imgs_2").is_dir():
        known = ", ".join(list_cities(root))
        raise DataError(f"OSCD city '{city}' not found under '{root}'; known cities: {known}")
    names = tuple(bands) if bands is not None else tuple(OSCD_BANDS)
    unknown = [b for b in names if b not in OSCD_BANDS]
    if unknown:
        raise DataError(f"unknown OSCD band(s) {unknown}; use names from {list(OSCD_BANDS)}")
    before, grid = _read_date_stack(city_dir / "imgs_1", names, None)
    after, _ = _read_date_stack(city_dir / "imgs_2", names, grid)
    label = load_label(root, city, grid.shape) if with_label else None
    return OSCDCity(
        name=city,
        grid=grid,
        bands=names,
        before=before,
        after=after,
        label=label,
        dates=_read_dates(city_dir),
    )


def _date_composite(city: OSCDCity, which: int) -> Composite:
    """One OSCD date as a single-observation composite (count 1 where observed)."""
    day = city.dates[which]
    image = city.before if which == 0 else city.after
    observed = np.isfinite(image).all(axis=0)
    epoch_days = (day - date(1970, 1, 1)).days
    return Composite(
        grid=city.grid,
        bands=city.bands,
        period=Period(day, date.fromordinal(day.toordinal() + 1), day.isoformat()),
        reflectance=image,
        count=observed.astype(np.uint16),
        source_date=np.where(observed, epoch_days, -1).astype(np.int32),
        scene_ids=(f"oscd:{city.name}:{day.isoformat()}",),
    )


def city_composites(city: OSCDCity) -> tuple[Composite, Composite]:
    """(before, after) single-date composites of an OSCD city, for `detect_change`."""
    return _date_composite(city, 0), _date_composite(city, 1)


def predict_city(city: OSCDCity, config: ChangeConfig) -> ChangeMap:
    """Run the detector on one city with `config`. The city's label is not looked at."""
    from changedet.core.change import detect_change

    unlabelled = OSCDCity(
        city.name, city.grid, city.bands, city.before, city.after, None, city.dates
    )
    before, after = city_composites(unlabelled)
    return detect_change(before, after, config)


def evaluate(
    root: Path,
    out: Path,
    *,
    cities: Sequence[str] | None = None,
    config: ChangeConfig,
    progress: Progress = no_progress,
) -> EvalReport:
    """Run the detector on OSCD cities and score the labelled ones.

    Writes OUT/<city>/change.tif (uint8, 1 = change, 0 = no change) and OUT/<city>/score.tif
    (float32 change score, NaN unobserved) on the city's imgs_1 B02 grid. Prediction uses
    `load_city(..., with_label=False)`; labels are read afterwards, only for scoring.
    Pooled scores sum the confusion counts over the labelled cities.
    """
    known = list_cities(root)
    names = list(cities) if cities else known
    missing = [c for c in names if c not in known]
    if missing:
        raise DataError(
            f"OSCD cities {missing} not found under '{root}'; known: {', '.join(known)}"
        )
    scores: list[CityScore] = []
    for done, name in enumerate(names):
        progress("oscd", done, len(names))
        start = time.perf_counter()
        city = load_city(root, name, with_label=False)
        change = predict_city(city, config)
        seconds = time.perf_counter() - start
        _write_prediction(Path(out) / name, change, city.grid, config)
        label = load_label(root, name, city.grid.shape)  # only now, for scoring
        scores.append(score_prediction(name, change.mask, label, seconds))
    progress("oscd", len(names), len(names))
    return EvalReport(tuple(scores), pool_city_scores(scores))


def _write_prediction(city_out: Path, change: ChangeMap, grid: Grid, config: ChangeConfig) -> None:
    """OUT/<city>/change.tif and score.tif, tagged with the settings that made them."""
    from changedet.outputs.fsio import write_cog

    tags = {
        "min_mapping_unit_m2": f"{config.min_area_m2:g}",
        "shift_px": f"{change.shift_px[0]:.3f},{change.shift_px[1]:.3f}",
        "shift_corrected": str(change.shift_corrected).lower(),
        "threshold_z": f"{change.threshold:g}",
    }
    write_cog(city_out / "change.tif", change.mask.astype(np.uint8), grid, tags=tags)
    write_cog(
        city_out / "score.tif",
        change.score.astype(np.float32),
        grid,
        nodata=float("nan"),
        tags=tags,
    )
