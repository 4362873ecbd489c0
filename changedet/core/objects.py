"""Change regions → objects: split merged blobs, minimum mapping unit, valid polygons.

Connected regions of the change mask are split with a watershed on the change score (one marker
per seed core of the hysteresis decision), objects smaller than the minimum mapping unit
(`min_area_m2`, in m² via `grid.pixel_area_m2`) are dropped, and each object becomes a valid
polygon in the grid CRS traced along pixel edges.
"""

from __future__ import annotations

import numpy as np
import shapely
from rasterio.features import shapes
from scipy import ndimage as ndi
from shapely.geometry import MultiPolygon, Polygon, shape
from skimage.segmentation import watershed

from changedet.config import ChangeConfig, KindConfig
from changedet.core.kinds import EVIDENCE_LAYERS
from changedet.models import ChangeMap, ChangeObject

__all__ = ["extract_objects", "label_objects"]

_EIGHT = np.ones((3, 3), dtype=bool)


def label_objects(
    mask: np.ndarray, score: np.ndarray, *, split: bool, seed_level: float = np.inf
) -> np.ndarray:
    """(H, W) int32 object labels of `mask` (0 = background), 8-connected.

    With `split`, a region holding several separate seed cores (connected pixels with score >=
    `seed_level`, the hysteresis seed threshold) is cut between them by a watershed on the score,
    so that blobs merged only through weaker pixels become one object per core.
    """
    labels, n = ndi.label(mask, structure=_EIGHT)
    if not split or n == 0:
        return labels.astype(np.int32)

    finite = np.isfinite(score)
    cores, n_cores = ndi.label(mask & finite & (score >= seed_level), structure=_EIGHT)
    if n_cores <= n:
        return labels.astype(np.int32)
    # Regions without a core keep one marker of their own (their first pixel).
    markers = cores.copy()
    without = np.setdiff1d(np.arange(1, n + 1), np.unique(labels[cores > 0]))
    if without.size:
        boxes = ndi.find_objects(labels)
        next_id = n_cores + 1
        for lab in without:
            box = boxes[lab - 1]
            assert box is not None
            rr, cc = np.nonzero(labels[box] == lab)
            markers[box][rr[0], cc[0]] = next_id
            next_id += 1
    elevation = np.where(finite, -score, 0.0)
    out = watershed(elevation, markers, mask=mask, connectivity=2)
    return out.astype(np.int32)


def _polygon(region: np.ndarray, transform: object) -> Polygon | MultiPolygon:
    """Pixel-edge outline of one boolean region, made valid."""
    parts = [
        shape(geom)
        for geom, value in shapes(region.astype(np.uint8), mask=region, transform=transform)
        if value == 1
    ]
    geom = shapely.union_all(parts) if len(parts) > 1 else parts[0]
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
        polys = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon | MultiPolygon)]
        geom = shapely.union_all(polys)
    return geom


def split_roofs(
    labels: np.ndarray,
    flattening: np.ndarray,
    *,
    threshold: float,
    soil: float,
    min_pixels: int,
) -> np.ndarray:
    """Labels with the roof-like parts of an object made objects of their own, where the rest of
    it stayed soil-like: a new hall and the graded ground and berms around it change together but
    are different structures. A roof-like part has spectral flattening >= `threshold` over at
    least `min_pixels`; the rest must keep a median |flattening| <= `soil`. An object whose rest
    is not clearly soil (a mixed urban change) stays whole: the pixels cannot tell its parts."""
    mask = labels > 0
    roof_lab, n_roof = ndi.label(mask & (flattening >= threshold), structure=_EIGHT)
    if n_roof == 0:
        return labels
    big = np.bincount(roof_lab.ravel(), minlength=n_roof + 1) >= min_pixels
    big[0] = False
    roof = big[roof_lab]
    rest = mask & ~roof
    n = int(labels.max())
    has_roof = np.bincount(labels[roof], minlength=n + 1) > 0  # roof pixels are all labelled
    # The median |flattening| of the rest, of the objects with a roof part only (few pixels:
    # ndimage's median sorts every pixel it is given).
    with_roof = np.flatnonzero(has_roof)
    in_rest = rest & has_roof[labels]
    if not in_rest.any():  # no object has both a roof and a rest: nothing to split
        return labels
    rest_flat = ndi.median(np.abs(flattening[in_rest]), labels[in_rest], with_roof)
    soil_rest = np.zeros(n + 1, dtype=bool)
    soil_rest[with_roof] = np.nan_to_num(np.asarray(rest_flat, dtype=float), nan=np.inf) <= soil
    split = soil_rest[labels]
    if not split.any():
        return labels
    kept, n_kept = ndi.label(roof & split, structure=_EIGHT)
    others, _ = ndi.label(mask & ~(roof & split), structure=_EIGHT)
    out: np.ndarray = np.where(kept > 0, kept, np.where(others > 0, others + n_kept, 0))
    return out.astype(np.int32)


