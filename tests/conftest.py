"""Shared fixtures: factories for the objects tests build (grids, stacks, composites, AOIs, a
fully known RunResult) and the in-memory pipeline I/O (`changedet.lab.fakes`).

Each factory fixture returns a plain function, so a test builds as many objects as it needs:
`def test_x(make_stack): stack = make_stack(dates=..., squares=...)`. Test modules get shared
code only from here (as fixtures) or from `changedet.*`; they never import each other.
Tests needing ../shared/data skip cleanly when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from scipy import ndimage as ndi
from shapely.geometry import LineString, Point, Polygon, box

from changedet.aoi import aoi_mask, reproject_geometry, utm_epsg
from changedet.config import load_config, to_dict
from changedet.core.coverage import measure_coverage
from changedet.lab.fakes import (
    FakeCatalog,
    FakeProber,
    MemoryWriter,
    StackReader,
    scenes_for_stack,
)
from changedet.models import (
    AOI,
    Berm,
    ChangeMap,
    Composite,
    Grid,
    Period,
    PeriodCount,
    RunResult,
    Scene,
    SkippedScene,
    Stack,
    Structure,
)
from changedet.pipeline import PipelineIO

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHANGEDET_SHARED_DATA", REPO.parent / "shared" / "data"))
OSCD_ROOT = SHARED_DATA / "oscd"
OSCD_IMAGES = OSCD_ROOT / "Onera Satellite Change Detection dataset - Images"

L2A = ("blue", "green", "red", "nir", "swir16", "swir22")
# Arid alluvium, reflectance rising from blue to SWIR: the ground of `make_stack`'s landscape.
ARID_SOIL = {
    "blue": 0.115,
    "green": 0.155,
    "red": 0.205,
    "nir": 0.255,
    "swir16": 0.335,
    "swir22": 0.285,
}
ROOF = 0.45  # reflectance of a bright new roof, in every band
Box = tuple[int, int, int, int]  # (row, col, height, width) in pixels


@pytest.fixture(scope="session")
def oscd_root() -> Path:
    if not OSCD_IMAGES.is_dir():
        pytest.skip(f"OSCD data not found under {OSCD_ROOT}")
    return OSCD_ROOT


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


# --- grids, stacks, composites ------------------------------------------------------------------


def _make_grid(
    width: int = 40,
    height: int = 40,
    *,
    res: float = 10.0,
    crs: str = "EPSG:32639",
    x_min: float = 500_000.0,
    y_max: float = 3_950_000.0,
) -> Grid:
    return Grid.from_origin(crs, x_min, y_max, res, width, height)


def _landscape(grid: Grid, bands: Sequence[str], seed: int, *, arid: bool = False) -> np.ndarray:
    """Parcels of a few land covers with texture, seen through the sensor's point spread:
    (B, H, W) float32 reflectance, the same for the same grid, bands and seed. `arid`: every
    parcel a bare soil (reflectance rising from blue to SWIR), else any spectrum."""
    rng = np.random.default_rng(seed)
    h, w = grid.shape
    parcels = ndi.zoom(rng.integers(0, 4, size=(h // 10 + 1, w // 10 + 1)), 10, order=0)[:h, :w]
    if arid:
        soil = np.array([ARID_SOIL[b] for b in bands])
        spectra = soil * rng.uniform(0.8, 1.25, size=(4, 1))
    else:
        spectra = rng.uniform(0.05, 0.35, size=(4, len(bands)))
    texture = ndi.gaussian_filter(rng.normal(size=(h, w)), 1.5) * (0.1 if arid else 0.02)
    image = spectra[parcels].transpose(2, 0, 1) + texture
    return ndi.gaussian_filter(image, (0, 1.0, 1.0)).astype(np.float32)


def _paint(image: np.ndarray, square: Box, value: float) -> None:
    r, c, h, w = square
    image[..., r : r + h, c : c + w] = value


def _as_datetime(when: date | datetime) -> datetime:
    if isinstance(when, datetime):
        return when
    return datetime(when.year, when.month, when.day, 7, 5, tzinfo=UTC)


def _make_stack(
    grid: Grid | None = None,
    *,
    dates: Sequence[date | datetime] | None = None,
    bands: Sequence[str] = L2A,
    seed: int = 0,
    squares: Sequence[tuple[date, Box]] = (),
    roof: float = ROOF,
    noise: float = 0.004,
    clear: np.ndarray | None = None,
    reflectance: np.ndarray | None = None,
    scene_ids: Sequence[str] | None = None,
) -> Stack:
    """A stack of one scene per date on `grid`.

    Without `reflectance`: a seeded landscape of bare-soil parcels (on which a new roof reads as
    roof-like) with per-date noise, and each square of `squares` a bright roof from its date
    on; pixels not `clear` are NaN. With `reflectance` (T, B, H, W):
    exactly those values (and `clear`, default all clear), for known-answer tests.
    Dates default to the 1st and 15th of each month of the first half of 2023.
    """
    dates = dates or [date(2023, m, d) for m in range(1, 7) for d in (1, 15)]
    times = tuple(_as_datetime(d) for d in dates)
    bands = tuple(bands)
    if reflectance is None:
        grid = grid or _make_grid()
        base = _landscape(grid, bands, seed, arid=True)
        rng = np.random.default_rng(seed + 1)
        reflectance = np.empty((len(times), len(bands), *grid.shape), np.float32)
        for t, when in enumerate(times):
            reflectance[t] = base + rng.normal(0.0, noise, base.shape)
            for built, square in squares:
                if when.date() >= built:
                    _paint(reflectance[t], square, roof)
        if clear is not None:
            reflectance = np.where(clear[:, None], reflectance, np.float32(np.nan))
    grid = grid or _make_grid(reflectance.shape[-1], reflectance.shape[-2])
    if reflectance.shape != (len(times), len(bands), *grid.shape):
        raise ValueError(
            f"reflectance {reflectance.shape} does not fit {len(times)} dates, {bands}"
        )
    ids = scene_ids or [f"S2A_FAKE_{t:%Y%m%d}_0_L2A" for t in times]
    return Stack(
        grid=grid,
        bands=bands,
        times=times,
        scene_ids=tuple((i,) for i in ids),
        reflectance=reflectance,
        clear=np.ones((len(times), *grid.shape), bool) if clear is None else clear,
    )


def _make_composite(
    reflectance: np.ndarray | None = None,
    *,
    grid: Grid | None = None,
    bands: Sequence[str] = L2A,
    period: Period | None = None,
    seed: int = 0,
    squares: Sequence[Box] = (),
    roof: float = ROOF,
    arid: bool = False,
    scene_ids: tuple[str, ...] = (),
    count: np.ndarray | None = None,
    source_date: np.ndarray | None = None,
) -> Composite:
    """A composite of `period` (default June 2023) on `grid`.

    Without `reflectance`: a seeded landscape of parcels of any spectra (`arid`: bare soils, as
    in `make_stack`) with `squares` as bright roofs. `count` defaults to one clear observation
    wherever every band is finite, `source_date` to the period's first day there (-1 elsewhere).
    """
    bands = tuple(bands)
    if reflectance is None:
        grid = grid or _make_grid()
        reflectance = _landscape(grid, bands, seed, arid=arid)
        for square in squares:
            _paint(reflectance, square, roof)
    grid = grid or _make_grid(reflectance.shape[-1], reflectance.shape[-2])
    period = period or Period(date(2023, 6, 1), date(2023, 7, 1), "2023-06")
    observed = np.isfinite(reflectance).all(axis=0)
    day = (period.start - date(1970, 1, 1)).days
    return Composite(
        grid=grid,
        bands=bands,
        period=period,
        reflectance=reflectance,
        count=observed.astype(np.uint16) if count is None else count,
        source_date=np.where(observed, day, -1).astype(np.int32)
        if source_date is None
        else source_date,
        scene_ids=scene_ids,
    )


def _make_aoi(
    lon: float = 51.67, lat: float = 35.62, *, size_m: float = 800.0, aoi_id: str = "fake"
) -> AOI:
    """A square AOI of `size_m` around (lon, lat), square in its UTM zone."""
    crs = f"EPSG:{utm_epsg(lon, lat)}"
    centre = reproject_geometry(Point(lon, lat), "EPSG:4326", crs)
    half = size_m / 2
    square = box(centre.x - half, centre.y - half, centre.x + half, centre.y + half)
    return AOI(aoi_id, aoi_id, reproject_geometry(square, crs, "EPSG:4326"), {"source": "test"})


@pytest.fixture(scope="session")
def make_grid() -> Callable[..., Grid]:
    return _make_grid


@pytest.fixture(scope="session")
def make_stack() -> Callable[..., Stack]:
    return _make_stack


@pytest.fixture(scope="session")
def make_composite() -> Callable[..., Composite]:
    return _make_composite


@pytest.fixture(scope="session")
def make_aoi() -> Callable[..., AOI]:
    return _make_aoi


# --- the pipeline's I/O, in memory --------------------------------------------------------------


def _fake_io(
    stack: Stack,
    *,
    scenes: Sequence[Scene] | None = None,
    clear_fractions: Mapping[str, float] | None = None,
    catalog_dropped: Sequence[SkippedScene] = (),
    read_skipped: Sequence[SkippedScene] = (),
) -> PipelineIO:
    """A `PipelineIO` serving `stack`: a catalog of its scenes (default: `scenes_for_stack`), a
    probe answering with each date's clear share (or `clear_fractions`), a reader of the stack
    and a `MemoryWriter` (`io.write.results` holds what the run handed over)."""
    scenes = scenes_for_stack(stack) if scenes is None else scenes
    if clear_fractions is None:
        clear_fractions = {
            scene_id: float(stack.clear[t].mean())
            for t, ids in enumerate(stack.scene_ids)
            for scene_id in ids
        }
    return PipelineIO(
        search=FakeCatalog(scenes, dropped=catalog_dropped),
        read=StackReader(stack, skipped=read_skipped),
        probe=FakeProber(clear_fractions),
        write=MemoryWriter(),
    )


@pytest.fixture(scope="session")
def fake_io() -> Callable[..., PipelineIO]:
    return _fake_io


# --- a small, fully known run result ------------------------------------------------------------


class RunResultFactory:
    """A small, fully known RunResult near Khojir (51.67 E, 35.62 N) on a 120 x 100 px UTM grid:
    three structures (a hall, a bermed depot, an unconfirmed shed) with one berm, two
    composites with an unobserved corner, four scenes used, two skipped, four period counts."""

    BANDS = ("blue", "green", "red", "nir")
    H, W = 100, 120
    # Pixel boxes of the structures: (r0, c0, r1, c1), end exclusive.
    HALL = (40, 30, 42, 34)  # 20 x 40 m hall: 8 px
    DEPOT = (20, 70, 26, 80)  # 60 x 100 m, bermed
    SHED = (70, 90, 73, 93)  # 30 x 30 m, unconfirmed

    def __call__(
        self, *, synthetic: bool = True, empty: bool = False, aoi_scale: float = 1.0
    ) -> RunResult:
        """`aoi_scale` stretches the AOI eastwards beyond the grid (2.0: half of it off the data)."""
        grid = self.grid()
        lon0, lat0, lon1, lat1 = reproject_geometry(box(*grid.bounds), grid.crs, "EPSG:4326").bounds
        east = lon0 + (lon1 - lon0) * aoi_scale
        aoi = AOI(
            "khojir-test",
            "Khojir test AOI",
            box(lon0 + 0.001, lat0 + 0.001, east - 0.001, lat1 - 0.001),
            {"source": "test"},
        )
        scenes = self.scenes()
        built = [] if empty else [self.HALL, self.DEPOT, self.SHED]
        p_before = Period(date(2023, 6, 1), date(2023, 8, 1), "2023-06..07")
        p_after = Period(date(2024, 4, 1), date(2024, 7, 1), "2024-04..06")
        before = self.composite(grid, p_before, [], tuple(s.id for s in scenes[:2]), 19540)
        after = self.composite(grid, p_after, built, tuple(s.id for s in scenes[2:]), 19850)
        score = np.zeros(grid.shape, dtype=np.float32)
        for r0, c0, r1, c1 in built:
            score[r0:r1, c0:c1] = 8.0
        score[:5, :8] = np.nan
        change = ChangeMap(
            grid,
            score,
            np.clip(score / 10, 0, 1),
            score > 3.0,
            3.0,
            shift_px=(0.12, -0.31),
            shift_corrected=False,
        )
        return RunResult(
            aoi=aoi,
            grid=grid,
            config_fingerprint="0123456789abcdef",
            scenes_used=scenes,
            scenes_skipped=(
                SkippedScene("S2B_39SWV_20230620_0_L2A", "AOI clear fraction 0.05 < 0.2"),
                SkippedScene("S2B_39SWV_20240516_1_L2A", "duplicate of a newer reprocessing"),
            ),
            before=before,
            after=after,
            change=change,
            structures=() if empty else self.structures(grid, scenes),
            min_mapping_unit_m2=400.0,
            berms=() if empty else self.berms(grid),
            counts=() if empty else self.counts(),
            timings={"search": 0.5, "read": 2.25},
            provenance={
                "synthetic": synthetic,
                "catalog": {"url": "sample_tiles/catalog.json"},
                "pipeline_note": "test",
            },
            coverage=measure_coverage(
                aoi_mask(aoi, grid),
                before,
                (before, after),
                aoi_area_m2=float(reproject_geometry(aoi.geometry, "EPSG:4326", grid.crs).area),
            ),
            config=to_dict(load_config(None)),
        )

    # Acquisitions of `dated`: when each was taken and which structures stand by then.
    # The hall is first present in Oct 2023, the depot in Dec 2023, the shed in May 2024.
    DATES = (
        date(2023, 7, 15),
        date(2023, 9, 20),
        date(2023, 10, 18),
        date(2023, 12, 5),
        date(2023, 12, 20),  # cloudy over the depot
        date(2024, 5, 12),
    )

    def dated(self, result: RunResult) -> tuple[Stack, tuple[Composite, ...]]:
        """A stack of the `DATES` acquisitions on `result`'s grid (roofs as they stood; cloud
        over the depot on 2023-12-20) and the composites of the periods each structure was
        first present in (Oct 2023, Dec 2023, May 2024)."""
        grid = result.grid
        built_by = {
            self.HALL: date(2023, 10, 1),
            self.DEPOT: date(2023, 12, 1),
            self.SHED: date(2024, 5, 1),
        }
        layers = []
        for i, when in enumerate(self.DATES):
            built = [box_ for box_, since in built_by.items() if since <= when]
            comp = self.composite(grid, result.before.period, built, (), 19600 + i)
            layers.append(comp.reflectance)
        reflectance = np.stack(layers)
        clear = np.isfinite(reflectance).all(axis=1)
        r0, c0, r1, c1 = self.DEPOT
        clear[4, r0 - 3 : r1 + 3, c0 - 3 : c1 + 3] = False
        reflectance[4][:, ~clear[4]] = np.nan
        stack = Stack(
            grid,
            self.BANDS,
            tuple(datetime(d.year, d.month, d.day, 7, 5, tzinfo=UTC) for d in self.DATES),
            tuple((f"S2A_39SWV_{d:%Y%m%d}_0_L2A",) for d in self.DATES),
            reflectance,
            clear,
        )
        months = []
        for start, end, t in (
            (date(2023, 10, 1), date(2023, 11, 1), 2),
            (date(2023, 12, 1), date(2024, 1, 1), 3),
            (date(2024, 5, 1), date(2024, 6, 1), 5),
        ):
            period = Period(start, end, f"{start:%Y-%m}")
            months.append(
                _make_composite(reflectance[t], grid=grid, bands=self.BANDS, period=period)
            )
        return stack, tuple(months)

    def grid(self) -> Grid:
        centre = reproject_geometry(Point(51.67, 35.62), "EPSG:4326", "EPSG:32639")
        x, y = centre.x, centre.y
        return Grid.from_origin("EPSG:32639", round(x, -1), round(y, -1), 10.0, self.W, self.H)

    @staticmethod
    def px_box(grid: Grid, rc: tuple[int, int, int, int]) -> Polygon:
        r0, c0, r1, c1 = rc
        x0, y0 = grid.transform @ (c0, r1)
        x1, y1 = grid.transform @ (c1, r0)
        # Clockwise on purpose: the GeoJSON writer must reorient to the right-hand rule.
        return Polygon([(x0, y0), (x0, y1), (x1, y1), (x1, y0)])

    @staticmethod
    def scenes() -> tuple[Scene, ...]:
        return tuple(
            Scene(
                id=f"S2A_39SWV_{d:%Y%m%d}_0_L2A",
                datetime=datetime(d.year, d.month, d.day, 7, 5, tzinfo=UTC),
                collection="sentinel-2-l2a",
                tile="39SWV",
                assets={},
                cloud_cover=3.5,
                platform="sentinel-2a",
                processing_baseline="05.09",
                footprint=box(51.0, 35.1, 52.2, 36.1),
            )
            for d in (date(2023, 6, 10), date(2023, 7, 15), date(2024, 5, 2), date(2024, 6, 6))
        )

    def composite(
        self,
        grid: Grid,
        period: Period,
        built: list[tuple[int, int, int, int]],
        scene_ids: tuple[str, ...],
        day: int,
    ) -> Composite:
        # Desert-like ground: one smooth texture shared by all bands (seeded: same ground before
        # and after), per-band brightness, a little per-date noise.
        h, w = grid.shape
        terrain = ndi.gaussian_filter(np.random.default_rng(7).standard_normal((h, w)), 3.0)
        terrain /= np.abs(terrain).max()
        noise = np.random.default_rng(day).standard_normal((h, w)) * 0.004
        level = {"blue": 0.10, "green": 0.13, "red": 0.16, "nir": 0.22}
        refl = np.stack([level[b] * (1 + 0.25 * terrain) + noise for b in self.BANDS])
        refl = refl.astype(np.float32)
        for r0, c0, r1, c1 in built:
            refl[:, r0:r1, c0:c1] = 0.45  # bright new roof
        refl[:, :5, :8] = np.nan  # an unobserved corner
        count = np.full((h, w), 3, dtype=np.uint16)
        count[:5, :8] = 0
        source = np.full((h, w), day, dtype=np.int32)
        source[:5, :8] = -1
        return _make_composite(
            refl,
            grid=grid,
            bands=self.BANDS,
            period=period,
            scene_ids=scene_ids,
            count=count,
            source_date=source,
        )

    def structures(self, grid: Grid, scenes: Sequence[Scene]) -> tuple[Structure, ...]:
        hall, depot, shed = (self.px_box(grid, rc) for rc in (self.HALL, self.DEPOT, self.SHED))
        s2, s3 = scenes[2].id, scenes[3].id
        return (
            Structure(
                "s-0001", hall, 800.0, 0.81, date(2023, 8, 1), date(2023, 11, 1), True, 14,
                False, 0.05, (s2,),
            ),
            Structure(
                "s-0002", depot, 6000.0, 0.93, date(2023, 9, 1), date(2024, 1, 1), True, 12,
                True, 0.61, (s2, s3),
            ),
            Structure(
                "s-0003", shed, 900.0, 0.42, date(2024, 3, 1), date(2024, 6, 1), False, 3,
                None, None, (s3,),
            ),
        )  # fmt: skip

    def berms(self, grid: Grid) -> tuple[Berm, ...]:
        r0, c0, r1, c1 = self.DEPOT
        xa, ya = grid.transform @ (c0 - 2, r1 + 2)
        xb, yb = grid.transform @ (c1 + 2, r0 - 2)
        line = LineString([(xa, ya), (xa, yb), (xb, yb)])
        return (Berm("b-0001", line, abs(yb - ya) + abs(xb - xa), 0.55, "s-0002"),)

    @staticmethod
    def counts() -> tuple[PeriodCount, ...]:
        # all structures: new, best, low, high; then new buildings alike (all are buildings)
        return tuple(
            PeriodCount(
                Period(date(2023, m, 1), date(2023, m + 1, 1), f"2023-{m:02d}"),
                n,
                cum,
                lo,
                hi,
                cf,
                *buildings,
            )
            for m, n, cum, lo, hi, cf, *buildings in [
                (8, 0, 0, 0, 0, 0.9, 0, 0, 0, 0),
                (9, 1, 1, 1, 2, 0.7, 1, 1, 1, 2),
                (10, 0, 1, 1, 2, 0.2, 0, 1, 1, 2),
                (11, 1, 2, 1, 3, 0.8, 1, 2, 1, 3),
            ]
        )


@pytest.fixture(scope="session")
def make_run_result() -> RunResultFactory:
    """`make_run_result(synthetic=True, empty=False)`; its pixel boxes are `.HALL` etc."""
    return RunResultFactory()


# --- QGIS, headless ------------------------------------------------------------------------------

ARTIFACTS = REPO / "test-artifacts"

# Opens a QGIS project with the system Python's QGIS 3.22, reports every layer (validity,
# renderer, labels, visibility, place in the drawing order, extent on the map) and renders the
# visible layers with the project's own settings into a PNG.
QGIS_PROJECT_SCRIPT = r"""
import json, os, sys
from qgis.core import QgsApplication, QgsMapRendererSequentialJob, QgsMapSettings, QgsProject, Qgis
from qgis.core import QgsCoordinateTransform
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

