"""Known-answer tests for change detection on synthetic composites."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import date

import numpy as np
import pytest
from scipy import ndimage as ndi

from changedet.config import ChangeConfig
from changedet.core.change import (
    BAND_CHANGE_UNOBSERVED,
    band_change_codes,
    before_range,
    decide,
    detect_change,
    neighbour_match,
    neighbour_range,
    shrunk_range,
    tolerant_excess,
    trim_blur_rims,
)
from changedet.core.objects import extract_objects
from changedet.core.stats import robust_z
from changedet.models import Composite, Grid, Period

L2A = ("blue", "green", "red", "nir", "swir16", "swir22")
GRID = Grid.from_origin("EPSG:32639", 500_000.0, 3_950_000.0, 10.0, 160, 150)
BLOCK = (slice(70, 78), slice(60, 72))  # 8 x 12 px = 96 px = 9600 m²


@pytest.fixture(scope="module")
def composite(make_composite: Callable[..., Composite]) -> Callable[..., Composite]:
    """(image, bands, "before" | "after") → a composite of June 2023 or June 2024 on GRID."""

    def build(image: np.ndarray, bands: tuple[str, ...], label: str) -> Composite:
        day = date(2023, 6, 1) if label == "before" else date(2024, 6, 1)
        period = Period(day, date(day.year, 7, 1), label)
        return make_composite(image, grid=GRID, bands=bands, period=period)

    return build


@pytest.fixture(scope="module")
def pair(
    make_composite: Callable[..., Composite], composite: Callable[..., Composite]
) -> Callable[..., tuple[Composite, Composite]]:
    """A before/after pair of a parcelled landscape: the after date with a new bright roof at
    BLOCK (unless `block=False`), optionally shifted, and a linear map per band."""

    def build(
        bands: tuple[str, ...] = L2A,
        *,
        block: bool = True,
        shift: tuple[float, float] = (0.0, 0.0),
        psf: bool = True,
    ) -> tuple[Composite, Composite]:
        rng = np.random.default_rng(7)
        before = make_composite(grid=GRID, bands=bands).reflectance  # parcels with texture
        after = before.copy()
        if block:
            after[(slice(None), *BLOCK)] = 0.6  # a new bright roof, in every band
            if psf:  # ...seen through the point spread
                after = ndi.gaussian_filter(after, (0, 0.5, 0.5))
        if shift != (0.0, 0.0):
            after = np.stack([ndi.shift(b, shift, order=3, mode="nearest") for b in after])
        gains = np.linspace(0.85, 1.2, len(bands), dtype=np.float32)[:, None, None]
        after = after * gains + 0.03  # season and atmosphere: a linear map per band
        noise = rng.normal(0, 0.008, size=(2, *before.shape)).astype(np.float32)
        return (
            composite(before + noise[0], bands, "before"),
            composite(after + noise[1], bands, "after"),
        )

    return build


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_planted_block_is_found_with_its_exact_area(
    pair: Callable[..., tuple[Composite, Composite]],
) -> None:
    before, after = pair(psf=False)
    config = dataclasses.replace(ChangeConfig(), smooth_sigma_px=0.0, coregister=False)
    change = detect_change(before, after, config)
    truth = np.zeros(GRID.shape, bool)
    truth[BLOCK] = True
    np.testing.assert_array_equal(change.mask, truth)
    (obj,) = extract_objects(change, config)
    assert obj.area_m2 == pytest.approx(9600.0) and obj.geometry.area == pytest.approx(9600.0)
    assert change.likelihood[~truth].mean() < 0.05


SOIL = (0.115, 0.155, 0.205, 0.255, 0.335, 0.285)  # arid alluvium, blue..swir22
CONCRETE = (0.250, 0.270, 0.285, 0.305, 0.330, 0.300)
GRADED_SOIL = (0.150, 0.200, 0.270, 0.315, 0.420, 0.370)  # berms, cleared ground


@pytest.mark.parametrize(("surface", "roof"), [(CONCRETE, True), (GRADED_SOIL, False)])
def test_roofs_flatten_the_spectrum_and_earthworks_do_not(
    surface: tuple, roof: bool, composite: Callable[..., Composite]
) -> None:
    rng = np.random.default_rng(3)
    soil = np.array(SOIL, np.float32)[:, None, None] * (
        1 + 0.05 * rng.normal(size=(1, *GRID.shape))
    )
    after = soil.copy()
    after[(slice(None), *BLOCK)] = np.array(surface, np.float32)[:, None, None]
    after += rng.normal(scale=0.003, size=after.shape).astype(np.float32)
    config = dataclasses.replace(ChangeConfig(), coregister=False)
    change = detect_change(composite(soil, L2A, "before"), composite(after, L2A, "after"), config)
    # Both are change, and both are structures...
    assert change.mask[BLOCK].mean() > 0.9
    assert change.structures[1][BLOCK].mean() > 0.9
    # ...but only the roof flattens the blue-to-SWIR slope of the soil (the evidence of kind).
    flattening = float(np.median(change.indicators["spectral_flattening"][BLOCK]))
    assert (flattening > 0.15) if roof else (abs(flattening) < 0.05)


def test_tolerant_excess_known_answer() -> None:
    before = np.array(
        [[0.1, 0.1, 0.1, 0.1], [0.1, 0.3, 0.3, 0.1], [0.1, 0.1, 0.1, 0.1]], np.float32
    )
    # The bright pair moved one pixel right: every value after has a neighbour before that
    # explains it. A new value outside every neighbour's range is the distance to that range.
    moved = np.array([[0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.3, 0.3], [0.1, 0.1, 0.1, 0.1]], np.float32)
    assert np.array_equal(tolerant_excess(moved, before, 1), np.zeros_like(before))
    new = before.copy()
    new[0, 0] = 0.6
    expected = np.zeros_like(before)
    expected[0, 0] = 0.3  # 0.6 against the brightest neighbour 0.3
    np.testing.assert_allclose(tolerant_excess(new, before, 1), expected, atol=1e-7)
    assert np.array_equal(tolerant_excess(new, before, 0)[0, 0], np.float32(0.5))


def test_shrunk_range_and_neighbour_match_known_answers() -> None:
    centre = np.array([[0.2, np.nan]], np.float32)
    low, high = np.array([[0.1, 0.1]], np.float32), np.array([[0.4, 0.4]], np.float32)
    lo, hi = shrunk_range((low, high), centre, 0.5)
    np.testing.assert_allclose(lo, [[0.15, 0.1]])  # half way out; a NaN centre keeps its range
    np.testing.assert_allclose(hi, [[0.3, 0.4]])
    # Two bands, 1 x 3 pixels: the middle pixel after has the left neighbour's spectrum before.
    before = np.array([[[0.1, 0.5, 0.9]], [[0.2, 0.6, 0.3]]], np.float32)
    after = before.copy()
    after[:, 0, 1] = before[:, 0, 0]
    noise = np.array([0.1, 0.1], np.float32)
    best = neighbour_match(before, after, noise, 1)
    assert best[0, 1] == 0.0
    # the left pixel's nearest spectrum is the middle one's before: (0.4/0.1)² + (0.4/0.1)²
    np.testing.assert_allclose(best[0, 0], 32.0, rtol=1e-5)


def test_opt_in_tolerance_finds_a_faint_patch_the_band_by_band_range_explains(
    composite: Callable[..., Composite],
) -> None:
    """On ground whose pixels differ a lot (urban texture), a faint new 5 x 5 px surface lies,
    band by band, within the range of some neighbour before: the default tolerance explains
    most of it away. A neighbour explaining only half the way, or its whole spectrum, does not."""
    rng = np.random.default_rng(3)
    h, w = GRID.shape
    level = np.array([0.08, 0.1, 0.12, 0.25, 0.3, 0.22], np.float32)[:, None, None]
    texture = rng.normal(0, 1, (h, w)).astype(np.float32)
    before = (level * (1 + 0.25 * texture) + rng.normal(0, 0.01, (6, h, w))).astype(np.float32)
    patch = (slice(40, 45), slice(50, 55))
    after = before.copy()
    after[(slice(None), *patch)] += 0.04
    noise = rng.normal(0, 0.004, size=(2, *before.shape)).astype(np.float32)
    pair = composite(before + noise[0], L2A, "before"), composite(after + noise[1], L2A, "after")
    default = dataclasses.replace(ChangeConfig(), coregister=False)
    opted = dataclasses.replace(default, tolerance_fraction=0.5, tolerance_match=True)
    found = {c: detect_change(*pair, c).structures[1] for c in (default, opted)}
    assert found[default][patch].sum() < 12
    assert found[opted][patch].sum() >= 18
    assert found[opted].sum() - found[opted][patch].sum() <= 2  # and nothing else


def _object(
    shape: tuple[int, int], core: tuple[slice, slice], peak: float, rim: float
) -> tuple[np.ndarray, np.ndarray]:
    """A mask of `core` grown by one pixel, excess `peak` in the core and `rim` around it."""
    excess = np.zeros(shape, np.float32)
    inner = np.zeros(shape, bool)
    inner[core] = True
    outline = ndi.binary_dilation(inner, structure=np.ones((3, 3), bool))
    excess[outline] = rim
    excess[inner] = peak
    return outline, excess


def test_trim_blur_rims_known_answers() -> None:
    shape = (20, 30)
    # A strong object loses the rim under 0.15 of its peak (40 -> 6); a faint one keeps it.
    strong, excess = _object(shape, (slice(3, 6), slice(3, 7)), 40.0, 3.0)
    faint, faint_excess = _object(shape, (slice(12, 15), slice(3, 7)), 5.0, 1.5)
    mask, excess = strong | faint, np.maximum(excess, faint_excess)
    trimmed = trim_blur_rims(mask, excess, 0.15)
    expected = faint.copy()
    expected[3:6, 3:7] = True
    np.testing.assert_array_equal(trimmed, expected)
    # A weak pixel enclosed by strong ones stays (a roof's darker middle).
    excess[4, 4] = 1.0
    np.testing.assert_array_equal(trim_blur_rims(mask, excess, 0.15), expected)
    # Off at share 0; NaN excess counts as no excess.
    np.testing.assert_array_equal(trim_blur_rims(mask, excess, 0.0), mask)
    excess[2, 2] = np.nan
    np.testing.assert_array_equal(trim_blur_rims(mask, excess, 0.15), expected)


def test_a_bright_roofs_blur_rim_is_not_part_of_its_structure(
    make_composite: Callable[..., Composite], composite: Callable[..., Composite]
) -> None:
    """A bright new roof seen through the point spread lends its neighbours an excess of several
    noise units: without the trim its structure is a pixel wider all round (IoU 0.73 with the
    roof); with it, the roof. The plain pixel map is not trimmed."""
    rng = np.random.default_rng(11)
    before = make_composite(grid=GRID, bands=L2A).reflectance
    after = before.copy()
    after[(slice(None), *BLOCK)] = 0.6
    after = ndi.gaussian_filter(after, (0, 0.5, 0.5))
    noise = rng.normal(0, 0.008, size=(2, *before.shape)).astype(np.float32)
    pair = composite(before + noise[0], L2A, "before"), composite(after + noise[1], L2A, "after")
    config = dataclasses.replace(ChangeConfig(), coregister=False)
    on = detect_change(*pair, config)
    off = detect_change(*pair, dataclasses.replace(config, rim_share=0.0))
    truth = np.zeros(GRID.shape, bool)
    truth[BLOCK] = True
    np.testing.assert_array_equal(on.mask, off.mask)
    assert on.structure_mask[truth].mean() > 0.9
    assert not (on.structure_mask & ~off.structure_mask).any()
    assert _iou(on.structure_mask, truth) > 0.95 and _iou(off.structure_mask, truth) < 0.8


def test_trim_blur_rims_never_splits_nor_loses_an_object() -> None:
    shape = (12, 30)
    # Two strong blobs joined by a weak bridge: trimming would count one change twice.
    left, excess = _object(shape, (slice(4, 7), slice(3, 6)), 40.0, 2.0)
    right, right_excess = _object(shape, (slice(4, 7), slice(9, 12)), 40.0, 2.0)
    mask = left | right
    mask[5, 6:9] = True
    excess = np.maximum(excess, right_excess)
    excess[5, 6:9] = np.maximum(excess[5, 6:9], 2.0)
    np.testing.assert_array_equal(trim_blur_rims(mask, excess, 0.15), mask)
    # A core under the minimum mapping unit keeps its rim; at or above it, it does not.
    small, small_excess = _object(shape, (slice(4, 5), slice(20, 22)), 40.0, 3.0)
    assert trim_blur_rims(small, small_excess, 0.15, min_pixels=3).sum() == small.sum()
    assert trim_blur_rims(small, small_excess, 0.15, min_pixels=2).sum() == 2


@pytest.mark.parametrize("radius", [0, 1, 2, 4])
def test_neighbour_range_is_scipys_min_and_max_filters_to_the_bit(radius: int) -> None:
    # The reference: scipy's filters over the (2r+1)² window with the edge repeated ("nearest"),
    # NaN ignored; images smaller than the window, NaN and ±inf included.
    rng = np.random.default_rng(radius)
    for shape in [(1, 1), (2, 3), (9, 1), (23, 17)]:
        before = rng.uniform(0, 0.4, shape).astype(np.float32)
        before[rng.uniform(size=shape) < 0.2] = np.nan
        before[rng.uniform(size=shape) < 0.05] = np.inf
        before[rng.uniform(size=shape) < 0.05] = -np.inf
        low, high = neighbour_range(before, radius)
        finite = np.isfinite(before)
        size = 2 * radius + 1
        expected_low = ndi.minimum_filter(
            np.where(finite, before, np.inf), size=size, mode="nearest"
        )
        expected_high = ndi.maximum_filter(
            np.where(finite, before, -np.inf), size=size, mode="nearest"
        )
        assert low.dtype == high.dtype == np.float32
        np.testing.assert_array_equal(low, expected_low)
        np.testing.assert_array_equal(high, expected_high)


def test_subpixel_misregistration_is_change_but_not_a_structure(
    pair: Callable[..., tuple[Composite, Composite]],
) -> None:
    """A 0.45 px shift of a textured landscape, left uncorrected, lights up edges in the plain
    pixel decision; the structure mask keeps only the new roof."""
    before, after = pair(shift=(0.45, -0.3))
    config = dataclasses.replace(ChangeConfig(), coregister=False, z_threshold=4.0, z_low=2.0)
    change = detect_change(before, after, config)
    truth = np.zeros(GRID.shape, bool)
    truth[BLOCK] = True
    near = ndi.binary_dilation(truth, iterations=3)
    assert (change.mask & ~near).sum() >= 40  # edges lit up in the plain decision
    _, structure = change.structures
    assert structure[BLOCK].mean() > 0.9
    assert (structure & ~near).sum() <= 0.1 * (change.mask & ~near).sum()


def test_structures_grow_down_to_their_own_low_threshold(
    pair: Callable[..., tuple[Composite, Composite]],
) -> None:
    """The structure mask is seeded at structure_z_threshold and grown down to structure_z_low
    of the tolerant score, whatever the plain map's z_low; objects' confidence starts there."""
    before, roof = pair()
    block = np.zeros(GRID.shape, bool)
    block[BLOCK] = True
    apron = ndi.binary_dilation(block, iterations=3) & ~block  # graded ground around the roof
    after = dataclasses.replace(roof, reflectance=roof.reflectance + np.float32(0.03) * apron)
    # (without the rim trim, which takes a bright roof's faint rim back: tested below)
    base = dataclasses.replace(ChangeConfig(), coregister=False, rim_share=0.0)
    wide = detect_change(before, after, dataclasses.replace(base, structure_z_low=1.0))
    tight = detect_change(before, after, dataclasses.replace(base, structure_z_low=6.0))
    np.testing.assert_array_equal(wide.mask, tight.mask)  # the pixel map keeps z_low
    np.testing.assert_array_equal(wide.structure_score, tight.structure_score)
    grown = wide.structure_mask & ~tight.structure_mask
    assert grown.any() and not (tight.structure_mask & ~wide.structure_mask).any()
    z = wide.structure_score[grown]
    assert (z >= 1.0).all() and (z < 6.0).all()
    assert (wide.structure_low, tight.structure_low) == (1.0, 6.0)
    assert wide.low_threshold == tight.low_threshold == base.z_low
    # Confidence rises from 0 at the floor the mask grew down to (1, not z_low's 3): read on a
    # score scaled down to between the two thresholds, where the floor makes the difference.
    faint = dataclasses.replace(wide, structure_score=wide.structure_score / np.float32(40))
    objects = extract_objects(faint, base)
    assert objects and all(1.0 < o.mean_score < base.z_low + 2 for o in objects)
    span = base.structure_z_threshold - 1.0
    for o in objects:
        assert o.confidence == pytest.approx(1.0 - np.exp(-(o.mean_score - 1.0) / span))


def test_a_deepening_shadow_is_change_but_not_a_structure(
    make_composite: Callable[..., Composite], composite: Callable[..., Composite]
) -> None:
    """A patch of bare ground darkened by one factor in every band (a shadow lengthening with the
    season) stays in the pixel map, but with `shadow_gate` it seeds no structure; a patch
    darkened unevenly across the bands (a new dark surface) and a new roof stay structures, with
    the same footprints. Noise as in monthly composites (medians of a few dates)."""
    ground = make_composite(grid=GRID, bands=L2A, arid=True).reflectance
    changed = ground.copy()
    shadow = (slice(None), slice(30, 33), slice(20, 44))  # 3 x 24 px
    paved = (slice(None), slice(110, 116), slice(100, 110))
    changed[(slice(None), *BLOCK)] = 0.6
    changed[shadow] *= np.float32(0.8)
    changed[paved] *= np.linspace(0.95, 0.55, len(L2A), dtype=np.float32)[:, None, None]
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.0015, size=(2, *ground.shape)).astype(np.float32)
    before = composite(ground + noise[0], L2A, "before")
    after = composite(changed + noise[1], L2A, "after")
    base = dataclasses.replace(ChangeConfig(), coregister=False)
    on = detect_change(before, after, base)
    off = detect_change(before, after, dataclasses.replace(base, shadow_gate=False))
    np.testing.assert_array_equal(on.mask, off.mask)  # the pixel map keeps it
    np.testing.assert_array_equal(on.score, off.score)
    assert on.mask[shadow[1:]].mean() > 0.9
    assert off.structure_mask[shadow[1:]].mean() > 0.9
    assert not on.structure_mask[shadow[1:]].any()
    for kept in (BLOCK, paved[1:]):
        assert on.structure_mask[kept].mean() > 0.9
        assert on.structure_mask[kept].sum() == off.structure_mask[kept].sum()


def test_the_before_range_computed_once_gives_the_same_change(
    pair: Callable[..., tuple[Composite, Composite]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every period is compared with one baseline: its neighbourhood ranges, computed once and
    passed in, and its land-cover classes, fitted once per set of pixels both dates see, give
    each comparison exactly what computing them inside gives; a range of another composite is
    refused, not used."""
    import changedet.core.change as change_module

    before, after = pair(shift=(0.45, -0.3))
    _, other = pair(block=False)
    holed = dataclasses.replace(other, reflectance=other.reflectance.copy())
    holed.reflectance[:, :10, :10] = np.nan  # a cloud with no clear date: fewer pixels seen
    config = ChangeConfig()
    known = before_range(before, config)
    assert known is not None and set(known.ranges) == set(before.bands)
    fitted = []
    fit = change_module.kmeans_classes
    monkeypatch.setattr(
        change_module, "kmeans_classes", lambda *a, **k: fitted.append(1) or fit(*a, **k)
    )
    for later in (after, other, holed, other):
        alone = detect_change(before, later, config)
        shared = detect_change(before, later, config, known_before=known)
        for name in ("score", "mask", "structure_score", "structure_mask"):
            np.testing.assert_array_equal(getattr(shared, name), getattr(alone, name))
        for layer, values in alone.indicators.items():
            np.testing.assert_array_equal(shared.indicators[layer], values)
    # the shared before's classes, fitted once per set of pixels seen: the shifted after's (its
    # edge moved out), all of them, all but the hole; `other` again takes its fit
    assert len(fitted) == 3
    with pytest.raises(ValueError, match="another composite"):
        detect_change(after, other, config, known_before=known)
    assert before_range(before, dataclasses.replace(config, tolerance_px=0)) is None


