"""Evidence chips: one structure before and after, dated, with a scale bar and its outline.

One responsibility: drawing the chip pictures. A chip is two panels side by side, the last clear
picture before the structure appeared and the first after (`RunResult.evidence`, chosen by
`changedet.core.evidence`), each upscaled with nearest neighbour so pixels stay pixels, with the
date (or "composite <period>") written in the picture, a 100 m scale bar and the structure's
outline in yellow on a dark halo. Both panels use the run's shared true-colour stretch. Text is
drawn with Pillow (matplotlib's own dependency) in matplotlib's DejaVu Sans.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont
from skimage.draw import polygon_perimeter

from changedet.core.evidence import chip_window, composite_window
from changedet.core.mask import shifted_extreme
from changedet.models import EvidenceImage, Grid, RunResult, Structure, StructureEvidence
from changedet.outputs.imagery import rgb_picture

# Pillow loads its format plugins on first use. The chips are drawn on a thread while the figures
# are saved on the main one: load them here, on the importing thread, so two threads never
# import them at once (a module one thread has half imported is another's ImportError).
Image.preinit()

__all__ = [
    "CHIP_PANEL_PX",
    "OUTLINE_RGB",
    "SCALE_BAR_M",
    "SYNTHETIC_RGB",
    "SYNTHETIC_STAMP",
    "chip_image",
    "evidence_of",
    "stamp_synthetic",
]

CHIP_PANEL_PX = 170  # side of one panel, about (shown 1:1 in the report, so text stays sharp)
SCALE_BAR_M = 100.0
OUTLINE_RGB = (255, 230, 0)
_GAP_PX = 6


@functools.lru_cache(maxsize=4)
def _font(size: int) -> Any:
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


SYNTHETIC_STAMP = "SYNTHETIC"  # on every picture of a run on generated data
SYNTHETIC_RGB = (220, 20, 20)


def stamp_synthetic(img: np.ndarray) -> np.ndarray:
    """`img` (H, W, 3 uint8) with "SYNTHETIC" in white on red at its bottom right: a picture of
    generated data says so wherever it travels."""
    picture = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))
    draw = ImageDraw.Draw(picture)
    size = max(8, min(18, picture.width // 25))
    font = _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), SYNTHETIC_STAMP, font=font)
    pad = max(2, size // 4)
    x1, y1 = picture.width - 2, picture.height - 2
    x0, y0 = x1 - (right - left) - 2 * pad, y1 - (bottom - top) - 2 * pad
    draw.rectangle((x0, y0, x1, y1), fill=SYNTHETIC_RGB)
    draw.text((x0 + pad - left, y0 + pad - top), SYNTHETIC_STAMP, font=font, fill=(255, 255, 255))
    return np.asarray(picture)


def evidence_of(result: RunResult, s: Structure) -> StructureEvidence:
    """The structure's evidence from the run, or else its windows of the before and after
    composites (a result made without per-date pixels)."""
    for ev in result.evidence:
        if ev.structure_id == s.id:
            return ev
    top, left, side = chip_window(s.geometry, result.grid)
    sides = []
    for comp in (result.before, result.after):
        rgb = composite_window(comp, top, left, side)
        sides.append(
            EvidenceImage(rgb, f"composite {comp.period.label}", None, "composite", comp.scene_ids)
        )
    return StructureEvidence(s.id, result.grid.window(top, left, side, side), sides[0], sides[1])


def _rings_px(geom: Any, grid: Grid, scale: int) -> list[np.ndarray]:
    """Rings of a (multi)polygon as (N, 2) arrays of (row, col) on the upscaled panel."""
    inv = ~grid.transform
    rings = []
    for poly in getattr(geom, "geoms", [geom]):
        for ring in (poly.exterior, *poly.interiors):
            xy = np.asarray(ring.coords)
            cols, rows = inv @ (xy[:, 0], xy[:, 1])
            rings.append(np.column_stack([rows, cols]) * scale)
    return rings


def _outline_masks(
    shape: tuple[int, int], rings: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(halo, line) masks of the outline on a panel of `shape`: the rings' perimeter and, around
    it, a dark halo one pixel wide (4-neighbours) that keeps the yellow visible on bright roofs
    and on sand. Drawn once per chip, for both panels."""
    line = np.zeros(shape, dtype=bool)
    for ring in rings:
        rr, cc = polygon_perimeter(ring[:, 0], ring[:, 1], shape=shape)
        line[rr, cc] = True
    halo = shifted_extreme(line, axis=0) | shifted_extreme(line, axis=1)
    return halo, line


def _annotate(panel: np.ndarray, caption: str, bar_px: float) -> np.ndarray:
    """The caption in a dark band at the top and a 100 m scale bar at the bottom left."""
    img = Image.fromarray(panel).convert("RGBA")
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = 13  # shrunk until the caption fits the panel ("before · composite 2023-06..2023-07")
    while size > 8 and draw.textlength(caption, font=_font(size)) > img.width - 8:
        size -= 1
    font, small = _font(size), _font(11)
    draw.rectangle((0, 0, img.width, 19), fill=(0, 0, 0, 170))
    draw.text((5, 2), caption, font=font, fill=(255, 255, 255, 255))
    x0, y1 = 8, img.height - 8
    x1 = x0 + round(bar_px)
    draw.rectangle((x0 - 3, y1 - 20, x1 + 3, y1 + 3), fill=(0, 0, 0, 140))
    draw.rectangle((x0, y1 - 5, x1, y1), fill=(255, 255, 255, 255), outline=(0, 0, 0, 255))
    draw.text((x0, y1 - 19), f"{SCALE_BAR_M:g} m", font=small, fill=(255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(img, layer).convert("RGB"))


def _caption(side: str, image: EvidenceImage) -> str:
    return f"{side} · {image.label}"


def chip_image(
    evidence: StructureEvidence, structure: Structure, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Before | after panels of one structure as an (H, W, 3) uint8 picture."""
    grid = evidence.window
    scale = max(2, round(CHIP_PANEL_PX / max(grid.width, 1)))
    rings = _rings_px(structure.geometry, grid, scale)
    bar_px = SCALE_BAR_M / grid.res * scale
    sides = (("before", evidence.before), ("after", evidence.after))
    pictures = [rgb_picture(image.rgb, lo, hi) for _, image in sides]
    height, width = pictures[0].shape[:2]  # both panels show the same window
    halo, line = _outline_masks((height * scale, width * scale), rings)
    panels = []
    for (side, image), picture in zip(sides, pictures, strict=True):
        big = np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)
        big[halo] = (0, 0, 0)
        big[line] = OUTLINE_RGB
        panels.append(_annotate(big, _caption(side, image), bar_px))
    gap = np.full((panels[0].shape[0], _GAP_PX, 3), 255, dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1)
