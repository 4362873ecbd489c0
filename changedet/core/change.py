"""Per-pixel change evidence between two composites, and the change decision.

Steps (each a pure function on arrays):
1. co-register `after` to `before` (phase correlation on the red band, corrected above a threshold);
2. relative radiometric normalisation of `after` to `before` on no-change pixels;
3. two complementary change magnitudes, each smoothed (Gaussian, sigma ~1 px) and robust-z scored
   against the image's own distribution (change is rare, so median/MAD describe no-change):
   - change-vector magnitude over all bands in noise units (CVA);
   - class-conditional change: the visible change vector standardised within the land-cover class
     (k-means) of each date, the larger of the two. A harvested field changes like many other fields
     did between these dates, so it is normal for its class; a new roof is not, for either class;
4. score = mean of the two robust z values, with the evidence damped where the pixel ends up
   vegetated (`vegetation_gate`) or is water on both dates (`water_gate`); mask = hysteresis (seeds above `z_threshold`, grown down to
   `z_low`), small objects below the minimum mapping unit removed, holes filled;
5. L1C pairs (no SCL) that carry the cirrus band: change objects that are clouds (local excess
   at 1375 nm, where the ground is invisible) and their shadows (the cloud shape displaced along
   the sun direction, darker in every band) are unobserved, not change (`cloud_and_shadow`);
6. indicators (dNDVI, dNDBI, dBSI, dbrightness) and a "new structure" likelihood (changed, not
   vegetated afterwards, brighter or more built-up) are kept as evidence.

No per-place tuning: every threshold is in robust-z units of that pair's own score distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from changedet.config import ChangeConfig
from changedet.core.coreg import apply_shift, measure_shift
from changedet.core.normalize import fast_median, relative_normalize
from changedet.errors import DataError
from changedet.models import ChangeMap, Composite

__all__ = [
    "COREG_BANDS",
    "DETECT_BANDS",
    "class_conditional_change",
    "cloud_and_shadow",
    "decide",
    "detect_change",
    "detect_structures",
    "kmeans_classes",
    "robust_z",
    "smooth",
    "split_change",
]

# Drop of the blue→SWIR16 normalised slope at which a changed pixel is as likely roof as earthwork:
# soil → concrete/metal roofs drops it by 0.3–0.55, soil → graded/disturbed soil by < 0.05.
ROOF_FLATTENING = 0.15

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
# Band measured for co-registration, first present wins: red has urban texture and moves less with
# vegetation phenology than nir.
COREG_BANDS = ("red", "green", "nir", "blue")
_SAMPLES = 100_000  # pixels used for robust statistics

# Cirrus band (B10, 1375 nm): water vapour absorbs the ground signal completely, so any local
# excess there comes from something above the lower troposphere: a cloud, never a roof. A change
# object is a cloud when its cirrus-band excess over its own surroundings reaches this TOA
# reflectance (and CIRRUS_Z scene noise units); thin cirrus sheets are broad and cancel out.
CIRRUS_EXCESS = 0.0015
CIRRUS_Z = 6.0
_CLOUD_RING_PX = 6  # ring around an object that gives its local cirrus background
# A cloud's shadow is its own shape displaced along the sun direction; searched up to this far.
_SHADOW_MAX_SHIFT_PX = 400
_SHADOW_MIN_MATCH = 0.3  # share of the displaced cloud that must fall on darkening change
_SHADOW_MIN_COVER = 0.5  # share of a darkening object that must lie under the displaced cloud


def _sample(n: int, limit: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).astype(np.int64)


def robust_z(
    values: np.ndarray, valid: np.ndarray | None = None, *, reference: np.ndarray | None = None
) -> np.ndarray:
    """(x - median) / (1.4826 MAD) with median and MAD over the finite (and `valid`) pixels of
    `reference` (default: `values` itself); NaN stays NaN."""
    ref = values if reference is None else reference
    ok = np.isfinite(ref) if valid is None else (valid & np.isfinite(ref))
    flat = ref[ok]
    if flat.size == 0:
        return np.full(values.shape, np.nan, dtype=np.float32)
    flat = flat[_sample(flat.size, _SAMPLES)]
    med = float(fast_median(flat))
    mad = 1.4826 * float(fast_median(np.abs(flat - med)))
    if mad <= 0:
        mad = float(flat.std()) or 1.0
    out = (values - np.float32(med)) / np.float32(mad)
    return out.astype(np.float32, copy=False)


def smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """NaN-aware Gaussian smoothing (normalised convolution); NaN pixels stay NaN."""
    return _smooth(values, sigma, [])


def _smooth(
    values: np.ndarray, sigma: float, weights: list[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """`smooth`, reusing the smoothed finite mask (the normaliser) of an earlier call on the same
    NaN pattern: `weights` holds (finite, normaliser) pairs and is appended to."""
    if sigma <= 0:
        return values.astype(np.float32, copy=True)
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0).astype(np.float32, copy=False)
    num = ndi.gaussian_filter(filled, sigma, truncate=3.0)
    if finite.all():
        return num
    den = next((d for f, d in weights if np.array_equal(f, finite)), None)
    if den is None:
        den = ndi.gaussian_filter(finite.astype(np.float32), sigma, truncate=3.0)
        weights.append((finite, den))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~finite] = np.nan
    return out


def kmeans_classes(
    image: np.ndarray, valid: np.ndarray, *, n_classes: int, seed: int = 0
) -> np.ndarray:
    """(H, W) int16 land-cover class per pixel from k-means on robust-standardised bands (-1 invalid).

    Fitted on a deterministic subsample, then every valid pixel goes to its nearest centre.
    """
    from scipy.cluster.vq import kmeans2

    n_bands = image.shape[0]
    flat = image.reshape(n_bands, -1)
    flat_idx = np.flatnonzero(valid.ravel())
    out = np.full(valid.shape, -1, dtype=np.int16)
    if flat_idx.size < n_classes * 10:
        out[valid] = 0
        return out
    sample = flat[:, flat_idx[_sample(flat_idx.size, 20_000)]].T.astype(np.float64)
    med = fast_median(np.ascontiguousarray(sample.T))
    mad = 1.4826 * fast_median(np.ascontiguousarray(np.abs(sample - med).T))
    mad[mad <= 0] = 1.0
    scaled = (sample - med) / mad
    # scipy re-checks finiteness on every iteration; one check here gives the same answer (and
    # still lets scipy raise its own error on non-finite input).
    finite = bool(np.isfinite(scaled).all())
    centres, _ = kmeans2(scaled, n_classes, seed=seed, minit="++", check_finite=not finite)
    # Nearest centre in standardised units without standardising every pixel:
    # |(x - med)/mad - c|^2 = sum_b (x_b - m_b)^2 / mad_b^2 with m = med + mad * c; the x^2 term
    # is the same for every centre, so argmin of |m|_w^2 - 2 x.(m w) decides.
    w = 1.0 / mad**2
    means = med + mad * centres  # (K, B) in reflectance units
    cross = (means * w).astype(np.float32) @ flat  # (K, N)
    cross *= np.float32(-2.0)
    cross += ((means**2) * w).sum(axis=1).astype(np.float32)[:, None]
    # Running minimum over the K rows: much faster than argmin along a short first axis.
    classes = np.zeros(flat.shape[1], dtype=np.int16)
    best = cross[0].copy()
    for k in range(1, n_classes):
        closer = cross[k] < best
        classes[closer] = k
        np.minimum(best, cross[k], out=best)
    return np.where(valid, classes.reshape(valid.shape), out)


def _class_distance(delta: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """RMS over bands of the change vector standardised by the median/MAD of its class."""
    n_bands = delta.shape[0]
    flat_delta = delta.reshape(n_bands, -1)
    if not np.issubdtype(flat_delta.dtype, np.floating):
        flat_delta = flat_delta.astype(np.float64)
    lookup = classes.ravel().astype(np.intp) + 1  # 0: invalid (-1), j + 1: class j
    # Pixels of each class in increasing index order (stable sort) and where each class starts.
    order = np.argsort(classes.ravel(), kind="stable")
    bounds = np.zeros(n_classes + 2, dtype=np.intp)
    np.cumsum(np.bincount(lookup, minlength=n_classes + 1), out=bounds[1:])
    # Per-class median and MAD of every band (NaN centre: class too small or invalid -> NaN).
    centre = np.full((n_bands, n_classes + 1), np.nan, dtype=flat_delta.dtype)
    spread = np.ones((n_bands, n_classes + 1), dtype=flat_delta.dtype)
    for j in range(n_classes):
        start, stop = bounds[j + 1], bounds[j + 2]
        if stop - start < 20:
            continue
        s = flat_delta[:, order[start + _sample(stop - start, 50_000)]]
        med = fast_median(s)[:, None]
        mad = 1.4826 * fast_median(np.abs(s - med))
        centre[:, j + 1] = med[:, 0]
        spread[:, j + 1] = np.maximum(mad, 1e-4)
    # Every pixel at once through the per-class tables; the same float32 operations in the same
    # order as standardising each class apart ((d - med) / mad, squared, mean over bands).
    total = np.empty(flat_delta.shape[1], dtype=flat_delta.dtype)
    term = np.empty_like(total)
    for i in range(n_bands):
        dest = total if i == 0 else term
        np.subtract(flat_delta[i], centre[i].take(lookup), out=dest)
        dest /= spread[i].take(lookup)
        np.square(dest, out=dest)
        if i > 0:
            total += term
    np.true_divide(total, np.intp(n_bands), out=total, casting="unsafe")  # as ndarray.mean
    np.sqrt(total, out=total)
    return total.reshape(classes.shape).astype(np.float32, copy=False)


def class_conditional_change(
    before: np.ndarray,
    after: np.ndarray,
    delta: np.ndarray,
    valid: np.ndarray,
    *,
    n_classes: int,
) -> np.ndarray:
    """max over the two dates of the change standardised within that date's land-cover class."""
    by_before = _class_distance(
        delta, kmeans_classes(before, valid, n_classes=n_classes), n_classes
    )
    by_after = _class_distance(delta, kmeans_classes(after, valid, n_classes=n_classes), n_classes)
    return np.fmax(by_before, by_after)