def test_default_config_finds_the_block_and_nothing_else(
    pair: Callable[..., tuple[Composite, Composite]],
) -> None:
    before, after = pair()
    # A strong planted block in a small scene biases phase correlation (tested in test_coreg).
    config = dataclasses.replace(ChangeConfig(), coregister=False)
    change = detect_change(before, after, config)
    truth = np.zeros(GRID.shape, bool)
    truth[BLOCK] = True
    # Smoothing (sigma 1 px) and the point spread widen a strong object by at most three pixels.
    assert change.mask[truth].all()
    assert not (change.mask & ~ndi.binary_dilation(truth, iterations=3)).any()
    objects = extract_objects(change, ChangeConfig())
    _, structure = change.structures  # the point-spread rim is explained by its neighbours
    assert structure[truth].all() and not (structure & ~change.mask).any()
    assert len(objects) == 1 and objects[0].n_pixels == int(structure.sum())


def test_band_change_codes_known_answer() -> None:
    """Eighths of each band's noise, rounded and clipped to int8; unobserved pixels coded apart."""
    delta = np.array([[[0.01, -0.02, 0.5]], [[0.0, 0.003, -0.5]]], dtype=np.float32)
    noise = np.array([0.01, 0.002], dtype=np.float32)
    observed = np.array([[True, True, True]])
    codes = band_change_codes(delta, noise, observed)
    assert codes.dtype == np.int8
    assert codes.tolist() == [[[8, -16, 127]], [[0, 12, -127]]]
    observed[0, 1] = False
    delta[:, 0, 1] = np.nan  # what an unobserved pixel holds
    codes = band_change_codes(delta, noise, observed)
    assert codes[:, 0, 1].tolist() == [BAND_CHANGE_UNOBSERVED] * 2
    assert codes[:, 0, 0].tolist() == [8, 0]


