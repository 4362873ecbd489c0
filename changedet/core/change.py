"""Per-pixel change evidence between two composites, and the change decisions.

Steps (`detect_change`, each a pure function on arrays):
1. `_align`: measure the sub-pixel shift of `after` against `before` (phase correlation) and
   correct it above `coreg_threshold_px`;
2. relative radiometric normalisation of `after` to `before` on no-change pixels;
3. `_evidence`: two complementary change magnitudes: the change vector over all bands in noise
   units (CVA), and the class-conditional change (`core.classes`): a harvested field changes like
   other fields did, a new roof is not normal for either date's class;
4. `_gates`: damp evidence that ends in vegetation or stays on water;
5. `_scores`: smoothed (spatial context), robust-z scored against the pair's own distribution
   (change is rare, so median/MAD describe no-change), mean of the two; decided by hysteresis
   (seeds above `z_threshold`, grown down to `z_low`), minimum mapping unit, holes filled;
6. the same again with the evidence damped where the change is explained by the neighbourhood
   (`_tolerance`): a pixel whose "after" value lies within the range of its `tolerance_px`
   neighbours "before" is what sub-pixel misregistration, resampling, shadow length and blur
   produce; real new construction lies outside. Seeded at `structure_z_threshold` (with
   `shadow_gate`, not where every 10 m band darkened by one factor: a deepening shadow), grown
   down to `structure_z_low`, this is `structure_mask`, what structures are cut from; `mask`
   stays the plain pixel decision (OSCD pixel F1 is measured on it);
7. L1C pairs with the cirrus band: clouds and their shadows are unobserved, not change
   (`core.cloudscreen`);
8. evidence layers (dNDVI, dNDBI, dBSI, dbrightness, spectral flattening) kept for the analyst and
   for the structure kinds.

No per-place tuning: every threshold is in robust-z units of that pair's own score distribution.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from changedet.config import ChangeConfig
from changedet.core.classes import class_conditional_change, kmeans_classes
from changedet.core.cloudscreen import cloud_and_shadow
from changedet.core.coreg import apply_shift, measure_shift
from changedet.core.mask import shifted_extreme
from changedet.core.normalize import fast_median, relative_normalize
from changedet.core.stats import SAMPLES, robust_z, sample_index, smooth_reach, smooth_reusing
from changedet.errors import DataError
from changedet.models import ChangeMap, Composite, Grid

__all__ = [
    "CHANGE_VERSION",
    "COREG_BANDS",
    "DETECT_BANDS",
    "BeforeRange",
    "before_range",
    "decide",
    "detect_change",
    "tolerant_excess",
    "trim_blur_rims",
]

# Bands used for detection when present (atmospheric bands B01/B09/B10 are left out on purpose).
DETECT_BANDS = (
    "blue",
    "green",
    "red",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "swir16",
    "swir22",
)
VISIBLE_BANDS = ("blue", "green", "red")
# The 10 m bands a shadow darkens alike (`_shadow_weight`); the 20 m bands blur a one-pixel shadow.
SHADOW_BANDS = ("blue", "green", "red", "nir")
_SHADOW_DARKER = 0.95  # every shadow band at most this share of before...
_SHADOW_SPREAD = (1.05, 1.15)  # ...and their ratios within this factor of each other: 0 -> 1
# Bump whenever `detect_change` (or `objects.extract_objects`) gives another answer from the same
# inputs, so a period's change kept between runs (the monitor's period cache) is not taken for
# the new answer.
CHANGE_VERSION = "change-6"
# How far a strong change lends its neighbours excess: the point spread and bilinear resampling of
# the 20 m bands, each about a pixel (`trim_blur_rims`).
BLUR_REACH_PX = 2
# `band_change_codes`: eighths of a noise unit in int8 (up to 15.9 noise units, finer than any
# median the tracker tests), and the code of an unobserved pixel.
BAND_CHANGE_STEP = 8
BAND_CHANGE_UNOBSERVED = -128
# Band measured for co-registration, first present wins: red has urban texture and moves less with
# vegetation phenology than nir.
COREG_BANDS = ("red", "green", "nir", "blue")


@dataclass
class _Pair:
    """The detection bands of both composites (float32 views where possible) and their grid."""

    bands: tuple[str, ...]
    before: np.ndarray
    after: np.ndarray


def decide(
    score: np.ndarray,
    *,
    high: float,
    low: float,
    min_pixels: int,
    fill: bool = True,
    seeds: np.ndarray | None = None,
) -> np.ndarray:
    """Hysteresis threshold (seeds >= high grown through >= low), then drop objects smaller than
    `min_pixels` (8-connected) and fill enclosed holes. `seeds`: the score the seeds are taken
    from, when not `score` itself."""
    s = np.where(np.isfinite(score), score, -np.inf)
    strong = (s if seeds is None else np.where(np.isfinite(seeds), seeds, -np.inf)) >= high
    weak = s >= low
    labels, n = ndi.label(weak, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(score.shape, dtype=bool)
    keep = np.zeros(n + 1, dtype=bool)
    keep[np.unique(labels[strong])] = True
    keep[0] = False
    if min_pixels > 1:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep &= sizes >= min_pixels
    mask: np.ndarray = keep[labels]
    return _fill_holes(mask) if fill else mask


def trim_blur_rims(
    mask: np.ndarray, excess: np.ndarray, share: float, min_pixels: int = 1
) -> np.ndarray:
    """`mask` without the blur rim of its strong objects: per 8-connected object, the pixels
    whose `excess` is under `share` of the object's peak and that the outside reaches through
    such pixels. A strong change seen through the point spread, resampling and smoothing lends
    its neighbours an excess of a few noise units; a faint object (peak under
    `min_excess / share`) keeps every pixel. Only pixels within `BLUR_REACH_PX` of the strong
    ones are a rim: wider faint ground around them (a graded apron) is change of its own. Pixels
    enclosed by stronger ones stay (a roof's darker middle). An object the trim would cut in
    pieces, or leave under `min_pixels`, keeps all its pixels: one change counted twice, or
    lost, is worse than a wide outline."""
    eight = np.ones((3, 3), bool)
    labels, n = ndi.label(mask, structure=eight)
    if n == 0:
        return mask
    values = np.where(mask, np.nan_to_num(excess, nan=0.0), 0.0)
    peak = np.zeros(n + 1, np.float64)
    np.maximum.at(peak, labels[mask], values[mask])  # (ndi.maximum sorts the whole image)
    level = share * peak
    level[0] = np.inf
    strong = mask & (values >= level[labels])
    if np.array_equal(strong, mask):
        return mask  # no pixel under its object's share: nothing to trim
    near = ndi.binary_dilation(strong, structure=eight, iterations=BLUR_REACH_PX)
    reach, n_reach = ndi.label(~mask | (near & ~strong), structure=eight)
    touches_outside = np.zeros(n_reach + 1, bool)
    touches_outside[reach[~mask]] = True
    touches_outside[0] = False
    trimmed = mask & ~touches_outside[reach]
    # An object keeps all its pixels where the trim splits it or leaves it under the unit.
    parts, n_kept = ndi.label(trimmed, structure=eight)
    inside = parts > 0
    object_of = np.zeros(n_kept + 1, np.int64)
    object_of[parts[inside]] = labels[inside]  # a part lies within one object
    n_parts = np.bincount(object_of[1:], minlength=n + 1)
    size = np.bincount(labels[inside], minlength=n + 1)
    keep_all = (n_parts != 1) | (size < min_pixels)
    keep_all[0] = False
    return trimmed | (keep_all[labels] & mask)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """ndi.binary_fill_holes(mask): background regions (4-connected, as its default structure)
    that do not touch the image border are holes. One labelling instead of iterated dilation."""
    background, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    outside[0] = False  # label 0: the mask itself
    filled: np.ndarray = ~outside[background]
    return filled


def _window_extreme(values: np.ndarray, radius: int, pick: np.ufunc) -> np.ndarray:
    """`pick` (np.minimum or np.maximum) of (H, W) `values` over each pixel's (2r+1)²
    neighbourhood, cut at the image's edge: scipy's minimum/maximum_filter with mode="nearest"
    to the bit, as `radius` one-step extremes along rows, then along columns (about 7x faster
    than scipy's filters for r = 1)."""
    out = values
    for axis in (1, 0):
        for _ in range(radius):
            out = shifted_extreme(out, axis=axis, pick=pick)
    return out


def neighbour_range(before: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, high): the min and max of `before` (H, W) over each pixel's (2r+1)² neighbourhood,
    NaN neighbours ignored (±inf where all are NaN)."""
    finite = np.isfinite(before)
    low = _window_extreme(np.where(finite, before, np.inf), radius, np.minimum)
    high = _window_extreme(np.where(finite, before, -np.inf), radius, np.maximum)
    return low, high


def tolerant_excess(
    after: np.ndarray,
    before: np.ndarray,
    radius: int,
    *,
    known_range: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """How far `after` (H, W) lies outside the range of `before` over a (2r+1)² neighbourhood:
    0 where some neighbour before explains the value after (a shifted edge, a blurred line, a
    shadow one pixel longer), signed distance to the range otherwise. NaN neighbours are ignored.
    known_range: `neighbour_range(before, radius)`, when already computed."""
    low, high = known_range if known_range is not None else neighbour_range(before, radius)
    out: np.ndarray = after - np.clip(after, low, high)
    return out


@dataclass(frozen=True)
class BeforeRange:
    """`neighbour_range` of every detection band of one "before" composite. Each period is
    compared with the same baseline, and these filters are the costliest step that depends on
    the before date alone: computed once (`before_range`), passed to every `detect_change`.
    It also holds the before's land-cover classes (`kmeans_classes`) by the pixels they were
    fitted on: a period that sees the pixels another did takes them instead of fitting again."""

    source: np.ndarray  # the composite's reflectance it was computed from (checked on use)
    radius: int
    ranges: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: dict[tuple[bytes, int], np.ndarray] = field(default_factory=dict, compare=False)
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def classes_of(self, before: np.ndarray, valid: np.ndarray, n_classes: int) -> np.ndarray:
        """`kmeans_classes(before, valid, n_classes=n_classes)`, fitted once per `valid`."""
        key = (hashlib.blake2b(np.packbits(valid).data, digest_size=20).digest(), n_classes)
        with self.lock:
            found = self.classes.get(key)
        if found is None:  # two threads may both fit one: the same answer, kept once
            found = kmeans_classes(before, valid, n_classes=n_classes)
            with self.lock:
                while len(self.classes) >= _KEPT_CLASSES:
                    del self.classes[next(iter(self.classes))]
                self.classes[key] = found
        return found


_KEPT_CLASSES = 4  # distinct valid masks a run's periods have (most have one: full coverage)


def before_range(before: Composite, config: ChangeConfig) -> BeforeRange | None:
    """The neighbourhood ranges `detect_change(before, ...)` needs; None when it needs none."""
    if config.tolerance_px <= 0:
        return None
    ranges = {
        band: neighbour_range(
            before.reflectance[before.bands.index(band)].astype(np.float32, copy=False),
            config.tolerance_px,
        )
        for band in DETECT_BANDS
        if band in before.bands
    }
    return BeforeRange(before.reflectance, config.tolerance_px, ranges)


def _index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = (a - b) / (a + b)
    return out


def _all_finite(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: finite in every band of a (B, H, W) array (band by band, no (B, H, W) mask)."""
    out = np.isfinite(image[0])
    for band in image[1:]:
        out &= np.isfinite(band)
    return out


def _band_subset(reflectance: np.ndarray, index: list[int]) -> np.ndarray:
    """float32 bands `index` of a (B, H, W) array: a view when they are consecutive (no copy of
    the image; detect_change never writes to the inputs), else a copy."""
    if index == list(range(index[0], index[0] + len(index))):
        chosen = reflectance[index[0] : index[0] + len(index)]
    else:
        chosen = reflectance[index]
    return chosen.astype(np.float32, copy=False)


def _pair(before: Composite, after: Composite) -> _Pair:
    if before.grid != after.grid:
        raise DataError(
            "detect_change: the two composites are on different grids; build both on one grid"
        )
    bands = tuple(b for b in DETECT_BANDS if b in before.bands and b in after.bands)
    if not bands:
        raise DataError(
            f"detect_change: no detection band among {before.bands}; read some of {DETECT_BANDS}"
        )
    return _Pair(
        bands,
        _band_subset(before.reflectance, [before.bands.index(n) for n in bands]),
        _band_subset(after.reflectance, [after.bands.index(n) for n in bands]),
    )


def _align(pair: _Pair, config: ChangeConfig) -> tuple[np.ndarray, tuple[float, float], bool]:
    """`after` shifted onto `before` when the measured shift exceeds the threshold."""
    if not config.coregister:
        return pair.after, (0.0, 0.0), False
    band = next((pair.bands.index(n) for n in COREG_BANDS if n in pair.bands), 0)
    shift = measure_shift(pair.before[band], pair.after[band])
    if config.coreg_threshold_px < float(np.hypot(*shift)) <= config.max_shift_px:
        return apply_shift(pair.after, shift), shift, True
    return pair.after, shift, False


def _band_noise(delta: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each band's robust spread of the difference (1.4826 MAD over a subsample), floored."""
    pick = np.flatnonzero(valid.ravel())
    pick = pick[sample_index(pick.size, SAMPLES)]
    d = delta.reshape(len(delta), -1)[:, pick]
    mad = fast_median(np.abs(d - fast_median(d)[:, None]))
    noise = np.empty(len(delta), dtype=np.float32)
    for i in range(len(delta)):
        noise[i] = max(1.4826 * float(mad[i]), 1e-5)
    return noise


def band_change_codes(delta: np.ndarray, noise: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(B, H, W) int8: each band's change in noise units times BAND_CHANGE_STEP, rounded and
    clipped to +-127; BAND_CHANGE_UNOBSERVED where `observed` is False. A quarter of the bytes of
    the float32 change, so a year of periods can be kept for the tracker."""
    codes = np.empty(delta.shape, dtype=np.int8)
    scaled = np.empty(delta.shape[1:], dtype=np.float32)
    unobserved = ~observed
    for i in range(len(delta)):
        np.multiply(delta[i], np.float32(BAND_CHANGE_STEP / noise[i]), out=scaled)
        scaled[unobserved] = 0.0  # NaN has no int8 value
        np.clip(scaled, -127, 127, out=scaled)
        np.rint(scaled, out=scaled)
        codes[i] = scaled
        codes[i][unobserved] = BAND_CHANGE_UNOBSERVED
    return codes


def _cva(delta: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """sqrt(mean over bands of (delta / noise)²), band by band into one buffer (the same
    operations and order as the whole-array expression, without its (B, H, W) temporaries)."""
    cva = np.empty(delta.shape[1:], dtype=np.float32)
    term = np.empty_like(cva)
    for i in range(len(delta)):
        dest = cva if i == 0 else term
        np.divide(delta[i], noise[i], out=dest)
        np.square(dest, out=dest)
        if i > 0:
            cva += term
    np.true_divide(cva, np.intp(len(delta)), out=cva, casting="unsafe")  # as ndarray.mean
    np.sqrt(cva, out=cva)
    return cva


def _gates(b: np.ndarray, a: np.ndarray, bands: Sequence[str], config: ChangeConfig) -> np.ndarray:
    """(H, W) 0..1 weight of the evidence: change that ends in vegetation (crops greening, lawns;
    1 at NDVI after <= 0.3 to 0 at >= 0.5) or that stays on water (turbidity, tides; min MNDWI
    0 -> 0.2) is not evidence of a new structure. Water before and land after is kept."""
    keep = np.ones(b.shape[1:], dtype=np.float32)
    if config.vegetation_gate and {"nir", "red"} <= set(bands):
        ndvi_after = _index(a[bands.index("nir")], a[bands.index("red")])
        keep *= 1.0 - np.clip((ndvi_after - 0.3) / 0.2, 0, 1)
    if config.water_gate and {"green", "swir16"} <= set(bands):
        g, s1 = bands.index("green"), bands.index("swir16")
        wet = np.fmin(_index(b[g], b[s1]), _index(a[g], a[s1]))
        keep *= 1.0 - np.clip(wet / 0.2, 0, 1)
    out: np.ndarray = np.nan_to_num(keep, nan=1.0)
    return out


def _shadow_weight(b: np.ndarray, a: np.ndarray, bands: Sequence[str]) -> np.ndarray | None:
    """(H, W) 0..1: 0 where every 10 m band got darker by about one common factor (each at most
    `_SHADOW_DARKER` of before, the largest ratio after / before within `_SHADOW_SPREAD[0]` of
    the smallest), rising to 1 at a spread of `_SHADOW_SPREAD[1]`; 1 where some band did not
    darken. A shadow lengthening with the season, or a dimmer date, scales a pixel's spectrum;
    a new roof or graded ground changes its shape. None when a band is missing."""
    if not set(SHADOW_BANDS) <= set(bands):
        return None
    high = low = None
    with np.errstate(invalid="ignore", divide="ignore"):
        for name in SHADOW_BANDS:
            i = bands.index(name)
            ratio = a[i] / np.maximum(b[i], np.float32(1e-3))
            high = ratio if high is None else np.fmax(high, ratio)
            low = ratio if low is None else np.fmin(low, ratio)
        assert high is not None and low is not None
        spread = high / np.maximum(low, np.float32(1e-3))
        start, stop = _SHADOW_SPREAD
        weight = np.clip((spread - np.float32(start)) / np.float32(stop - start), 0.0, 1.0)
        weight[~(high <= np.float32(_SHADOW_DARKER))] = 1.0  # some band did not darken (or NaN)
    out: np.ndarray = weight.astype(np.float32, copy=False)
    return out


def _unexplained(
    b: np.ndarray,
    a: np.ndarray,
    noise: np.ndarray,
    cva: np.ndarray,
    radius: int,
    known: Sequence[tuple[np.ndarray, np.ndarray] | None],
    *,
    fraction: float = 1.0,
    match: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The change the neighbourhood cannot explain: its CVA (the CVA of `tolerant_excess`, in
    noise units) and its share of the plain CVA (0..1), both (H, W). known: per band, the
    before's `neighbour_range` when computed already; fraction: the share of the way towards
    the neighbours' range a value may go (`shrunk_range`); match: also explained as far as the
    after spectrum matches one neighbour's before spectrum (`neighbour_match`)."""
    excess = np.empty(cva.shape, dtype=np.float32)
    term = np.empty_like(excess)
    for i in range(len(a)):
        dest = excess if i == 0 else term
        band_range = known[i]
        if band_range is None:
            band_range = neighbour_range(b[i], radius)
        if fraction < 1.0:
            band_range = shrunk_range(band_range, b[i], fraction)
        excess_i = tolerant_excess(a[i], b[i], radius, known_range=band_range)
        np.divide(excess_i, noise[i], out=dest)
        np.square(dest, out=dest)
        if i > 0:
            excess += term
    if match:
        np.fmin(excess, neighbour_match(b, a, noise, radius), out=excess, where=~np.isnan(excess))
    np.sqrt(excess / np.float32(len(a)), out=excess)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.clip(excess / np.maximum(cva, 1e-6), 0.0, 1.0)
    share: np.ndarray = np.nan_to_num(ratio, nan=1.0).astype(np.float32, copy=False)
    return excess, share


def shrunk_range(
    band_range: tuple[np.ndarray, np.ndarray], centre: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """A neighbourhood range (low, high) pulled towards the pixel's own value `centre`:
    `fraction` of the way out to the neighbours' extremes (where `centre` is NaN, as it was)."""
    low, high = band_range
    f = np.float32(fraction)
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isfinite(centre), centre + f * (low - centre), low)
        hi = np.where(np.isfinite(centre), centre + f * (high - centre), high)
    return lo.astype(np.float32, copy=False), hi.astype(np.float32, copy=False)


def neighbour_match(b: np.ndarray, a: np.ndarray, noise: np.ndarray, radius: int) -> np.ndarray:
    """(H, W): over the neighbours within `radius` (not the pixel itself), the smallest sum over
    bands of ((after - that neighbour's before) / noise)²: how far the after spectrum lies from
    the before spectrum it is most like (inf where no neighbour is finite). b, a: (B, H, W)."""
    _, h, w = b.shape
    r = radius
    padded = np.pad(b, ((0, 0), (r, r), (r, r)), constant_values=np.nan)
    best = np.full((h, w), np.inf, dtype=np.float32)
    total = np.empty((h, w), dtype=np.float32)
    term = np.empty_like(total)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            total.fill(0.0)
            for i in range(len(a)):
                np.subtract(a[i], padded[i, r + dy : r + dy + h, r + dx : r + dx + w], out=term)
                np.divide(term, noise[i], out=term)
                np.square(term, out=term)
                total += term
            np.fmin(best, total, out=best)
    return best


def _known_ranges(
    known: BeforeRange | None, before: Composite, bands: Sequence[str], radius: int
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    if known is None:
        return [None] * len(bands)
    if known.source is not before.reflectance or known.radius != radius:
        raise ValueError("detect_change: known_before was computed for another composite")
    return [known.ranges.get(band) for band in bands]


class _Scorer:
    """Scores of weight layers of one pair's evidence: mean robust z of the smoothed, weighted
    CVA and conditional change. The z statistics come from the unweighted evidence, so damping
    never sharpens the scale; its smoothing is done once for every layer asked for."""

    def __init__(self, cva: np.ndarray, cond: np.ndarray, valid: np.ndarray, sigma: float) -> None:
        self.cva, self.cond, self.valid, self.sigma = cva, cond, valid, sigma
        self.normalisers: list[tuple[np.ndarray, np.ndarray]] = []  # one per NaN pattern
        self.ref_cva = smooth_reusing(cva, sigma, self.normalisers)
        self.ref_cond = smooth_reusing(cond, sigma, self.normalisers)

    def __call__(self, weight: np.ndarray) -> np.ndarray:
        sigma, normalisers, valid = self.sigma, self.normalisers, self.valid
        smoothed_cva = smooth_reusing(self.cva * weight, sigma, normalisers)
        z_cva = robust_z(smoothed_cva, valid, reference=self.ref_cva)
        smoothed_cond = smooth_reusing(self.cond * weight, sigma, normalisers)
        z_cond = robust_z(smoothed_cond, valid, reference=self.ref_cond)
        score = 0.5 * (z_cva + z_cond)
        score[~valid] = np.nan
        out: np.ndarray = score.astype(np.float32, copy=False)
        return out


def _structure_seeds(
    scorer: _Scorer,
    weight: np.ndarray,
    shade: np.ndarray | None,
    structure: np.ndarray,
    high: float,
) -> np.ndarray | None:
    """The score structures are seeded from: the tolerant score with the shadow weight applied,
    or None where that changes no seed. A weight <= 1 only lowers scores, so seeds are among the
    pixels the tolerant score seeds; where no pixel within the smoothing's reach of them is
    shaded their score is the same to the bit, and the layer is not computed."""
    if shade is None:
        return None
    shaded = shade < 1.0
    reach = smooth_reach(scorer.sigma)
    if reach > 0:
        shaded = ndi.maximum_filter(shaded, size=2 * reach + 1)
    if not (shaded & (structure >= high)).any():
        return None
    return scorer(weight * shade)


def _indicators(
    before: np.ndarray, after: np.ndarray, bands: Sequence[str]
) -> dict[str, np.ndarray]:
    """Spectral-index changes (after - before) for the bands that are present, and the spectral
    flattening (drop of the blue→SWIR16 normalised slope: new concrete and metal roofs flatten
    the steep spectrum of arid soil; graded soil and berms do not)."""
    pos = {name: i for i, name in enumerate(bands)}
    out: dict[str, np.ndarray] = {}

    def nd(img: np.ndarray, x: str, y: str) -> np.ndarray:
        return _index(img[pos[x]], img[pos[y]])

    if {"nir", "red"} <= pos.keys():
        out["ndvi_loss"] = nd(before, "nir", "red") - nd(after, "nir", "red")
    if {"swir16", "nir"} <= pos.keys():
        out["ndbi_gain"] = nd(after, "swir16", "nir") - nd(before, "swir16", "nir")
    if {"swir16", "red", "nir", "blue"} <= pos.keys():

        def bsi(img: np.ndarray) -> np.ndarray:
            s, r, n, b = (img[pos[k]] for k in ("swir16", "red", "nir", "blue"))
            return _index(s + r, n + b)

        out["bsi_gain"] = bsi(after) - bsi(before)
    if {"blue", "swir16"} <= pos.keys():
        out["spectral_flattening"] = nd(before, "swir16", "blue") - nd(after, "swir16", "blue")
    out["brightness_gain"] = after.mean(axis=0) - before.mean(axis=0)
    return {k: v.astype(np.float32, copy=False) for k, v in out.items()}


def _likelihood(score: np.ndarray, high: float, keep: np.ndarray) -> np.ndarray:
    """0..1 "new structure" likelihood: changed (logistic in the score around the seed threshold)
    and not ending in vegetation or on water."""
    with np.errstate(invalid="ignore", over="ignore"):
        changed = 1.0 / (1.0 + np.exp(-(score - high) / 2.0))
    out: np.ndarray = np.nan_to_num(changed * keep, nan=0.0).astype(np.float32, copy=False)
    return out


def _empty(
    grid: Grid, high: float, low: float, shift: tuple[float, float], corrected: bool
) -> ChangeMap:
    nan = np.full(grid.shape, np.nan, dtype=np.float32)
    none = np.zeros(grid.shape, bool)
    return ChangeMap(
        grid=grid,
        score=nan,
        likelihood=np.zeros(grid.shape, np.float32),
        mask=none,
        threshold=high,
        low_threshold=low,
        shift_px=shift,
        shift_corrected=corrected,
        structure_score=nan,
        structure_mask=none,
    )


def _screen_l1c_clouds(
    before: Composite,
    after: Composite,
    delta: np.ndarray,
    valid: np.ndarray,
    shift: tuple[float, float] | None,
    layers: dict[str, np.ndarray],
) -> np.ndarray | None:
    """Cloud and shadow pixels of an L1C pair (None when the cirrus band is missing)."""
    if "cirrus" not in before.bands or "cirrus" not in after.bands:
        return None
    cirrus_b = before.reflectance[before.bands.index("cirrus")].astype(np.float32)
    cirrus_a = after.reflectance[after.bands.index("cirrus")].astype(np.float32)
    if shift is not None:
        cirrus_a = apply_shift(cirrus_a, shift)
    cloud, shadow = cloud_and_shadow(layers["mask"], delta, cirrus_b, cirrus_a, valid)
    layers["cloud"] = cloud.astype(np.float32)
    layers["cloud_shadow"] = shadow.astype(np.float32)
    screened: np.ndarray = cloud | shadow
    return screened


def detect_change(
    before: Composite,
    after: Composite,
    config: ChangeConfig,
    *,
    seed_threshold: float | None = None,
    known_before: BeforeRange | None = None,
    with_band_change: bool = False,
) -> ChangeMap:
    """Change scores, decided masks and evidence between two composites on one grid.

    The masks seed at `seed_threshold` (default `config.z_threshold`) and grow down to
    `config.z_low`; both are recorded in the ChangeMap so later steps use the same values.
    Works with any band set containing some of DETECT_BANDS (L2A: blue, green, red, nir, swir16,
    swir22; OSCD L1C: all ten 10/20 m bands). NaN pixels in either composite get NaN scores and no
    change. The minimum mapping unit is `config.min_area_m2` over `grid.pixel_area_m2`.
    known_before: `before_range(before, config)`, when several periods share the before.
    with_band_change: also return the per-band change codes (`band_change_codes`), which only the
    tracker's same-change test reads.
    """
    pair = _pair(before, after)
    grid = before.grid
    high = config.z_threshold if seed_threshold is None else seed_threshold
    b = pair.before
    a, shift, corrected = _align(pair, config)
    valid = _all_finite(b)
    valid &= _all_finite(a)
    if valid.sum() < 100:
        return _empty(grid, high, config.z_low, shift, corrected)
    # A shifted `a` is this function's own copy: normalise it in place (a view of the input is not).
    a, _ = relative_normalize(b, a, valid=valid, out=a if corrected else None)
    delta = a - b
    delta[:, ~valid] = np.nan
    noise = _band_noise(delta, valid)
    cva = _cva(delta, noise)
    vis = [pair.bands.index(n) for n in VISIBLE_BANDS if n in pair.bands]
    # class_conditional_change only reads `delta`: a view of consecutive bands spares a copy.
    cond = class_conditional_change(
        b,
        a,
        _band_subset(delta, vis or list(range(len(pair.bands)))),
        valid,
        n_classes=config.n_classes,
        before_classes=(
            None if known_before is None else known_before.classes_of(b, valid, config.n_classes)
        ),
    )
    keep = _gates(b, a, pair.bands, config)
    weights = [keep]
    excess = None
    if config.tolerance_px > 0:
        known = _known_ranges(known_before, before, pair.bands, config.tolerance_px)
        excess, share = _unexplained(
            b,
            a,
            noise,
            cva,
            config.tolerance_px,
            known,
            fraction=config.tolerance_fraction,
            match=config.tolerance_match,
        )
        weights.append(keep * share)
    scorer = _Scorer(cva, cond, valid, config.smooth_sigma_px)
    scores = [scorer(w) for w in weights]
    min_pixels = max(1, int(np.ceil(config.min_area_m2 / grid.pixel_area_m2 - 1e-9)))
    layers: dict[str, np.ndarray] = {}
    masks = []
    structure_high = high if excess is None else config.structure_z_threshold
    structure_low = config.z_low if excess is None else config.structure_z_low
    # Structures grow through their tolerant score from seeds that are not a shadow's.
    structure_seeds = None
    if excess is not None and config.shadow_gate:
        shade = _shadow_weight(b, a, pair.bands)
        structure_seeds = _structure_seeds(scorer, weights[-1], shade, scores[-1], structure_high)
    for score, seeds, seed, low in zip(
        scores,
        (None, structure_seeds),
        (high, structure_high),
        (config.z_low, structure_low),
        strict=False,
    ):
        m = decide(
            score, high=seed, low=low, min_pixels=min_pixels, fill=config.fill_holes, seeds=seeds
        )
        masks.append(m & valid)
    if excess is not None:
        # Smoothing lends a structure's evidence to its rim; its footprint is where the pixels
        # themselves changed beyond what the neighbourhood explains.
        masks[-1] &= excess >= config.min_excess
        if config.rim_share > 0:
            masks[-1] = trim_blur_rims(masks[-1], excess, config.rim_share, min_pixels)
        layers["unexplained"] = excess
    layers["mask"] = masks[0]
    screened = _screen_l1c_clouds(before, after, delta, valid, shift if corrected else None, layers)
    if screened is not None:  # clouds and shadows are not observations of the ground
        for score, m in zip(scores, masks, strict=True):
            m &= ~screened
            score[screened] = np.nan
    del layers["mask"]
    layers.update(_indicators(b, a, pair.bands))
    layers["cva"] = cva
    layers["class_conditional"] = cond
    return ChangeMap(
        grid=grid,
        score=scores[0],
        likelihood=_likelihood(scores[0], high, keep),
        mask=masks[0],
        threshold=high,
        low_threshold=config.z_low,
        indicators=layers,
        shift_px=shift,
        shift_corrected=bool(corrected),
        structure_score=scores[-1],
        structure_mask=masks[-1],
        structure_threshold=structure_high,
        structure_low_threshold=structure_low,
        band_change=(
            band_change_codes(delta, noise, np.isfinite(scores[-1])) if with_band_change else None
        ),
    )
