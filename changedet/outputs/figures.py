"""The figures of a run: count over time, the detection map and the coverage inset (PNG bytes).

One responsibility: matplotlib drawings, on the Agg canvas (no display, no pyplot global state).
The count chart's bars are the per-period best estimate, so they add up to its cumulative line.
The detection map draws the structures the counts speak of (dropped candidates are left out),
coloured by the shared first-seen classes (`changedet.outputs.legend`), and those the analyst
reviewed as false positives apart (grey, crossed, counted nowhere), with latitude/longitude
ticks, a scale bar and a north arrow, and a legend that counts what it shows. The coverage inset
shows the AOI against the part of it that was analysed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from shapely.geometry import box

from changedet.models import Grid, RunResult, Structure
from changedet.outputs.chips import SYNTHETIC_RGB
from changedet.outputs.headline import km2, new_per_period
from changedet.outputs.legend import (
    DISMISSED_COLOUR,
    KIND_FILLS,
    DateClass,
    class_of,
    dismissed_structures,
    first_seen_classes,
    shown_structures,
)
from changedet.outputs.vectors import analysed_area, from_wgs84, to_wgs84

__all__ = [
    "BERM_COLOUR",
    "QUICKLOOK_MAX_PX",
    "counts_chart",
    "coverage_inset",
    "downsample",
    "overlay_map",
]

QUICKLOOK_MAX_PX = 1600  # long side of the quicklook PNGs: keeps report.html a few MB at most
BERM_COLOUR = (0.0, 229 / 255, 1.0)  # cyan: apart from every first-seen colour (plasma)
CHANGE_RGBA = (0.89, 0.10, 0.11, 0.25)


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _fig_png(fig: Any) -> bytes:
    """PNG bytes of a figure, zlib level 1 as `report._png`: the overlay map is a full-size
    image, and level 1 encodes it several times faster for a slightly larger file."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def downsample(img: np.ndarray, max_px: int) -> tuple[np.ndarray, int]:
    step = max(1, math.ceil(max(img.shape[:2]) / max_px))
    return img[::step, ::step], step


# ----------------------------------------------------------------------------------------------
# Count over time