def test_a_period_keeps_its_band_change_codes_where_scored(
    pair: Callable[..., tuple[Composite, Composite]],
) -> None:
    before, after = pair()
    assert detect_change(before, after, ChangeConfig()).band_change is None  # only when asked
    change = detect_change(before, after, ChangeConfig(), with_band_change=True)
    codes = change.band_change
    assert codes is not None and codes.shape == (len(L2A), *GRID.shape)
    inside = codes[(slice(None), *BLOCK)].astype(float)
    assert (inside > 8 * 3).all()  # the new roof is brighter by many noise units in every band
    unchanged = codes[:, :40, :40].astype(float)
    assert np.abs(np.median(unchanged, axis=(1, 2))).max() <= 2  # a quarter of a noise unit


def test_planted_offset_and_gain_alone_are_not_change(
    pair: Callable[..., tuple[Composite, Composite]],
) -> None:
    before, after = pair(block=False)
    change = detect_change(before, after, ChangeConfig())
    assert change.mask.sum() == 0


def test_planted_shift_is_measured_reported_and_corrected(
    pair: Callable[..., tuple[Composite, Composite]],
) -> None:
    before, after = pair(block=False, shift=(0.0, 0.8))
    change = detect_change(before, after, ChangeConfig())
    assert change.shift_corrected
    assert abs(change.shift_px[0]) < 0.1 and abs(change.shift_px[1] + 0.8) < 0.1
    assert change.mask.sum() == 0  # corrected: the shifted parcel edges are not change
    off = detect_change(before, after, dataclasses.replace(ChangeConfig(), coregister=False))
    assert not off.shift_corrected and off.shift_px == (0.0, 0.0)
    # Uncorrected, the 0.8 px shift reads as stronger change along the parcel edges.
    assert np.nanmax(off.score) > 1.5 * np.nanmax(change.score)


