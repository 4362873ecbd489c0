"""What a new structure is, from its spectra and its shape: building, ground works or other.

A 10 m pixel cannot see a roof's pitch or a berm's height; what it can see:
- **spectral flattening**: arid soil rises steeply from blue to SWIR; concrete and metal roofs are
  flat. A new roof on soil flattens the blue→SWIR16 slope by 0.3–0.55, graded or disturbed soil
  by less than 0.05 (`ChangeConfig`-independent physics, checked in `tests/test_change.py`);
- **shape**: berms, cuts and tracks are lines one or two pixels wide; a hall is a compact block.

So: a compact structure whose spectrum flattened is a `building`; a thin line, or a change that
stayed soil-like (no flattening, brighter or more bare), is `ground works`; anything else —
flattening in the ambiguous band, darkening, a mix — is `other`, because the pixels cannot tell.
A hall put up on ground graded months before is tracked as that site, whose median is the
ground's; it is a `building` too when a roof stood on part of it (`roof_stood`: a period's most
flattened object, cut out of the site by `objects.split_roofs`, in half the periods since).
On real spectra the separation is only as good as the soil/roof contrast (see README: where the
kinds were measured); `other` says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from skimage.morphology import skeletonize

from changedet.config import KindConfig

__all__ = [
    "BUILDING",
    "EVIDENCE_LAYERS",
    "GROUND_WORKS",
    "KINDS",
    "OTHER",
    "classify",
    "evidence_summary",
    "line_shape",
    "roof_periods",
    "roof_stood",
]

BUILDING = "building"
GROUND_WORKS = "ground works"
OTHER = "other"
KINDS = (BUILDING, GROUND_WORKS, OTHER)

# Indicator layers (ChangeMap.indicators) whose object means are the evidence of kind.
EVIDENCE_LAYERS = ("spectral_flattening", "bsi_gain", "brightness_gain", "ndvi_loss")


def line_shape(mask: np.ndarray) -> tuple[float, int]:
    """(mean width, length) in pixels of a (H, W) bool shape: length is its skeleton's pixel count,
    width its area over that (1 for a one-pixel line or ring, 2 to 4 for a 2 x 4 hall)."""
    if not mask.any():
        return 0.0, 0
    length = int(skeletonize(np.pad(mask, 1)).sum())
    return float(mask.sum()) / max(length, 1), length


def evidence_summary(per_period: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Median of each evidence value over the periods a structure was seen in."""
    keys = sorted({k for e in per_period for k in e})
    out: dict[str, float] = {}
    for key in keys:
        values = [e[key] for e in per_period if key in e and np.isfinite(e[key])]
        if values:
            out[key] = float(np.median(values))
    return out


def roof_periods(
    evidence: Sequence[tuple[int, Mapping[str, float]]], threshold: float
) -> dict[int, float]:
    """{period: flattening} of the periods in which an object matched to a structure looked like
    a new roof. `objects.split_roofs` cuts a roof out of the graded ground around it, so a
    period's roof is its most flattened object: the structure's median is the ground's when the
    site was graded months before the hall went up."""
    best: dict[int, float] = {}
    for k, e in evidence:
        value = e.get("spectral_flattening")
        if value is not None and np.isfinite(value):
            best[k] = max(best.get(k, -np.inf), value)
    return {k: v for k, v in sorted(best.items()) if v >= threshold}


def roof_stood(roofs: Mapping[int, float], seen: Sequence[int], min_periods: int) -> bool:
    """A roof seen in at least `min_periods` periods, and in at least half of the periods the
    structure was seen in (`seen`) since the first: a hall that stands, not a flash of flat
    spectrum on a site."""
    if len(roofs) < min_periods:
        return False
    first = min(roofs)
    return 2 * len(roofs) >= len({k for k in seen if k >= first})


def classify(
    evidence: Mapping[str, float],
    shape: tuple[float, int],
    config: KindConfig,
    *,
    roof: bool = False,
) -> str:
    """The kind a structure's evidence and (width, length) support (see the module docstring);
    `roof`: a roof stood on part of it (`roof_stood`)."""
    flattening = evidence.get("spectral_flattening")
    width, length = shape
    if width <= config.line_width_px and length >= config.line_min_length_px:
        return GROUND_WORKS  # a line: berm, cut, track
    if flattening is None:
        return OTHER  # no SWIR: the roof test cannot be made
    if roof or flattening >= config.roof_flattening:
        return BUILDING
    soil_like = max(evidence.get("bsi_gain", 0.0), evidence.get("brightness_gain", 0.0)) > 0
    if abs(flattening) <= config.soil_flattening and soil_like:
        return GROUND_WORKS
    return OTHER