def counts_chart(result: RunResult) -> bytes:
    """Cumulative confirmed count per period with its low/high range, new per period (bars that
    add up to the line), and the share of the AOI each period saw clearly."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(8.5, 4.2)
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    counts = result.counts
    if not counts:
        ax.text(0.5, 0.5, "no per-period counts in this run", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
        ax.set_axis_off()
        ax2.set_axis_off()
        return _fig_png(fig)
    x = np.arange(len(counts))
    new = new_per_period(counts)
    ax.bar(x, new, color="#9ecae1", label="new in period (best estimate; bars add up to the line)")
    low = [c.cumulative_low for c in counts]
    high = [c.cumulative_high for c in counts]
    ax.fill_between(x, low, high, color="#fdae6b", alpha=0.45, label="cumulative range (low–high)")
    ax.plot(x, [c.cumulative for c in counts], "o-", color="#d94801", label="cumulative confirmed")
    ax.set_ylabel("structures")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title("New structures over time (estimates with ranges)", fontsize=10)
    _stamp(ax, result, fontsize=9, above=True)
    shares = {p.label: p.share for p in result.coverage.periods} if result.coverage else {}
    clear = [100 * shares.get(c.period.label, c.clear_fraction) for c in counts]
    ax2.bar(x, clear, color="#74c476")
    # Scaled to the data: when only a sliver of the AOI was ever seen, the bars still show which
    # periods were cloudy; the tick labels say how small the sliver is.
    ax2.set_ylim(0, min(100.0, max(5.0, 1.15 * max(clear))))
    ax2.yaxis.set_major_locator(MaxNLocator(3))
    ax2.set_ylabel("% of the AOI\nseen clearly", fontsize=8)
    first = counts[0].period
    months = (first.end.year - first.start.year) * 12 + first.end.month - first.start.month
    step = _label_step(len(counts), max(months, 1))
    ax2.set_xticks(x, [c.period.label for c in counts], rotation=45, ha="right", fontsize=8)
    for i, label in enumerate(ax2.get_xticklabels()):
        label.set_visible(i % step == 0)  # years of periods: every tick, a label in `step`
    return _fig_png(fig)


def _label_step(n_periods: int, months: int, most: int = 24) -> int:
    """Every how many periods of `months` months a tick is labelled, so that at most `most`
    labels show, every quarter, half-year, year or several years (five years of months: one a
    quarter; of quarters: every one)."""
    spans = (1, 2, 3, 6, *(12 * 2**k for k in range(12)))
    steps = [span // months for span in spans if span % months == 0]
    return next((k for k in steps if -(-n_periods // k) <= most), steps[-1])


# ----------------------------------------------------------------------------------------------
# Detection map


def _nice(value: float) -> float:
    """The largest 1, 2 or 5 × 10^k not above `value`."""
    exp = 10.0 ** math.floor(math.log10(value))
    return max(m * exp for m in (1.0, 2.0, 5.0) if m * exp <= value)


def _lonlat_ticks(ax: Any, grid: Grid) -> None:
    """Latitude/longitude tick labels on a map drawn in grid kilometres, with faint graticule
    lines (meridians and parallels drawn as they run on the grid)."""
    from pyproj import Transformer

    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    to_xy = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    x0, y0, x1, y1 = grid.bounds
    lons, lats = to_ll.transform([x0, x1, x0, x1], [y0, y0, y1, y1])
    lon_lo, lon_hi, lat_lo, lat_hi = min(lons), max(lons), min(lats), max(lats)
    step = _nice(max(lon_hi - lon_lo, lat_hi - lat_lo) / 4)
    xs, xlabels, ys, ylabels = [], [], [], []
    for lon in np.arange(math.ceil(lon_lo / step) * step, lon_hi, step):
        lat_line = np.linspace(lat_lo - step, lat_hi + step, 50)
        mx, my = to_xy.transform(np.full(50, lon), lat_line)
        ax.plot(np.asarray(mx) / 1000, np.asarray(my) / 1000, color="white", lw=0.4, alpha=0.35)
        xs.append(float(np.interp(y0, my, mx)) / 1000)
        xlabels.append(
            f"{lon:.{_decimals(step)}f}°E" if lon >= 0 else f"{-lon:.{_decimals(step)}f}°W"
        )
    for lat in np.arange(math.ceil(lat_lo / step) * step, lat_hi, step):
        lon_line = np.linspace(lon_lo - step, lon_hi + step, 50)
        mx, my = to_xy.transform(lon_line, np.full(50, lat))
        ax.plot(np.asarray(mx) / 1000, np.asarray(my) / 1000, color="white", lw=0.4, alpha=0.35)
        ys.append(float(np.interp(x0, mx, my)) / 1000)
        ylabels.append(
            f"{lat:.{_decimals(step)}f}°N" if lat >= 0 else f"{-lat:.{_decimals(step)}f}°S"
        )
    ax.set_xticks(xs, xlabels, fontsize=8)
    ax.set_yticks(ys, ylabels, fontsize=8)


def _decimals(step: float) -> int:
    """Decimals that show a tick step of 1, 2 or 5 × 10^k degrees."""
    return max(0, -math.floor(math.log10(step)))


def _scale_and_north(ax: Any, grid: Grid) -> None:
    """A scale bar (a round length near a fifth of the map) and an arrow to true north."""
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
    from pyproj import Transformer

    width_m = grid.bounds[2] - grid.bounds[0]
    length = _nice(width_m / 5)
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    bar = AnchoredSizeBar(
        ax.transData, length / 1000, label, "lower right", pad=0.5, color="white", frameon=False,
        size_vertical=(grid.bounds[3] - grid.bounds[1]) / 1000 / 150,
        fontproperties=FontProperties(size=8),
    )  # fmt: skip
    ax.add_artist(bar)
    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    to_xy = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    cx, cy = (grid.bounds[0] + grid.bounds[2]) / 2, (grid.bounds[1] + grid.bounds[3]) / 2
    lon, lat = to_ll.transform(cx, cy)
    nx, ny = to_xy.transform(lon, lat + 0.01)
    angle = math.atan2(nx - cx, ny - cy)  # grid convergence: true north vs grid north
    dx, dy = 0.07 * math.sin(angle), 0.07 * math.cos(angle)
    tip = (0.95 + dx / 2, 0.86 + dy / 2)
    ax.annotate(
        "", xy=tip, xytext=(0.95 - dx / 2, 0.86 - dy / 2), xycoords="axes fraction",
        arrowprops={"arrowstyle": "-|>", "color": "white", "lw": 1.8},
    )  # fmt: skip
    ax.text(tip[0] + dx * 0.3, tip[1] + dy * 0.3, "N", transform=ax.transAxes, ha="center",
            va="bottom", color="white", fontsize=10, fontweight="bold",
            path_effects=_halo())  # fmt: skip


def overlay_map(result: RunResult, after_rgb: np.ndarray) -> bytes:
    """The after composite with change pixels, the structures (by first-seen class, unconfirmed
    dashed, ground works hatched), berm lines and the AOI outline."""
    grid = result.grid
    x0, y0, x1, y1 = (v / 1000.0 for v in grid.bounds)
    aspect = grid.height / max(grid.width, 1)
    fig = _figure(9.0, max(3.0, min(12.0, 9.0 * aspect)) + 0.6)
    ax = fig.add_subplot(1, 1, 1)
    img, step = downsample(after_rgb, QUICKLOOK_MAX_PX)
    mask = np.asarray(result.change.mask, dtype=bool)[::step, ::step]
    if mask.any():
        # The change tint blended here, not as a second image: Agg resamples one image, not two.
        img = img.copy()
        alpha = CHANGE_RGBA[3]
        tint = np.asarray(CHANGE_RGBA[:3]) * 255 * alpha
        img[mask] = (img[mask] * (1 - alpha) + tint).round().astype(np.uint8)
    ax.imshow(img, extent=(x0, x1, y0, y1), interpolation="nearest")
    aoi_km = from_wgs84(grid.crs)(result.aoi.geometry)
    for poly in getattr(aoi_km, "geoms", [aoi_km]):
        xy = np.asarray(poly.exterior.coords) / 1000.0
        ax.plot(xy[:, 0], xy[:, 1], color="black", lw=3.0)
        ax.plot(xy[:, 0], xy[:, 1], color="white", lw=1.2)
    shown = shown_structures(result.structures)
    classes = first_seen_classes(shown)
    _draw_structures(ax, shown, classes)
    dismissed = dismissed_structures(result.structures)
    _draw_dismissed(ax, dismissed, label_ids=len(shown) + len(dismissed) <= 40)
    for b in result.berms:
        for line in getattr(b.geometry, "geoms", [b.geometry]):
            xy = np.asarray(line.coords) / 1000.0
            ax.plot(xy[:, 0], xy[:, 1], color=BERM_COLOUR, lw=2.0)
    _lonlat_ticks(ax, grid)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    _scale_and_north(ax, grid)
    ax.legend(handles=_legend_handles(result, shown, classes, len(dismissed)), loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # fmt: skip
    ax.set_title(f"Detections on the after composite ({result.after.period.label}), {grid.crs}",
                 fontsize=10)  # fmt: skip
    _stamp(ax, result)
    return _fig_png(fig)


def _stamp(ax: Any, result: RunResult, fontsize: int = 12, *, above: bool = False) -> None:
    """The red SYNTHETIC stamp in the axes' lower left corner on a run of generated data (a
    figure travels without the report's banner); `above`: over the axes' top right corner,
    where it hides no data (a chart's first bars)."""
    if result.synthetic:
        x, y, ha = (1.0, 1.02, "right") if above else (0.01, 0.01, "left")
        ax.text(x, y, "SYNTHETIC data", transform=ax.transAxes, ha=ha, va="bottom",
                color="white", fontsize=fontsize, fontweight="bold", zorder=10,
                bbox={"facecolor": [c / 255 for c in SYNTHETIC_RGB], "edgecolor": "none",
                      "pad": 3})  # fmt: skip


def _colour(s: Structure, classes: Sequence[DateClass]) -> tuple[float, float, float]:
    c = class_of(s, classes)
    return c.colour if c is not None else (0.6, 0.6, 0.6)


def _draw_structures(
    ax: Any, structures: Sequence[Structure], classes: Sequence[DateClass]
) -> None:
    """Outlines coloured by first-seen class (unconfirmed dashed, ground works hatched), with ids
    when few enough to read."""
    from matplotlib.patches import Polygon as MplPolygon

    label_ids = len(structures) <= 40
    for s in structures:
        colour = _colour(s, classes)
        hatch = None if KIND_FILLS.get(s.kind) == "solid" else "////"
        for poly in getattr(s.geometry, "geoms", [s.geometry]):
            xy = np.asarray(poly.exterior.coords) / 1000.0
            ax.add_patch(
                MplPolygon(xy, closed=True, fill=False, edgecolor=colour, lw=1.6, hatch=hatch,
                           linestyle="-" if s.confirmed else "--")
            )  # fmt: skip
        if label_ids:
            c = s.geometry.representative_point()
            ax.annotate(s.id, (c.x / 1000.0, c.y / 1000.0), xytext=(4, 4),
                        textcoords="offset points", color="white", fontsize=6)  # fmt: skip


def _draw_dismissed(ax: Any, structures: Sequence[Structure], *, label_ids: bool) -> None:
    """Structures reviewed as false positives: grey, crossed, dotted outline."""
    from matplotlib.patches import Polygon as MplPolygon

    for s in structures:
        for poly in getattr(s.geometry, "geoms", [s.geometry]):
            xy = np.asarray(poly.exterior.coords) / 1000.0
            ax.add_patch(
                MplPolygon(xy, closed=True, fill=False, edgecolor=DISMISSED_COLOUR, lw=1.2,
                           hatch="xx", linestyle=":")
            )  # fmt: skip
        if label_ids:
            c = s.geometry.representative_point()
            ax.annotate(s.id, (c.x / 1000.0, c.y / 1000.0), xytext=(4, 4),
                        textcoords="offset points", color=DISMISSED_COLOUR, fontsize=6)  # fmt: skip


def _legend_handles(
    result: RunResult, shown: Sequence[Structure], classes: Sequence[DateClass], dismissed: int
) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [
        Patch(
            facecolor="none", edgecolor=c.colour, lw=1.6, label=f"first seen {c.label} ({c.count})"
        )
        for c in classes
    ]
    unconfirmed = sum(1 for s in shown if not s.confirmed)
    if unconfirmed:
        handles.append(Line2D([], [], color="black", ls="--", label=f"unconfirmed ({unconfirmed})"))
    works = sum(1 for s in shown if KIND_FILLS.get(s.kind) != "solid")
    if works:
        handles.append(Patch(facecolor="none", edgecolor="black", hatch="////",
                             label=f"not a building ({works})"))  # fmt: skip
    if dismissed:
        handles.append(Patch(facecolor="none", edgecolor=DISMISSED_COLOUR, hatch="xx", ls=":",
                             label=f"reviewed false positive ({dismissed}), not counted"))  # fmt: skip
    handles += [
        Line2D([], [], color=BERM_COLOUR, lw=2, label=f"berm line ({len(result.berms)})"),
        Patch(facecolor=CHANGE_RGBA[:3], alpha=0.35, label="change pixels"),
        Line2D([], [], color="white", lw=1.2, path_effects=_halo(), label="AOI outline"),
    ]
    return handles


def _halo() -> list[Any]:
    from matplotlib import patheffects

    return [patheffects.Stroke(linewidth=3, foreground="black"), patheffects.Normal()]


# ----------------------------------------------------------------------------------------------
# Coverage inset


def coverage_inset(result: RunResult) -> bytes:
    """The AOI (outline) against its analysed part (green) and the grid (dashed), lon/lat."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig = _figure(3.6, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    aoi = result.aoi.geometry
    for poly in getattr(aoi, "geoms", [aoi]):
        xy = np.asarray(poly.exterior.coords)
        ax.fill(xy[:, 0], xy[:, 1], color="#f0f0f0", zorder=1)
        ax.plot(xy[:, 0], xy[:, 1], color="black", lw=1.2, zorder=3)
    found = analysed_area(result)
    if found is not None and found[0] is not None:
        lonlat = to_wgs84(result.grid.crs)(found[0])
        for poly in getattr(lonlat, "geoms", [lonlat]):
            xy = np.asarray(poly.exterior.coords)
            ax.fill(xy[:, 0], xy[:, 1], color="#31a354", alpha=0.85, zorder=2, lw=0)
    frame = to_wgs84(result.grid.crs)(box(*result.grid.bounds))
    xy = np.asarray(frame.exterior.coords)
    ax.plot(xy[:, 0], xy[:, 1], color="#555555", lw=0.8, ls="--", zorder=4)
    lat = float(aoi.centroid.y)
    ax.set_aspect(1 / max(math.cos(math.radians(lat)), 0.1))
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.ticklabel_format(useOffset=False, style="plain")
    if result.coverage is not None:
        cov = result.coverage
        ax.set_title(
            f"analysed {km2(cov.analysed_km2)} of {km2(cov.aoi_km2)} ({100 * cov.share:.1f} %)",
            fontsize=8,
        )
    ax.set_xlabel("longitude (°)", fontsize=7)
    ax.set_ylabel("latitude (°)", fontsize=7)
    ax.legend(
        handles=[
            Patch(facecolor="#f0f0f0", edgecolor="black", label="AOI"),
            Patch(facecolor="#31a354", label="analysed"),
            Patch(facecolor="none", edgecolor="#555555", ls="--", label="analysis grid"),
        ],
        loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=7, frameon=False,
    )  # fmt: skip
    _stamp(ax, result, fontsize=8)
    return _fig_png(fig)