def test_ten_band_l1c_input_and_nan_pixels(
    pair: Callable[..., tuple[Composite, Composite]],
) -> None:
    bands = (
        "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
        "nir09", "cirrus", "swir16", "swir22",
    )  # fmt: skip
    before, after = pair(bands)
    # The ground is invisible in the cirrus band (B10, water-vapour absorption): a flat ~0.001.
    rng = np.random.default_rng(5)
    ci = bands.index("cirrus")
    before.reflectance[ci] = 0.0012 + rng.normal(0, 1e-4, GRID.shape)
    after.reflectance[ci] = 0.0013 + rng.normal(0, 1e-4, GRID.shape)
    after.reflectance[:, 10:20, 10:30] = np.nan  # unobserved (cloud) in the after period
    change = detect_change(before, after, dataclasses.replace(ChangeConfig(), coregister=False))
    assert np.isnan(change.score[10:20, 10:30]).all() and not change.mask[10:20, 10:30].any()
    truth = np.zeros(GRID.shape, bool)
    truth[BLOCK] = True
    assert change.mask[truth].all()
    assert not (change.mask & ~ndi.binary_dilation(truth, iterations=3)).any()
    assert {"ndvi_loss", "ndbi_gain", "bsi_gain", "brightness_gain", "cva"} <= set(
        change.indicators
    )


