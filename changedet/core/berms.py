"""Berms: thin, line-like earthworks around new structures.

A 4 m berm is sub-pixel at 10 m, but the disturbed soil it is made of brightens 1-2 pixels along
a line. So the evidence is: the robust z-score of the *increase* in brightness and in the bare-soil
index (BSI) between two composites, filtered for bright ridges (scikit-image's `sato`, a Hessian
line filter at 1-2 pixel scales). Blobs (the buildings themselves, cleared plots) respond weakly
to a ridge filter; lines respond strongly.

- `berm_evidence(before, after)`: (H, W) ridge response in z units (0 where unobserved).
- `berm_mask(evidence, config)`: evidence above threshold, minus specks.
- `extract_berms(evidence, grid, config)`: skeletonised line components long and thin enough to be
  earthworks → `Berm` LineStrings with lengths in metres.
- `ring_test(structures, evidence, grid, config)`: for each structure, the share of angular
  sectors around it whose ring (between `ring_inner_m` and `ring_outer_m` from its footprint)
  holds berm pixels. `bermed` = share >= `ring_threshold`; the share is `berm_score`.
- `link_berms(berms, structures, config)`: the structure each berm rings (nearest within the ring).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import shapely
from scipy import ndimage
from shapely.ops import linemerge
from skimage.morphology import skeletonize

from changedet.config import BermConfig
from changedet.core.kinds import BUILDING
from changedet.core.track import rasterize_objects
from changedet.errors import DataError
from changedet.models import Berm, Composite, Grid, Structure

__all__ = [
    "berm_evidence",
    "berm_mask",
    "bsi",
    "extract_berms",
    "link_berms",
    "ridge_filter",
    "ring_test",
]

_BRIGHTNESS_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")


def bsi(blue: np.ndarray, red: np.ndarray, nir: np.ndarray, swir16: np.ndarray) -> np.ndarray:
    """Bare-soil index ((SWIR1 + red) - (NIR + blue)) / ((SWIR1 + red) + (NIR + blue))."""
    num = (swir16 + red) - (nir + blue)
    den = (swir16 + red) + (nir + blue)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(den) > 1e-6, num / den, np.nan).astype(np.float32)


def _robust_z(x: np.ndarray) -> np.ndarray:
    valid = np.isfinite(x)
    if valid.sum() < 16:
        return np.zeros_like(x, dtype=np.float32)
    v = x[valid]
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    scale = mad if mad > 1e-6 else (float(np.std(v)) or 1.0)
    return ((x - med) / scale).astype(np.float32)


def _composite_bands(c: Composite) -> dict[str, np.ndarray]:
    return {b: c.reflectance[i] for i, b in enumerate(c.bands)}


def berm_evidence(
    before: Composite,
    after: Composite,
    *,
    exclude: np.ndarray | None = None,
    sigmas: Sequence[float] = (1.0, 1.5),
) -> np.ndarray:
    """(H, W) float32 bright-ridge response of the soil-disturbance increase, in z units.

    Needs blue, red, nir and swir16 in both composites (brightness uses whichever of
    blue/green/red/nir/swir16/swir22 both have). NaN (unobserved) pixels give 0.
    exclude: (H, W) bool pixels to blank before the ridge filter — pass the structure footprints
    (`Ledger.footprints > 0`): a new roof is a bright blob whose flanks look like ridges.
    """
    if before.grid.shape != after.grid.shape:
        raise DataError("berm evidence: before and after composites are on different grids")
    b0, b1 = _composite_bands(before), _composite_bands(after)
    need = ("blue", "red", "nir", "swir16")
    missing = [n for n in need if n not in b0 or n not in b1]
    if missing:
        raise DataError(
            f"berm evidence needs bands {', '.join(need)}; missing {', '.join(missing)}; "
            "add them to [read] bands"
        )
    common = [n for n in _BRIGHTNESS_BANDS if n in b0 and n in b1]
    bright0 = np.mean([b0[n] for n in common], axis=0)
    bright1 = np.mean([b1[n] for n in common], axis=0)
    d_bright = _robust_z(bright1 - bright0)
    d_bsi = _robust_z(
        bsi(b1["blue"], b1["red"], b1["nir"], b1["swir16"])
        - bsi(b0["blue"], b0["red"], b0["nir"], b0["swir16"])
    )
    # Soil disturbance brightens and bares: both must rise; clip so decreases never count.
    raw = np.clip(0.5 * (d_bright + d_bsi), 0.0, None)
    raw = np.where(np.isfinite(raw), raw, 0.0).astype(np.float32)
    if exclude is not None:
        if exclude.shape != raw.shape:
            raise DataError(f"berm evidence: exclude mask shape {exclude.shape} != {raw.shape}")
        raw[exclude] = 0.0
    return ridge_filter(raw, sigmas=sigmas)


# scikit-image's `sato` takes its Gaussian kernels out to 100 sigma when sigma <= 1 (to keep
# scipy's small-sigma kernels from aliasing): a 143-tap kernel at sigma 1, 80 % of the filter's
# time. Past 20 sigma the weights are below 1e-85 of the centre's, far under float32's
# resolution: the same values (tests/test_berms.py compares them with `sato`) in a fifth of the
# time.
_SMALL_SIGMA_TRUNCATE = 20.0
_TRUNCATE = 8.0  # scikit-image's own for sigma > 1


def ridge_filter(raw: np.ndarray, *, sigmas: Sequence[float] = (1.0, 1.5)) -> np.ndarray:
    """Bright-ridge (line) response of a non-negative (H, W) evidence layer: scikit-image's
    `sato(raw, sigmas, black_ridges=False, mode="constant")` (Hessian from Gaussian derivatives,
    the larger eigenvalue of the negated image, clipped at 0, times sigma², max over sigmas)."""
    image = np.negative(raw, dtype=np.float32)

    def response(sigma: float) -> np.ndarray:
        # As scikit-image's hessian_matrix: two first-order Gaussian derivatives at sigma/sqrt(2).
        smooth = functools.partial(
            ndimage.gaussian_filter,
            sigma=sigma / math.sqrt(2),
            mode="constant",
            cval=0.0,
            truncate=_TRUNCATE if sigma > 1 else _SMALL_SIGMA_TRUNCATE,
        )
        d_row, d_col = smooth(image, order=(1, 0)), smooth(image, order=(0, 1))
        hessian = [
            smooth(d_row, order=(1, 0)),
            smooth(d_row, order=(0, 1)),
            smooth(d_col, order=(0, 1)),
        ]
        return sigma**2 * np.maximum(_larger_eigenvalue(*hessian), 0)

    # The scales on two threads (ndimage's filters release the GIL; nothing else runs then);
    # the maximum over them is the same in any order.
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(response, sigmas))
    out = np.zeros_like(image)
    for found in responses:
        np.maximum(out, found, out=out)
    return out


def _larger_eigenvalue(h00: np.ndarray, h01: np.ndarray, h11: np.ndarray) -> np.ndarray:
    """The larger eigenvalue of each symmetric 2 x 2 matrix [[h00, h01], [h01, h11]], in the
    operations and order of scikit-image's `hessian_matrix_eigvals` (the same float32 values):
    importing `skimage.feature` for it costs a run about 0.2 s (it brings in `scipy.stats`)."""
    largest: np.ndarray = (h00 + h11) / 2
    largest += np.sqrt(h01**2 + ((h00 - h11) / 2) ** 2)
    return largest


def berm_mask(evidence: np.ndarray, config: BermConfig) -> np.ndarray:
    """(H, W) bool: evidence >= `evidence_threshold`, without components below `min_pixels`."""
    mask = evidence >= config.evidence_threshold
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= config.min_pixels
    keep[0] = False
    return keep[lab]


def _skeleton_lines(skel: np.ndarray, grid: Grid, r0: int, c0: int) -> Any:
    """LineString/MultiLineString in grid CRS through the centres of 8-connected skeleton pixels."""
    rows, cols = np.nonzero(skel)
    on = set(zip(rows.tolist(), cols.tolist(), strict=True))
    segments = []
    for r, c in on:
        for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
            if (r + dr, c + dc) not in on:
                continue
            # Skip a diagonal when an orthogonal path already joins the two pixels (no triangles).
            if dr and dc and ((r + dr, c) in on or (r, c + dc) in on):
                continue
            p0 = grid.transform @ (c0 + c + 0.5, r0 + r + 0.5)
            p1 = grid.transform @ (c0 + c + dc + 0.5, r0 + r + dr + 0.5)
            segments.append(shapely.LineString([p0, p1]))
    if not segments:
        return shapely.LineString()
    merged = linemerge(shapely.MultiLineString(segments))
    return merged.simplify(grid.res * 0.5)


def _stable_berm_id(geom: Any, grid: Grid) -> str:
    c = geom.centroid
    res = grid.res or 1.0
    key = f"{grid.crs}:{round(c.x / res) * res:.0f},{round(c.y / res) * res:.0f}"
    return "berm-" + hashlib.sha1(key.encode()).hexdigest()[:8]


def extract_berms(evidence: np.ndarray, grid: Grid, config: BermConfig) -> list[Berm]:
    """Line-like components of the berm mask → Berms (skeleton lines, lengths in metres).

    A component is kept when its skeleton is at least `min_length_m` long and its mean width
    (pixels / skeleton length) at most `max_width_px`: long and thin, unlike a building.
    """
    if evidence.shape != grid.shape:
        raise DataError(f"berm evidence shape {evidence.shape} != grid {grid.shape}")
    mask = berm_mask(evidence, config)
    lab, _n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    berms: list[Berm] = []
    seen: dict[str, int] = {}
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        comp = lab[sl] == i
        skel = skeletonize(np.pad(comp, 1))[1:-1, 1:-1]
        geom = _skeleton_lines(skel, grid, sl[0].start, sl[1].start)
        length = float(geom.length)
        if length < config.min_length_m or length <= 0:
            continue
        width_px = comp.sum() / max(length / grid.res, 1.0)
        if width_px > config.max_width_px:
            continue
        bid = _stable_berm_id(geom, grid)
        seen[bid] = seen.get(bid, 0) + 1
        if seen[bid] > 1:
            bid = f"{bid}-{seen[bid]}"
        score = float(np.mean(evidence[sl][skel])) if skel.any() else 0.0
        berms.append(Berm(id=bid, geometry=geom, length_m=round(length, 1), score=round(score, 4)))
    berms.sort(key=lambda b: b.id)
    return berms


def ring_test(
    structures: Sequence[Structure],
    evidence: np.ndarray,
    grid: Grid,
    config: BermConfig,
    *,
    footprints: np.ndarray | None = None,
) -> list[Structure]:
    """Structures with `bermed` and `berm_score` set from berm pixels in a ring around each.

    berm_score: share of `sectors` angular sectors (around the footprint centroid) whose ring part
    holds at least one berm pixel. Pixels on or next to any structure are ignored (building edges
    are ridges too), and a berm pixel counts only for the structure it is nearest to. footprints: optional (H, W) int raster, structures[i] → i + 1 (else rasterised).
    """
    if evidence.shape != grid.shape:
        raise DataError(f"berm evidence shape {evidence.shape} != grid {grid.shape}")
    labels = footprints if footprints is not None else rasterize_objects(structures, grid)
    berm = berm_mask(evidence, config)
    near_structure = ndimage.binary_dilation(labels > 0, structure=np.ones((3, 3), dtype=bool))
    berm &= ~near_structure
    # Each berm pixel speaks for its nearest structure only: a neighbour's berm is not ours.
    _dist, (near_r, near_c) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    nearest = labels[near_r, near_c]
    res = grid.res or 10.0
    margin = math.ceil(config.ring_outer_m / res) + 1
    h, w = grid.shape
    slices = ndimage.find_objects(labels)
    out: list[Structure] = []
    for i, s in enumerate(structures):
        sl = slices[i] if i < len(slices) else None
        if sl is None:
            out.append(dataclasses.replace(s, bermed=None, berm_score=None))
            continue
        r0, r1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, h)
        c0, c1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, w)
        own = labels[r0:r1, c0:c1] == i + 1
        dist_m = ndimage.distance_transform_edt(~own) * res
        ring = (dist_m > config.ring_inner_m) & (dist_m <= config.ring_outer_m)
        rr, cc = np.nonzero(own)
        cy, cx = rr.mean(), cc.mean()
        yy, xx = np.mgrid[0 : r1 - r0, 0 : c1 - c0]
        sector = ((np.arctan2(yy - cy, xx - cx) + math.pi) / (2 * math.pi) * config.sectors).astype(
            int
        ) % config.sectors
        hit = ring & berm[r0:r1, c0:c1] & (nearest[r0:r1, c0:c1] == i + 1)
        present = np.unique(sector[ring])
        covered = np.unique(sector[hit])
        score = covered.size / max(present.size, 1)
        out.append(
            dataclasses.replace(
                s, bermed=bool(score >= config.ring_threshold), berm_score=round(score, 3)
            )
        )
    return out


def link_berms(
    berms: Sequence[Berm], structures: Sequence[Structure], config: BermConfig
) -> list[Berm]:
    """Berms with `structure_id` set to the building they ring: of the buildings within
    `ring_outer_m` of the line, the nearest that the ring test found bermed, else the nearest
    (the line is one wall of its ring); None without one. Never ground works: a berm is ground
    works itself, and the structure a line lies on is usually its own apron."""
    buildings = [
        s
        for s in structures
        if s.kind == BUILDING and s.geometry is not None and not s.geometry.is_empty
    ]
    out = []
    for b in berms:
        near = [(float(b.geometry.distance(s.geometry)), s) for s in buildings]
        near = [(d, s) for d, s in near if d <= config.ring_outer_m]
        best = min(near, key=lambda ds: (not ds[1].bermed, ds[0]), default=None)
        out.append(dataclasses.replace(b, structure_id=best[1].id if best else None))
    return out