def decide(
    score: np.ndarray, *, high: float, low: float, min_pixels: int, fill: bool = True
) -> np.ndarray:
    """Hysteresis threshold (seeds >= high grown through >= low), then drop objects smaller than
    `min_pixels` (8-connected) and fill enclosed holes."""
    s = np.where(np.isfinite(score), score, -np.inf)
    strong = s >= high
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
    mask = keep[labels]
    if fill:
        mask = _fill_holes(mask)
    return mask


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
    return ~outside[background]


def _shift_mask(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[y, x] = mask[y - dy, x - dx]; outside is False."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def cloud_and_shadow(
    mask: np.ndarray,
    delta: np.ndarray,
    cirrus_before: np.ndarray,
    cirrus_after: np.ndarray,
    valid: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(cloud, shadow) pixels among the change objects of `mask` (L1C pairs without SCL).

    `delta` (B, H, W) is after - before (normalised); the cirrus arrays are TOA reflectance of
    band B10. A change object is a cloud of one date when it is brighter in the visible on that
    date and carries a local cirrus-band excess on that date (see CIRRUS_EXCESS): the ground is
    invisible at 1375 nm, so bright new roofs never do. A cloud's shadow is the cloud's shape
    displaced along the sun direction and darker in every band on the cloudy date: the displacement
    is the one that lays the clouds of that date onto the most such darkening change (found by FFT
    correlation; unknown sun geometry), and darkening objects under the displaced clouds are
    shadows. Pairs without cloud objects come back untouched.
    """
    from scipy.signal import fftconvolve

    cloud = np.zeros(mask.shape, dtype=bool)
    shadow = np.zeros(mask.shape, dtype=bool)
    # Objects are the brightening and the darkening parts of the change mask, labelled apart, so
    # that a cloud (brighter on its date in every band) never drags a neighbouring real change
    # that merged with it through weak pixels.
    brighter = smooth(np.where(valid, delta.mean(axis=0), 0.0), 1.0) > 0
    eight = np.ones((3, 3), bool)
    up, n_up = ndi.label(mask & brighter, structure=eight)
    down, n_down = ndi.label(mask & ~brighter, structure=eight)
    labels = np.where(down > 0, down + n_up, up)
    n = n_up + n_down
    if n == 0:
        return cloud, shadow
    excess = np.where(valid, cirrus_after - cirrus_before, np.nan)
    ok = np.isfinite(excess)
    if ok.sum() < 100:
        return cloud, shadow
    sample = excess[ok][_sample(int(ok.sum()), _SAMPLES)]
    med = float(np.median(sample))
    mad = 1.4826 * float(np.median(np.abs(sample - med)))
    floor = max(CIRRUS_EXCESS, CIRRUS_Z * mad)
    excess = np.nan_to_num(excess - np.float32(med), nan=0.0)
    index = np.arange(1, n + 1)
    # Sign of the date on which each object is brighter (+1 after, -1 before), from the mean of
    # all bands, and whether it is darker in every band (a shadow candidate).
    band_means = np.stack(
        [ndi.mean(np.nan_to_num(d, nan=0.0), labels, index) for d in delta]
    )  # (B, n)
    brighter_after = band_means.mean(axis=0) > 0
    peak_after = ndi.maximum(excess, labels, index)
    peak_before = -ndi.minimum(excess, labels, index)
    boxes = ndi.find_objects(labels)
    cloud_date = np.zeros(n + 1, dtype=np.int8)  # +1 cloud in after, -1 in before
    for i, box in enumerate(boxes):
        if box is None:
            continue
        date_sign = 1 if brighter_after[i] else -1
        peak = peak_after[i] if date_sign > 0 else peak_before[i]
        if peak < floor:
            continue
        # Local background: the cirrus excess in a ring around the object.
        pad = _CLOUD_RING_PX
        sl = tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in box)
        obj = labels[sl] == i + 1
        ring = ndi.binary_dilation(obj, iterations=pad) & ~obj & (labels[sl] == 0)
        if not ring.any():
            continue
        background = float(np.median(date_sign * excess[sl][ring]))
        if peak - background >= floor:
            cloud_date[i + 1] = date_sign
    if not cloud_date.any():
        return cloud, shadow
    cloud = cloud_date[labels] != 0
    darker_after = (band_means < 0).all(axis=0)
    darker_before = (band_means > 0).all(axis=0)
    # Pixels clearly darker in every band on one date (2 noise units), whether decided or not:
    # the field the displaced cloud shapes are matched against.
    smoothed = np.stack([smooth(np.where(valid, d, 0.0), 1.0) for d in delta])
    pick = np.flatnonzero(valid.ravel())
    pick = pick[_sample(pick.size, _SAMPLES)]
    flat = smoothed.reshape(len(delta), -1)[:, pick]
    centre = np.median(flat, axis=1)
    spread = 1.4826 * np.median(np.abs(flat - centre[:, None]), axis=1)
    z = (smoothed - centre[:, None, None]) / np.maximum(spread, 1e-6)[:, None, None]
    dark_field = {1: (z.max(axis=0) <= -2.0) & valid, -1: (z.min(axis=0) >= 2.0) & valid}
    for date_sign, darker in ((1, darker_after), (-1, darker_before)):
        clouds_now = cloud_date[labels] == date_sign
        candidates = np.concatenate([[False], darker & (cloud_date[1:] == 0)])[labels]
        if not clouds_now.any() or not candidates.any():
            continue
        # corr[dy, dx] = |shift(clouds, dy, dx) & dark| for every displacement at once.
        corr = fftconvolve(
            dark_field[date_sign].astype(np.float32), clouds_now[::-1, ::-1].astype(np.float32)
        )
        h, w = mask.shape
        dys = np.arange(corr.shape[0]) - (h - 1)
        dxs = np.arange(corr.shape[1]) - (w - 1)
        dist = np.hypot(dys[:, None], dxs[None, :])
        corr[(dist < 2) | (dist > _SHADOW_MAX_SHIFT_PX)] = 0
        best = np.unravel_index(int(np.argmax(corr)), corr.shape)
        if corr[best] < _SHADOW_MIN_MATCH * clouds_now.sum():
            continue
        footprint = _shift_mask(clouds_now, int(dys[best[0]]), int(dxs[best[1]]))
        footprint = ndi.binary_dilation(footprint, iterations=2)
        # A shadow has the cloud's shape: most of a darkening object lies under the footprint
        # (a large real change next to a small cloud's displaced footprint is left alone).
        inside = np.bincount(labels[footprint & candidates], minlength=n + 1)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        hit = (inside >= _SHADOW_MIN_COVER * sizes) & (inside > 0)
        shadow |= hit[labels]
    return cloud, shadow


def _index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a - b) / (a + b)


def _indicators(
    before: np.ndarray, after: np.ndarray, bands: Sequence[str]
) -> dict[str, np.ndarray]:
    """Spectral-index changes (after - before) for the bands that are present."""
    pos = {name: i for i, name in enumerate(bands)}
    out: dict[str, np.ndarray] = {}

    def get(img: np.ndarray, name: str) -> np.ndarray:
        return img[pos[name]]

    if {"nir", "red"} <= pos.keys():
        out["ndvi_loss"] = _index(get(before, "nir"), get(before, "red")) - _index(
            get(after, "nir"), get(after, "red")
        )
    if {"swir16", "nir"} <= pos.keys():
        out["ndbi_gain"] = _index(get(after, "swir16"), get(after, "nir")) - _index(
            get(before, "swir16"), get(before, "nir")
        )
    if {"swir16", "red", "nir", "blue"} <= pos.keys():

        def bsi(img: np.ndarray) -> np.ndarray:
            return _index(get(img, "swir16") + get(img, "red"), get(img, "nir") + get(img, "blue"))

        out["bsi_gain"] = bsi(after) - bsi(before)
    out["brightness_gain"] = after.mean(axis=0) - before.mean(axis=0)
    return {k: v.astype(np.float32, copy=False) for k, v in out.items()}


def _all_finite(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: finite in every band of a (B, H, W) array (band by band, no (B, H, W) mask)."""
    out = np.isfinite(image[0])
    for band in image[1:]:
        out &= np.isfinite(band)
    return out


def _band_subset(reflectance: np.ndarray, index: list[int]) -> np.ndarray:
    """float32 bands `index` of a (B, H, W) array: a view when they are consecutive (no copy of
    the image; detect_change never writes to `b` or `a`), else a copy."""
    if index == list(range(index[0], index[0] + len(index))):
        chosen = reflectance[index[0] : index[0] + len(index)]
    else:
        chosen = reflectance[index]
    return chosen.astype(np.float32, copy=False)


def detect_change(
    before: Composite,
    after: Composite,
    config: ChangeConfig,
    *,
    seed_threshold: float | None = None,
) -> ChangeMap:
    """Change score, decided mask and evidence between two composites on one grid.

    The mask seeds at `seed_threshold` (default `config.z_threshold`) and grows down to
    `config.z_low`; both are recorded in the ChangeMap so later steps use the same values.

    Works with any band set containing some of DETECT_BANDS (L2A: blue, green, red, nir, swir16,
    swir22; OSCD L1C: all ten 10/20 m bands). NaN pixels in either composite get NaN score and no
    change. The minimum mapping unit is `config.min_area_m2` over `grid.pixel_area_m2`.
    """
    if before.grid != after.grid:
        raise DataError(
            "detect_change: the two composites are on different grids; build both on one grid"
        )
    bands = tuple(b for b in DETECT_BANDS if b in before.bands and b in after.bands)
    if not bands:
        raise DataError(
            f"detect_change: no detection band among {before.bands}; read some of {DETECT_BANDS}"
        )
    grid = before.grid
    high = config.z_threshold if seed_threshold is None else seed_threshold
    b = _band_subset(before.reflectance, [before.bands.index(n) for n in bands])
    a = _band_subset(after.reflectance, [after.bands.index(n) for n in bands])

    coreg_band = next((bands.index(n) for n in COREG_BANDS if n in bands), 0)
    shift = measure_shift(b[coreg_band], a[coreg_band]) if config.coregister else (0.0, 0.0)
    corrected = config.coregister and float(np.hypot(*shift)) > config.coreg_threshold_px
    if corrected:
        a = apply_shift(a, shift)

    valid = _all_finite(b)
    valid &= _all_finite(a)
    empty = np.full(grid.shape, np.nan, dtype=np.float32)
    if valid.sum() < 100:
        return ChangeMap(
            grid=grid,
            score=empty,
            likelihood=np.zeros(grid.shape, np.float32),
            mask=np.zeros(grid.shape, bool),
            threshold=high,
            low_threshold=config.z_low,
            shift_px=shift,
            shift_corrected=corrected,
        )
    # A shifted `a` is this function's own copy: normalise it in place (a view of the input is not).
    a, _ = relative_normalize(b, a, valid=valid, out=a if corrected else None)
    delta = a - b
    delta[:, ~valid] = np.nan

    # CVA in noise units: each band's difference divided by its robust spread.
    noise = np.empty(len(bands), dtype=np.float32)
    pick = np.flatnonzero(valid.ravel())
    pick = pick[_sample(pick.size, _SAMPLES)]
    d = delta.reshape(len(bands), -1)[:, pick]
    mad = fast_median(np.abs(d - fast_median(d)[:, None]))
    for i in range(len(bands)):
        noise[i] = max(1.4826 * float(mad[i]), 1e-5)
    # sqrt(mean over bands of (delta / noise)^2), band by band into one buffer (same operations
    # and order as the whole-array expression, without its (B, H, W) temporaries).
    cva = np.empty(grid.shape, dtype=np.float32)
    term = np.empty_like(cva)
    for i in range(len(bands)):
        dest = cva if i == 0 else term
        np.divide(delta[i], noise[i], out=dest)
        np.square(dest, out=dest)
        if i > 0:
            cva += term
    np.true_divide(cva, np.intp(len(bands)), out=cva, casting="unsafe")  # as ndarray.mean
    np.sqrt(cva, out=cva)

    vis = [bands.index(n) for n in VISIBLE_BANDS if n in bands] or list(range(len(bands)))
    # class_conditional_change only reads `delta`: a view of consecutive bands spares a copy.
    cond = class_conditional_change(
        b, a, _band_subset(delta, vis), valid, n_classes=config.n_classes
    )

    # Gates: evidence of change that ends in vegetation (crops greening, lawns; 1 at NDVI_after
    # <= 0.3 to 0 at >= 0.5) or that stays on water (turbidity, tides; min MNDWI 0 -> 0.2) is not
    # evidence of a new structure. Water before and land after (reclamation) is kept. The gate
    # scales the per-pixel evidence before smoothing, so a damped field does not bleed into its
    # rim; robust-z statistics come from the ungated evidence, so gating never sharpens the scale.
    keep = np.ones(grid.shape, dtype=np.float32)
    ndvi_after = (
        _index(a[bands.index("nir")], a[bands.index("red")])
        if {"nir", "red"} <= set(bands)
        else None
    )
    if config.vegetation_gate and ndvi_after is not None:
        keep *= 1.0 - np.clip((ndvi_after - 0.3) / 0.2, 0, 1)
    if config.water_gate and {"green", "swir16"} <= set(bands):
        g, s1 = bands.index("green"), bands.index("swir16")
        wet = np.fmin(_index(b[g], b[s1]), _index(a[g], a[s1]))
        keep *= 1.0 - np.clip(wet / 0.2, 0, 1)
    keep = np.nan_to_num(keep, nan=1.0)

    sigma = config.smooth_sigma_px
    weights: list[tuple[np.ndarray, np.ndarray]] = []  # one normaliser per NaN pattern
    z_cva = robust_z(
        _smooth(cva * keep, sigma, weights), valid, reference=_smooth(cva, sigma, weights)
    )
    z_cond = robust_z(
        _smooth(cond * keep, sigma, weights), valid, reference=_smooth(cond, sigma, weights)
    )
    score = 0.5 * (z_cva + z_cond)
    score[~valid] = np.nan

    min_pixels = max(1, int(np.ceil(config.min_area_m2 / grid.pixel_area_m2 - 1e-9)))
    mask = decide(
        score,
        high=high,
        low=config.z_low,
        min_pixels=min_pixels,
        fill=config.fill_holes,
    )
    mask &= valid
    indicators = _indicators(b, a, bands)
    if "cirrus" in before.bands and "cirrus" in after.bands:
        cirrus_b = before.reflectance[before.bands.index("cirrus")].astype(np.float32)
        cirrus_a = after.reflectance[after.bands.index("cirrus")].astype(np.float32)
        if corrected:
            cirrus_a = apply_shift(cirrus_a, shift)
        cloud, shadow = cloud_and_shadow(mask, delta, cirrus_b, cirrus_a, valid)
        # Cloud and shadow are not observations of the ground: unobserved, not change.
        screened = cloud | shadow
        indicators["cloud"] = cloud.astype(np.float32)
        indicators["cloud_shadow"] = shadow.astype(np.float32)
        mask &= ~screened
        score[screened] = np.nan

    # "New structure" likelihood: changed (logistic in score around the decision threshold),
    # not vegetated afterwards, and roof-like: built surfaces (concrete, metal, asphalt) have flat
    # spectra, arid soils rise steeply from blue to SWIR. A new roof on soil flattens the
    # spectrum; graded soil, berms and cleared ground brighten it without flattening it.
    with np.errstate(invalid="ignore", over="ignore"):
        changed = 1.0 / (1.0 + np.exp(-(score - high) / 2.0))
        if "ndvi_loss" in indicators and ndvi_after is not None:
            not_vegetated = np.clip((0.5 - ndvi_after) / 0.3, 0.0, 1.0)
        else:
            not_vegetated = np.ones(grid.shape, np.float32)
        if {"blue", "swir16"} <= set(bands):
            i_b, i_s = bands.index("blue"), bands.index("swir16")
            flattening = _index(b[i_s], b[i_b]) - _index(a[i_s], a[i_b])
            indicators["spectral_flattening"] = flattening.astype(np.float32)
            roof_like = 1.0 / (1.0 + np.exp(-(flattening - ROOF_FLATTENING) / 0.05))
        else:  # no SWIR: fall back on "brighter or more built-up / bare than before"
            gains = [
                robust_z(indicators[k], valid)
                for k in ("brightness_gain", "ndbi_gain", "bsi_gain")
                if k in indicators
            ]
            roof_like = 1.0 / (1.0 + np.exp(-np.max(np.stack(gains), axis=0)))
        # nan_to_num returns a new array: casting it needs no second copy.
        indicators["not_vegetated"] = np.nan_to_num(not_vegetated, nan=0.0).astype(
            np.float32, copy=False
        )
        indicators["roof_like"] = np.nan_to_num(roof_like * not_vegetated, nan=0.0).astype(
            np.float32, copy=False
        )
        likelihood = np.nan_to_num(changed * indicators["roof_like"], nan=0.0).astype(
            np.float32, copy=False
        )

    indicators["cva"] = cva.astype(np.float32, copy=False)  # arrays built here: no copies
    indicators["class_conditional"] = cond
    return ChangeMap(
        grid=grid,
        score=score.astype(np.float32, copy=False),
        likelihood=likelihood,
        mask=mask,
        threshold=high,
        low_threshold=config.z_low,
        indicators=indicators,
        shift_px=shift,
        shift_corrected=bool(corrected),
    )


def detect_structures(
    before: Composite, after: Composite, config: ChangeConfig, *, mode: str
) -> ChangeMap:
    """The change that the ledger tracks as new structures, in structure `mode`:
    "any" non-vegetated change (seeded at `z_threshold`), or "roof-like" change only (seeded at
    `roof_z_threshold`: the roof-like spectral test is a second line of evidence)."""
    if mode == "any":
        return detect_change(before, after, config)
    if mode != "roof-like":
        raise DataError(f"structure mode must be 'roof-like' or 'any', got '{mode}'")
    change = detect_change(before, after, config, seed_threshold=config.roof_z_threshold)
    return split_change(change, min_area_m2=config.min_area_m2)[0]


def split_change(
    change: ChangeMap, *, min_area_m2: float, min_roof_like: float = 0.5
) -> tuple[ChangeMap, ChangeMap]:
    """Split decided change into (buildings, earthworks).

    Buildings: roof-like and not vegetated. Earthworks: the rest of the non-vegetated change
    (graded ground, berms, cleared plots, spoil). Each keeps only regions of at least the
    minimum mapping unit, so a berm ring never merges with the building it surrounds.
    """
    roof_like = change.indicators.get("roof_like")
    not_vegetated = change.indicators.get("not_vegetated")
    if roof_like is None or not_vegetated is None:
        return change, replace(change, mask=np.zeros_like(change.mask))
    min_pixels = max(1, int(np.ceil(min_area_m2 / change.grid.pixel_area_m2 - 1e-9)))
    roof = roof_like >= min_roof_like
    buildings = _at_least(change.mask & roof, min_pixels)
    earthworks = _at_least(change.mask & ~roof & (not_vegetated >= 0.5), min_pixels)
    return replace(change, mask=buildings), replace(change, mask=earthworks)


def _at_least(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Keep 8-connected regions of at least `min_pixels`."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return (sizes >= min_pixels)[labels]