def test_robust_z_and_hysteresis_decision() -> None:
    values = np.concatenate([np.linspace(-1, 1, 1001), [50.0]]).astype(np.float32)
    z = robust_z(values)
    assert abs(float(np.median(z))) < 1e-6 and z[-1] > 50
    score = np.zeros((20, 20), np.float32)
    score[5:10, 5:10] = 4.0  # weak region attached to a seed
    score[7, 7] = 9.0
    score[14:18, 14:18] = 4.0  # weak region without a seed: dropped
    score[0, 19] = 12.0  # a seed smaller than the minimum size: dropped
    mask = decide(score, high=8.0, low=3.0, min_pixels=4)
    expected = np.zeros_like(mask)
    expected[5:10, 5:10] = True
    np.testing.assert_array_equal(mask, expected)
    # Seeds taken from another score: the region seeded there is kept, the one seeded here is not
    seeds = np.zeros_like(score)
    seeds[15, 15] = 9.0
    seeded = decide(score, high=8.0, low=3.0, min_pixels=4, seeds=seeds)
    expected = np.zeros_like(mask)
    expected[14:18, 14:18] = True
    np.testing.assert_array_equal(seeded, expected)


def test_grids_must_match(pair: Callable[..., tuple[Composite, Composite]]) -> None:
    before, after = pair()
    other = dataclasses.replace(after, grid=GRID.window(1, 0, 150, 160))
    with pytest.raises(ValueError, match="different grids"):
        detect_change(before, other, ChangeConfig())