project_path, png = sys.argv[1:3]
app = QgsApplication([], False)
app.initQgis()
project = QgsProject.instance()
out = {"qgis": Qgis.QGIS_VERSION, "read": project.read(project_path),
       "crs": project.crs().authid(), "layers": []}
root = project.layerTreeRoot()
order = root.layerOrder()
for node in root.findLayers():
    layer = node.layer()
    if layer is None:
        out["layers"].append({"id": node.layerId(), "missing": True})
        continue
    renderer = layer.renderer()
    info = {"id": layer.id(), "name": layer.name(), "valid": layer.isValid(),
            "type": "vector" if layer.type() == 0 else "raster", "source": layer.source(),
            "crs": layer.crs().authid(), "visible": node.isVisible(),
            "group": node.parent().name(), "order": order.index(layer),
            "renderer": renderer.type() if renderer else None}
    if info["type"] == "vector":
        info["labels"] = bool(layer.labelsEnabled()) and layer.labeling() is not None
        if info["labels"]:
            info["label_field"] = layer.labeling().settings().fieldName
        info["features"] = layer.featureCount()
    # Where the layer lies on the project's map (its extent in the project's CRS).
    extent = layer.extent()
    if not extent.isEmpty():
        extent = QgsCoordinateTransform(layer.crs(), project.crs(), project).transformBoundingBox(
            extent)
        info["extent"] = [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(),
                          extent.yMaximum()]
    out["layers"].append(info)