def extract_objects(
    change: ChangeMap, config: ChangeConfig, *, kinds: KindConfig | None = None
) -> list[ChangeObject]:
    """Objects of the structure mask (`ChangeMap.structures`): valid polygons in the grid CRS with
    area >= `config.min_area_m2`. With `kinds`, roof-like parts of an object on soil-like ground
    become objects of their own (`split_roofs`).

    area_m2 = pixels x `grid.pixel_area_m2` (exact on UTM grids, approximate on geographic ones);
    confidence rises from 0 at the hysteresis low threshold to ~0.63 at the seed threshold and
    towards 1 above it; likelihood is the mean "new structure" likelihood of the object. Both
    thresholds are the ones the mask was cut with (`change.structure_seed`, `.structure_low`).
    """
    grid = change.grid
    high, low = change.structure_seed, change.structure_low
    score_map, mask = change.structures
    labels = label_objects(mask, score_map, split=config.split_objects, seed_level=high)
    flattening = change.indicators.get("spectral_flattening")
    if kinds is not None and flattening is not None:
        min_pixels = max(1, int(np.ceil(config.min_area_m2 / grid.pixel_area_m2 - 1e-9)))
        labels = split_roofs(
            labels,
            np.nan_to_num(flattening, nan=0.0),
            threshold=kinds.roof_flattening,
            soil=kinds.soil_flattening,
            min_pixels=min_pixels,
        )
    n = int(labels.max())
    if n == 0:
        return []
    pixel_area = grid.pixel_area_m2
    index = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    score = np.nan_to_num(score_map, nan=0.0)
    mean_score = ndi.mean(score, labels, index)
    mean_like = ndi.mean(np.nan_to_num(change.likelihood, nan=0.0), labels, index)
    evidence = {
        name: ndi.mean(np.nan_to_num(change.indicators[name], nan=0.0), labels, index)
        for name in EVIDENCE_LAYERS
        if name in change.indicators
    }
    span = max(high - low, 1e-6)
    boxes = ndi.find_objects(labels)
    objects: list[ChangeObject] = []
    for j, (lab, n_px, ms, ml, box) in enumerate(
        zip(index, counts, mean_score, mean_like, boxes, strict=True)
    ):
        area = float(n_px) * pixel_area
        if box is None or n_px == 0 or area < config.min_area_m2 - 1e-6:
            continue
        region = labels[box] == lab
        sub_transform = grid.window(
            box[0].start, box[1].start, region.shape[0], region.shape[1]
        ).transform
        geom = _polygon(region, sub_transform)
        confidence = float(1.0 - np.exp(-max(float(ms) - low, 0.0) / span))
        objects.append(
            ChangeObject(
                label=int(lab),
                geometry=geom,
                area_m2=area,
                n_pixels=int(n_px),
                confidence=confidence,
                mean_score=float(ms),
                likelihood=float(ml),
                evidence={name: float(values[j]) for name, values in evidence.items()},
            )
        )
    return objects