def test_greening_and_water_turbidity_are_not_new_structures(
    pair: Callable[..., tuple[Composite, Composite]],
) -> None:
    bands = L2A  # blue, green, red, nir, swir16, swir22
    before_c, after_c = pair(bands)
    before, after = before_c.reflectance.copy(), after_c.reflectance.copy()
    gains = np.linspace(0.85, 1.2, len(bands), dtype=np.float32)[:, None, None]
    field = (slice(20, 30), slice(20, 32))  # bare field -> dense crop
    before[(slice(None), *field)] = np.array([0.10, 0.14, 0.18, 0.25, 0.30, 0.25])[:, None, None]
    crop = np.array([0.04, 0.08, 0.04, 0.45, 0.22, 0.10])[:, None, None]
    after[(slice(None), *field)] = (crop * gains + 0.03)[:, 0:1, 0:1]
    river = (slice(110, 120), slice(100, 130))  # clear water -> turbid water
    before[(slice(None), *river)] = np.array([0.06, 0.05, 0.03, 0.02, 0.01, 0.01])[:, None, None]
    turbid = np.array([0.10, 0.14, 0.14, 0.08, 0.03, 0.02])[:, None, None]
    after[(slice(None), *river)] = (turbid * gains + 0.03)[:, 0:1, 0:1]
    b = dataclasses.replace(before_c, reflectance=before)
    a = dataclasses.replace(after_c, reflectance=after)
    off = dataclasses.replace(
        ChangeConfig(), coregister=False, vegetation_gate=False, water_gate=False
    )
    ungated = detect_change(b, a, off)
    assert ungated.mask[field].mean() > 0.5 and ungated.mask[river].mean() > 0.5  # strong change
    gated = detect_change(b, a, dataclasses.replace(off, vegetation_gate=True, water_gate=True))
    assert not gated.mask[field].any() and not gated.mask[river].any()
    assert gated.mask[BLOCK].all()  # the new bright roof is still found


