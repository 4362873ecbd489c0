"""Where a run could see: the analysed part of the AOI and each period's clear part.

Pure numpy. A new structure can only be found where the baseline and at least one later period
have a clear observation; everything else in the AOI polygon (cloud every month, no scene data,
beyond the grid) was not analysed and must not read as "nothing built there". Areas are pixel
counts on the grid times the pixel area; the AOI's own area comes from its polygon, so AOI parts
the grid never reached count as not analysed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from changedet.models import Composite, Coverage, PeriodCoverage

__all__ = ["measure_coverage"]


def measure_coverage(
    inside: np.ndarray,
    baseline: Composite,
    periods: Sequence[Composite],
    *,
    aoi_area_m2: float,
    min_clear_obs: int = 1,
    warn_below: float = 0.9,
) -> Coverage:
    """The AOI's analysed area and each period's clear area.

    inside: (H, W) bool AOI mask on the composites' grid; baseline: the baseline composite;
    periods: every period's composite (those starting at or after the baseline's end are the
    monitored ones); aoi_area_m2: the AOI polygon's area in m².
    """
    grid = baseline.grid
    if inside.shape != grid.shape:
        raise ValueError(f"AOI mask {inside.shape} is not on the composites' grid {grid.shape}")
    need = max(min_clear_obs, 1)
    seen_later = np.zeros(grid.shape, dtype=bool)
    for comp in periods:
        if comp.period.start >= baseline.period.end:
            seen_later |= comp.count >= need
    analysed = inside & (baseline.count >= need) & seen_later
    px_km2 = grid.pixel_area_m2 / 1e6
    aoi_km2 = aoi_area_m2 / 1e6
    per_period = []
    for comp in periods:
        # pixels whose centre the polygon holds: along its edge they may add up to a little
        # more than its area, never reported as more of the AOI than there is
        clear_km2 = min(float(np.count_nonzero(inside & (comp.count >= need))) * px_km2, aoi_km2)
        share = clear_km2 / aoi_km2 if aoi_km2 > 0 else 0.0
        per_period.append(PeriodCoverage(comp.period.label, round(clear_km2, 6), round(share, 4)))
    return Coverage(
        grid=grid,
        analysed=analysed,
        aoi_km2=round(aoi_km2, 6),  # to the m²: an AOI of a few pixels shows its own size
        analysed_km2=round(min(float(np.count_nonzero(analysed)) * px_km2, aoi_km2), 6),
        periods=tuple(per_period),
        warn_below=warn_below,
    )