settings = QgsMapSettings()
settings.setLayers([l for l in order if root.findLayer(l.id()).isVisible()])
settings.setDestinationCrs(project.crs())
settings.setExtent(project.viewSettings().defaultViewExtent())
settings.setOutputSize(QSize(1000, 1000))
settings.setBackgroundColor(QColor(255, 0, 255))
settings.setLabelingEngineSettings(project.labelingEngineSettings())
job = QgsMapRendererSequentialJob(settings)
job.start()
job.waitForFinished()
out["rendered"] = job.renderedImage().save(png, "PNG")
print("RESULT " + json.dumps(out), flush=True)
os._exit(0)  # exitQgis() can segfault on teardown in 3.22: report first, then leave
"""


def _open_in_qgis(project: Path, png: Path, tmp: Path) -> dict:
    """Open `project` in headless QGIS (skips without it); render the visible layers to `png`."""
    from qgiskit import qgis_result, skip_without_qgis

    skip_without_qgis()
    png.parent.mkdir(parents=True, exist_ok=True)
    view: dict = qgis_result(QGIS_PROJECT_SCRIPT, [str(project), str(png)], tmp, timeout=300)
    return view


@pytest.fixture(scope="session")
def open_in_qgis() -> Callable[[Path, Path, Path], dict]:
    """`open_in_qgis(project.qgz, png, tmp_dir)`: what headless QGIS 3.22 makes of a project."""
    return _open_in_qgis


@pytest.fixture(scope="session")
def cli() -> Callable[..., Result]:
    """`cli(*args)`: `changedet ARGS` run in-process through click's CliRunner, stderr apart."""
    from changedet.cli import main

    def invoke(*args: str) -> Result:
        try:
            runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click 8.1
        except TypeError:
            runner = CliRunner()  # click >= 8.2 always keeps stderr apart
        return runner.invoke(main, list(args))

    return invoke


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[str]:
    """A Dask LocalCluster of two single-thread worker processes on loopback, for one test
    module; its scheduler's address. Skips without `changedet[dask]`."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as local:
        yield local.scheduler_address