L1C = (
    "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
    "nir09", "cirrus", "swir16", "swir22",
)  # fmt: skip
CLOUD = (slice(15, 35), slice(110, 140))
SHADOW = (slice(95, 115), slice(85, 115))  # the cloud displaced by (+80, -25) px: sun to the north


@pytest.fixture(scope="module")
def cloudy_pair(
    pair: Callable[..., tuple[Composite, Composite]],
) -> Callable[..., tuple[Composite, Composite]]:
    """L1C pair with a new bright roof at BLOCK and, optionally, a cumulus cloud and its shadow on
    the after date. The cirrus band sees only the cloud (the ground is invisible at 1375 nm)."""

    def build(*, cloud: bool) -> tuple[Composite, Composite]:
        before_c, after_c = pair(L1C)
        before, after = before_c.reflectance.copy(), after_c.reflectance.copy()
        rng = np.random.default_rng(11)
        ci = L1C.index("cirrus")
        before[ci] = 0.0012 + rng.normal(0, 1e-4, GRID.shape)
        after[ci] = 0.0013 + rng.normal(0, 1e-4, GRID.shape)
        after[ci][BLOCK] += 0.0003  # a bright roof leaks a trace into B10 at most: not a cloud
        if cloud:
            core = np.zeros(GRID.shape, np.float32)
            core[CLOUD] = 1.0
            core = ndi.gaussian_filter(core, 2.0)  # soft edges, like haze around a cumulus
            other = [i for i in range(len(L1C)) if i != ci]
            after[other] = after[other] * (1 - core) + 0.55 * core
            after[ci] += 0.006 * core
            after[(slice(None), *SHADOW)] *= 0.45  # direct sun blocked: darker in every band
            after[ci][SHADOW] /= 0.45  # ...but B10 sees no ground, so no shadow there
        return (
            dataclasses.replace(before_c, reflectance=before.astype(np.float32)),
            dataclasses.replace(after_c, reflectance=after.astype(np.float32)),
        )

    return build


