"""Known-answer tests for change objects: exact areas, minimum mapping unit, valid polygons."""

from __future__ import annotations

import numpy as np
import pytest

from changedet.config import ChangeConfig
from changedet.core.objects import extract_objects, label_objects, split_roofs
from changedet.models import ChangeMap, Grid

UTM = Grid.from_origin("EPSG:32639", 500_000.0, 3_950_000.0, 10.0, 60, 50)


def _change(mask: np.ndarray, grid: Grid = UTM, score: np.ndarray | None = None) -> ChangeMap:
    s = np.where(mask, 10.0, 0.0).astype(np.float32) if score is None else score
    return ChangeMap(
        grid=grid, score=s, likelihood=mask.astype(np.float32), mask=mask, threshold=8.0
    )


def test_block_area_and_polygon_are_exact_and_small_blobs_are_dropped() -> None:
    mask = np.zeros(UTM.shape, bool)
    mask[10:16, 20:27] = True  # 42 px = 4200 m²
    mask[40:42, 40:41] = True  # 2 px = 200 m² < 400 m² MMU
    objects = extract_objects(_change(mask), ChangeConfig())
    assert len(objects) == 1
    (obj,) = objects
    assert obj.n_pixels == 42 and obj.area_m2 == pytest.approx(4200.0)
    assert obj.geometry.is_valid and obj.geometry.area == pytest.approx(4200.0)
    x0, y0, x1, y1 = obj.geometry.bounds
    assert (x0, x1) == (500_200.0, 500_270.0) and (y0, y1) == (3_949_840.0, 3_949_900.0)
    assert 0.0 <= obj.confidence <= 1.0 and obj.likelihood == pytest.approx(1.0)


def test_min_area_is_configurable() -> None:
    mask = np.zeros(UTM.shape, bool)
    mask[5:7, 5:6] = True
    assert len(extract_objects(_change(mask), ChangeConfig(min_area_m2=200.0))) == 1
    assert extract_objects(_change(mask), ChangeConfig(min_area_m2=201.0)) == []


def test_geographic_grid_uses_pixel_area() -> None:
    geo = Grid.from_origin("EPSG:4326", 54.54, 24.37, 9.4e-5, 60, 50)
    mask = np.zeros(geo.shape, bool)
    mask[10:20, 10:20] = True
    (obj,) = extract_objects(_change(mask, geo), ChangeConfig())
    assert obj.area_m2 == pytest.approx(100 * geo.pixel_area_m2)
    assert obj.geometry.is_valid


def test_touching_blobs_with_two_peaks_are_split() -> None:
    yy, xx = np.mgrid[0:50, 0:60]
    score = (
        20 * np.exp(-((yy - 25) ** 2 + (xx - 20) ** 2) / 30.0)
        + 20 * np.exp(-((yy - 25) ** 2 + (xx - 36) ** 2) / 30.0)
    ).astype(np.float32)
    mask = score > 3.0
    assert label_objects(mask, score, split=False).max() == 1
    assert label_objects(mask, score, split=True, seed_level=8.0).max() == 2
    objects = extract_objects(_change(mask, score=score), ChangeConfig(split_objects=True))
    assert len(objects) == 2 and sum(o.n_pixels for o in objects) == int(mask.sum())
    assert all(o.geometry.is_valid for o in objects)


def test_no_change_gives_no_objects() -> None:
    assert extract_objects(_change(np.zeros(UTM.shape, bool)), ChangeConfig()) == []


def test_roof_parts_on_soil_become_objects_of_their_own() -> None:
    """Known answers of `split_roofs` (threshold 0.2, soil 0.05, 4 px):
    a hall on graded ground splits in two; a roof on mixed ground, a roof smaller than 4 px and
    an object that is all roof stay as they are."""
    labels = np.zeros((40, 60), np.int32)
    flattening = np.zeros(labels.shape, np.float32)
    labels[2:10, 2:20] = 1  # graded ground (flattening 0.01) with a hall in it
    flattening[2:10, 2:20] = 0.01
    flattening[4:8, 4:9] = 0.5
    labels[15:25, 2:20] = 2  # a hall on mixed ground: its rest is not clearly soil
    flattening[15:25, 2:20] = np.where(np.arange(18) % 2 == 0, 0.12, -0.1)
    flattening[17:21, 4:9] = 0.5
    labels[30:38, 2:20] = 3  # a roof of 3 px: too small to stand on its own
    flattening[31, 4:7] = 0.5
    labels[2:10, 30:40] = 4  # all roof
    flattening[2:10, 30:40] = 0.5
    out = split_roofs(labels, flattening, threshold=0.2, soil=0.05, min_pixels=4)
    hall = out[4:8, 4:9]
    assert len(np.unique(hall)) == 1 and hall[0, 0] > 0
    ground = (labels == 1) & (out != hall[0, 0])
    assert ground.sum() == 8 * 18 - 4 * 5 and len(np.unique(out[ground])) == 1
    assert out[ground][0] not in (0, hall[0, 0])
    for k in (2, 3, 4):  # whole, each still one object
        assert len(np.unique(out[labels == k])) == 1
    assert len(np.unique(out[out > 0])) == 5
    # No object with a roof and a rest: nothing is split, the labels come back as given.
    only = np.where(labels == 4, 4, 0).astype(np.int32)
    assert split_roofs(only, flattening, threshold=0.2, soil=0.05, min_pixels=4) is only
