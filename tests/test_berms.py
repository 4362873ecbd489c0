"""Berm evidence, line extraction and the ring test on synthetic composites with known berms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from changedet.config import BermConfig
from changedet.core.berms import (
    berm_evidence,
    bsi,
    extract_berms,
    link_berms,
    ridge_filter,
    ring_test,
)
from changedet.core.track import footprint_geometry
from changedet.errors import DataError
from changedet.models import Composite, Grid, Structure

GRID = Grid.from_origin("EPSG:32639", 600_000.0, 3_950_000.0, 10.0, 80, 80)
BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
CFG = BermConfig()
# Vegetated-ish desert background vs. freshly disturbed soil (brighter, barer) vs. a roof.
GROUND = np.array([0.08, 0.10, 0.12, 0.25, 0.22, 0.16], np.float32)
SOIL = np.array([0.16, 0.20, 0.26, 0.30, 0.42, 0.36], np.float32)
ROOF = np.array([0.30, 0.32, 0.34, 0.36, 0.38, 0.36], np.float32)


@pytest.fixture(scope="module")
def composite(make_composite: Callable[..., Composite]) -> Callable[..., Composite]:
    """(layers of (mask, spectrum), seed) → the ground with those layers painted, plus noise."""

    def build(layers: list[tuple[np.ndarray, np.ndarray]], seed: int) -> Composite:
        rng = np.random.default_rng(seed)
        refl = np.broadcast_to(GROUND[:, None, None], (6, *GRID.shape)).copy()
        for mask, spectrum in layers:
            refl[:, mask] = spectrum[:, None]
        refl += rng.normal(0, 0.01, refl.shape).astype(np.float32)
        return make_composite(refl.astype(np.float32), grid=GRID, bands=BANDS)

    return build


def box(r0: int, c0: int, h: int, w: int) -> np.ndarray:
    m = np.zeros(GRID.shape, dtype=bool)
    m[r0 : r0 + h, c0 : c0 + w] = True
    return m


def outline(r0: int, c0: int, h: int, w: int) -> np.ndarray:
    return box(r0, c0, h, w) & ~box(r0 + 1, c0 + 1, h - 2, w - 2)


HALL_1 = box(15, 15, 3, 5)  # bermed: a 1-px soil ring 2-3 px out
BERM_1 = outline(12, 12, 9, 11)
HALL_2 = box(55, 55, 3, 5)  # not bermed


def structure(mask: np.ndarray, sid: str) -> Structure:
    return Structure(sid, footprint_geometry(mask, GRID), float(mask.sum() * 100), 0.9)


@pytest.fixture(scope="module")
def evidence(composite: Callable[..., Composite]) -> np.ndarray:
    before = composite([], seed=1)
    after = composite([(BERM_1, SOIL), (HALL_1, ROOF), (HALL_2, ROOF)], seed=2)
    return berm_evidence(before, after, exclude=HALL_1 | HALL_2)


def test_bsi_known_values() -> None:
    got = bsi(np.float32(0.1), np.float32(0.2), np.float32(0.3), np.float32(0.4))
    assert got == pytest.approx((0.6 - 0.4) / 1.0)


def test_evidence_is_high_on_berm_and_low_elsewhere(evidence: np.ndarray) -> None:
    far = ~(box(5, 5, 25, 25) | box(50, 50, 12, 14))
    assert np.median(evidence[BERM_1]) > CFG.evidence_threshold
    assert np.percentile(evidence[far], 99) < CFG.evidence_threshold


def test_ring_test_flags_only_the_bermed_hall(evidence: np.ndarray) -> None:
    s = [structure(HALL_1, "a"), structure(HALL_2, "b")]
    a, b = ring_test(s, evidence, GRID, CFG)
    assert a.bermed is True and a.berm_score is not None and a.berm_score > 0.8
    assert b.bermed is False and b.berm_score == 0.0


def test_partial_berm_on_one_side_scores_a_quarter_or_more(
    composite: Callable[..., Composite],
) -> None:
    side = box(12, 12, 9, 1)  # only the west wall
    before = composite([], seed=3)
    after = composite([(side, SOIL), (HALL_1, ROOF)], seed=4)
    ev = berm_evidence(before, after, exclude=HALL_1)
    (a,) = ring_test([structure(HALL_1, "a")], ev, GRID, CFG)
    assert a.berm_score is not None and 0.15 < a.berm_score < CFG.ring_threshold
    assert a.bermed is False  # one wall is not a ring


def test_extract_berms_traces_the_ring_with_its_length(evidence: np.ndarray) -> None:
    berms = extract_berms(evidence, GRID, CFG)
    assert len(berms) == 1
    (b,) = berms
    # Centre line of a 9 x 11 px outline: perimeter (8 + 10) * 2 pixels of 10 m.
    assert b.length_m == pytest.approx(360.0, rel=0.2)
    assert b.geometry.distance(structure(HALL_1, "a").geometry) < 40.0
    linked = link_berms(berms, [structure(HALL_1, "a"), structure(HALL_2, "b")], CFG)
    assert linked[0].structure_id == "a"
    assert extract_berms(evidence, GRID, CFG)[0].id == b.id  # deterministic id


def test_a_berm_names_the_bermed_building_it_rings_not_the_ground_works_it_lies_on(
    evidence: np.ndarray,
) -> None:
    (b,) = extract_berms(evidence, GRID, CFG)
    apron = replace(structure(BERM_1, "apron"), kind="ground works")  # the line's own soil
    plain = replace(structure(box(22, 15, 3, 5), "plain"), bermed=False)  # closer to a wall
    hall = replace(structure(HALL_1, "hall"), bermed=True)
    assert b.geometry.distance(plain.geometry) < b.geometry.distance(hall.geometry)
    (linked,) = link_berms([b], [apron, plain, hall], CFG)
    assert linked.structure_id == "hall"
    (linked,) = link_berms([b], [apron, plain], CFG)  # no bermed building: the nearest one
    assert linked.structure_id == "plain"
    (linked,) = link_berms([b], [apron], CFG)  # ground works is never named
    assert linked.structure_id is None


def test_blob_is_not_a_berm(composite: Callable[..., Composite]) -> None:
    before = composite([], seed=5)
    after = composite([(box(30, 30, 10, 12), SOIL)], seed=6)  # a cleared plot
    assert extract_berms(berm_evidence(before, after), GRID, CFG) == []


def test_roof_flanks_fool_the_ring_test_unless_excluded(
    composite: Callable[..., Composite],
) -> None:
    before = composite([], seed=7)
    after = composite([(HALL_2, ROOF)], seed=8)
    s = [structure(HALL_2, "b")]
    (blind,) = ring_test(s, berm_evidence(before, after), GRID, CFG)
    (fair,) = ring_test(s, berm_evidence(before, after, exclude=HALL_2), GRID, CFG)
    assert blind.berm_score is not None and fair.berm_score is not None
    assert blind.berm_score > fair.berm_score + 0.3
    assert fair.bermed is False


def test_missing_band_is_refused(composite: Callable[..., Composite]) -> None:
    c = composite([], seed=1)
    no_swir = replace(c, bands=BANDS[:4], reflectance=c.reflectance[:4])
    with pytest.raises(DataError, match="swir16"):
        berm_evidence(no_swir, no_swir)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ridge_filter_gives_scikit_images_sato_values(seed: int) -> None:
    # The ridge filter cuts sato's 100-sigma kernel tails and takes the larger eigenvalue itself:
    # the values must stay sato's, to the bit, on evidence shaped like the real one
    # (non-negative, mostly zero, lines and blobs).
    from skimage.filters import sato

    rng = np.random.default_rng(seed)
    raw = np.clip(rng.normal(0.0, 1.0, (300, 260)), 0.0, None).astype(np.float32)
    raw[rng.random(raw.shape) < 0.6] = 0.0
    raw[120:122, 20:240] += 4.0  # a berm-like line
    raw[40:60, 40:70] += 3.0  # a cleared plot
    raw[:, 250:] = 0.0  # a blank strip: only the far tails reach it
    for sigmas in [(1.0, 1.5), (0.8,), (2.0,)]:
        expected = sato(raw, sigmas=sigmas, black_ridges=False, mode="constant")
        np.testing.assert_array_equal(ridge_filter(raw, sigmas=sigmas), expected.astype(np.float32))