def test_l1c_cloud_and_its_shadow_are_masked_while_a_bright_roof_is_kept(
    cloudy_pair: Callable[..., tuple[Composite, Composite]],
) -> None:
    config = dataclasses.replace(ChangeConfig(), coregister=False)
    before, after = cloudy_pair(cloud=True)
    change = detect_change(before, after, config)
    assert change.mask[BLOCK].all()  # the bright new roof stays change
    assert not change.mask[CLOUD].any() and not change.mask[SHADOW].any()
    assert change.indicators["cloud"][CLOUD].mean() > 0.9
    assert change.indicators["cloud"][BLOCK].sum() == 0
    assert change.indicators["cloud_shadow"][BLOCK].sum() == 0
    assert np.isnan(change.score[CLOUD]).mean() > 0.9  # unobserved, not "no change"
    # Without the cirrus band (L2A composites) nothing is screened: both read as change.
    keep = [i for i, n in enumerate(L1C) if n != "cirrus"]
    bands = tuple(L1C[i] for i in keep)
    plain = detect_change(
        dataclasses.replace(before, bands=bands, reflectance=before.reflectance[keep]),
        dataclasses.replace(after, bands=bands, reflectance=after.reflectance[keep]),
        config,
    )
    assert plain.mask[CLOUD].mean() > 0.9 and plain.mask[SHADOW].sum() > 50
    # Every shadow pixel the plain detector calls change is screened as cloud shadow.
    assert (change.indicators["cloud_shadow"][SHADOW] >= plain.mask[SHADOW]).all()


def test_cirrus_band_without_clouds_changes_nothing(
    cloudy_pair: Callable[..., tuple[Composite, Composite]],
) -> None:
    config = dataclasses.replace(ChangeConfig(), coregister=False)
    before, after = cloudy_pair(cloud=False)
    change = detect_change(before, after, config)
    keep = [i for i, n in enumerate(L1C) if n != "cirrus"]
    bands = tuple(L1C[i] for i in keep)
    plain = detect_change(
        dataclasses.replace(before, bands=bands, reflectance=before.reflectance[keep]),
        dataclasses.replace(after, bands=bands, reflectance=after.reflectance[keep]),
        config,
    )
    np.testing.assert_array_equal(change.mask, plain.mask)
    assert change.mask[BLOCK].all() and change.indicators["cloud"].sum() == 0
