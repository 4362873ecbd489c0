"""The analyst-facing pictures and the self-contained HTML report of one run.

Draws with matplotlib's Agg canvas (no display, no pyplot global state) and plain numpy. Every image
is written as a PNG file and also embedded in report.html as a data: URI, so the report opens
air-gapped: it makes no network request (a strict Content-Security-Policy enforces that) and needs no
other file beside it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from changedet.config import OutputConfig
from changedet.models import Composite, Grid, Progress, RunResult, Structure, no_progress
from changedet.outputs.vectors import from_wgs84

__all__ = [
    "QUICKLOOK_MAX_PX",
    "REPORT_CSP",
    "UNKNOWN_COLOUR",
    "FirstSeenClass",
    "chip_image",
    "first_seen_classes",
    "render_report_html",
    "shared_stretch",
    "truecolor",
    "write_report_files",
]

QUICKLOOK_MAX_PX = 1600  # long side of the quicklook PNGs: keeps report.html a few MB at most
CHIP_PAD_PX = 8  # context around a structure in its evidence chip (10 m pixels)
CHIP_MIN_PX = 24
CHIP_SIZE_PX = 168  # displayed size of one chip panel after nearest-neighbour upscaling
NODATA_RGB = (96, 96, 96)  # grey where a composite has no clear observation
OUTLINE_RGB = (255, 230, 0)
UNKNOWN_COLOUR = (0.6, 0.6, 0.6)
BERM_COLOUR = (0.0, 229 / 255, 1.0)  # cyan: apart from every first-seen colour (plasma)
# Nothing may be fetched: images are data: URIs, styles are inline, no scripts at all.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

# ----------------------------------------------------------------------------------------------
# Colours by first-seen date (shared with the QGIS style so map, report and QGIS agree)


@dataclass(frozen=True)
class FirstSeenClass:
    value: str | None  # first_seen_end as YYYY-MM-DD, None for unknown
    label: str
    colour: tuple[float, float, float]
    count: int


def first_seen_classes(structures: Iterable[Structure]) -> list[FirstSeenClass]:
    """One class per distinct first-seen date (Structure.first_seen_end), oldest first, coloured
    along the 'plasma' ramp; structures with no date form a grey class at the end."""
    from matplotlib import colormaps

    counts: dict[str | None, int] = {}
    for s in structures:
        key = s.first_seen_end.isoformat() if s.first_seen_end else None
        counts[key] = counts.get(key, 0) + 1
    dated = sorted(k for k in counts if k is not None)
    cmap = colormaps["plasma"]
    out = []
    for i, value in enumerate(dated):
        pos = 0.5 if len(dated) == 1 else 0.1 + 0.8 * i / (len(dated) - 1)
        r, g, b, _ = cmap(pos)
        out.append(FirstSeenClass(value, f"first seen by {value}", (r, g, b), counts[value]))
    if None in counts:
        out.append(FirstSeenClass(None, "first-seen date unknown", UNKNOWN_COLOUR, counts[None]))
    return out


def _colour_of(s: Structure, classes: Sequence[FirstSeenClass]) -> tuple[float, float, float]:
    key = s.first_seen_end.isoformat() if s.first_seen_end else None
    for c in classes:
        if c.value == key:
            return c.colour
    return UNKNOWN_COLOUR


# ----------------------------------------------------------------------------------------------
# True colour


def shared_stretch(*composites: Composite, sample: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Per-band 2nd/98th percentiles of red, green, blue over all composites together, so before
    and after are drawn with the same stretch and a brighter roof really looks brighter."""
    values = []
    for comp in composites:
        rgb = np.stack([comp.band("red"), comp.band("green"), comp.band("blue")]).reshape(3, -1)
        step = max(1, rgb.shape[1] // sample)
        values.append(rgb[:, ::step])
    allv = np.concatenate(values, axis=1)
    lo = np.zeros(3)
    hi = np.ones(3)
    for b in range(3):
        finite = allv[b][np.isfinite(allv[b])]
        if finite.size:
            lo[b], hi[b] = np.percentile(finite, [2, 98])
        if hi[b] <= lo[b]:
            hi[b] = lo[b] + 1e-3
    return lo, hi


def truecolor(
    comp: Composite, lo: np.ndarray, hi: np.ndarray, *, window: tuple[slice, slice] | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 true-colour image; grey where there is no clear observation."""
    sl = window or (slice(None), slice(None))
    rgb = np.stack([comp.band("red")[sl], comp.band("green")[sl], comp.band("blue")[sl]], axis=-1)
    scaled = (rgb - lo) / (hi - lo)
    img = (np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0) * 255).round().astype(np.uint8)
    img[~np.isfinite(rgb).all(axis=-1)] = NODATA_RGB
    return img


def _downsample(img: np.ndarray, max_px: int) -> tuple[np.ndarray, int]:
    step = max(1, math.ceil(max(img.shape[:2]) / max_px))
    return img[::step, ::step], step


def _png(img: np.ndarray) -> bytes:
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, img, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Evidence chips


def _rings_px(geom: Any, grid: Grid) -> list[np.ndarray]:
    """Exterior and interior rings of a (multi)polygon as (N, 2) float arrays of (row, col)."""
    inv = ~grid.transform
    rings = []
    polys = getattr(geom, "geoms", [geom])
    for poly in polys:
        for ring in (poly.exterior, *poly.interiors):
            xy = np.asarray(ring.coords)
            cols, rows = inv @ (xy[:, 0], xy[:, 1])
            rings.append(np.column_stack([rows, cols]))
    return rings


def chip_image(
    before: Composite,
    after: Composite,
    structure: Structure,
    lo: np.ndarray,
    hi: np.ndarray,
) -> np.ndarray:
    """Before | after true-colour panels around one structure, upscaled with its outline drawn.

    Pure numpy/scikit-image: (H, W, 3) uint8.
    """
    from scipy.ndimage import binary_dilation
    from skimage.draw import polygon_perimeter

    grid = before.grid
    rings = _rings_px(structure.geometry, grid)
    pts = np.concatenate(rings)
    r0, c0 = np.floor(pts.min(axis=0)).astype(int)
    r1, c1 = np.ceil(pts.max(axis=0)).astype(int)
    size = max(r1 - r0, c1 - c0) + 2 * CHIP_PAD_PX
    size = max(size, CHIP_MIN_PX)
    rc, cc = (r0 + r1) // 2, (c0 + c1) // 2
    top, left = rc - size // 2, cc - size // 2
    # Crop with padding so structures near the edge still get a square chip.
    panels = []
    scale = max(1, CHIP_SIZE_PX // size)
    for comp in (before, after):
        canvas = np.full((size, size, 3), NODATA_RGB, dtype=np.uint8)
        rs = slice(max(top, 0), min(top + size, grid.height))
        cs = slice(max(left, 0), min(left + size, grid.width))
        if rs.stop > rs.start and cs.stop > cs.start:
            canvas[rs.start - top : rs.stop - top, cs.start - left : cs.stop - left] = truecolor(
                comp, lo, hi, window=(rs, cs)
            )
        big = np.repeat(np.repeat(canvas, scale, axis=0), scale, axis=1)
        outline = np.zeros(big.shape[:2], dtype=bool)
        for ring in rings:
            rr, cc_ = polygon_perimeter(
                (ring[:, 0] - top) * scale, (ring[:, 1] - left) * scale, shape=big.shape[:2]
            )
            outline[rr, cc_] = True
        # A dark halo keeps the yellow outline visible on bright roofs and on sand.
        big[binary_dilation(outline, iterations=1)] = (0, 0, 0)
        big[outline] = OUTLINE_RGB
        panels.append(big)
    gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1)


# ----------------------------------------------------------------------------------------------
# Figures


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _fig_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def counts_chart(result: RunResult) -> bytes:
    """Cumulative confirmed count per period with its low/high range, new per period, and the
    clear-sky fraction that limits what each period can show."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(8.5, 4.2)
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    counts = result.counts
    if not counts:
        ax.text(
            0.5,
            0.5,
            "no per-period counts in this run",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        ax2.set_axis_off()
        return _fig_png(fig)
    x = np.arange(len(counts))
    labels = [c.period.label for c in counts]
    cum = np.array([c.cumulative for c in counts])
    low = np.array([c.cumulative_low for c in counts])
    high = np.array([c.cumulative_high for c in counts])
    new = np.array([c.new_confirmed for c in counts])
    ax.bar(x, new, color="#9ecae1", label="new confirmed in period")
    ax.fill_between(
        x, low, high, color="#fdae6b", alpha=0.45, step=None, label="cumulative range (low–high)"
    )
    ax.plot(x, cum, "o-", color="#d94801", label="cumulative confirmed")
    ax.set_ylabel("structures")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title("New structures over time (estimates with ranges)", fontsize=10)
    ax2.bar(x, [c.clear_fraction for c in counts], color="#74c476")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("clear\nfraction", fontsize=8)
    ax2.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    return _fig_png(fig)


def overlay_map(
    result: RunResult, after_rgb: np.ndarray, classes: Sequence[FirstSeenClass]
) -> bytes:
    """The after composite with change pixels, structures (by first-seen date, unconfirmed dashed),
    berm lines and the AOI outline, in grid coordinates (km)."""
    grid = result.grid
    x0, y0, x1, y1 = (v / 1000.0 for v in grid.bounds)
    aspect = grid.height / max(grid.width, 1)
    width_in = 9.0
    fig = _figure(width_in, max(3.0, min(12.0, width_in * aspect)) + 0.6)
    ax = fig.add_subplot(1, 1, 1)
    img, step = _downsample(after_rgb, QUICKLOOK_MAX_PX)
    ax.imshow(img, extent=(x0, x1, y0, y1), interpolation="nearest")
    mask = np.asarray(result.change.mask, dtype=bool)[::step, ::step]
    if mask.any():
        rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
        rgba[mask] = (0.89, 0.10, 0.11, 0.25)
        ax.imshow(rgba, extent=(x0, x1, y0, y1), interpolation="nearest")
    aoi_km = from_wgs84(grid.crs)(result.aoi.geometry)
    for poly in getattr(aoi_km, "geoms", [aoi_km]):
        xy = np.asarray(poly.exterior.coords) / 1000.0
        ax.plot(xy[:, 0], xy[:, 1], color="white", lw=1.2)
    _draw_structures(ax, result.structures, classes)
    for b in result.berms:
        for line in getattr(b.geometry, "geoms", [b.geometry]):
            xy = np.asarray(line.coords) / 1000.0
            ax.plot(xy[:, 0], xy[:, 1], color=BERM_COLOUR, lw=2.0)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel(f"easting (km, {grid.crs})")
    ax.set_ylabel("northing (km)")
    ax.legend(
        handles=_legend_handles(classes),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )
    ax.set_title(f"Detections on the after composite ({result.after.period.label})", fontsize=10)
    return _fig_png(fig)


def _draw_structures(
    ax: Any, structures: Sequence[Structure], classes: Sequence[FirstSeenClass]
) -> None:
    """Outlines coloured by first-seen date (unconfirmed dashed), labelled with ids when few."""
    from matplotlib.patches import Polygon as MplPolygon

    label_ids = len(structures) <= 40
    for s in structures:
        colour = _colour_of(s, classes)
        for poly in getattr(s.geometry, "geoms", [s.geometry]):
            xy = np.asarray(poly.exterior.coords) / 1000.0
            ax.add_patch(
                MplPolygon(
                    xy,
                    closed=True,
                    fill=False,
                    edgecolor=colour,
                    lw=1.6,
                    linestyle="-" if s.confirmed else "--",
                )
            )
        if label_ids:
            c = s.geometry.centroid
            ax.annotate(
                s.id,
                (c.x / 1000.0, c.y / 1000.0),
                xytext=(4, 4),
                textcoords="offset points",
                color="white",
                fontsize=7,
            )


def _legend_handles(classes: Sequence[FirstSeenClass]) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [
        Patch(facecolor="none", edgecolor=c.colour, label=f"{c.label} ({c.count})") for c in classes
    ]
    handles += [
        Line2D([], [], color="black", ls="--", label="unconfirmed (dashed)"),
        Line2D([], [], color=BERM_COLOUR, lw=2, label="berm line"),
        Patch(facecolor=(0.89, 0.10, 0.11, 0.35), label="change pixels"),
        Line2D([], [], color="grey", lw=1.2, label="AOI outline (white)"),
    ]
    return handles


# ----------------------------------------------------------------------------------------------
# HTML


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


FILE_DESCRIPTIONS = {
    "structures.geojson": "new structures, RFC 7946 GeoJSON (EPSG:4326)",
    "structures.qml": "QGIS style for structures.geojson",
    "berms.geojson": "berm lines, RFC 7946 GeoJSON (EPSG:4326)",
    "berms.qml": "QGIS style for berms.geojson",
    "changedet.gpkg": "GeoPackage (aoi, structures, berms, change_areas, scenes) with QGIS styles",
    "change.tif": "COG: change score (robust z)",
    "change_mask.tif": "COG: change mask (1 change, 0 none, 255 unobserved)",
    "clear_count.tif": "COG: clear observations before / after",
    "source_date.tif": "COG: date of the observation used, before / after (days since 1970)",
    "counts.csv": "confirmed structures per period with ranges",
    "counts.png": "chart of counts.csv",
    "before.png": "true-colour quicklook, before composite",
    "after.png": "true-colour quicklook, after composite",
    "overlay.png": "map of detections on the after composite",
    "report.html": "this report",
    "run.json": "provenance: scenes, config fingerprint, versions, timings, limits",
}


def _structure_rows(
    result: RunResult, chips: Mapping[str, tuple[bytes, str]], classes: Sequence[FirstSeenClass]
) -> str:
    ordered = sorted(
        result.structures,
        key=lambda s: (
            s.first_seen_end is None,
            s.first_seen_end.isoformat() if s.first_seen_end else "",
            not s.confirmed,
            -s.confidence,
            s.id,
        ),
    )
    rows = []
    px = result.grid.pixel_area_m2
    for s in ordered:
        r, g, b = (round(c * 255) for c in _colour_of(s, classes))
        chip = chips.get(s.id)
        chip_html = (
            f'<a href="{_e(chip[1])}"><img class="chip" src="{_data_uri(chip[0])}" '
            f'alt="before and after chip of {_e(s.id)}"></a>'
            if chip
            else '<span class="muted">no chip</span>'
        )
        if s.first_seen_start or s.first_seen_end:
            seen = f"{_e(s.first_seen_start or '?')} – {_e(s.first_seen_end or '?')}"
        else:
            seen = "unknown"
        bermed = "not assessed" if s.bermed is None else ("yes" if s.bermed else "no")
        if s.berm_score is not None:
            bermed += f" ({s.berm_score:.2f})"
        status = "confirmed" if s.confirmed else "unconfirmed"
        if s.status != "active":
            status += f", {s.status}"
            if s.vanished_after:
                status += f" after {s.vanished_after.isoformat()}"
        rows.append(
            "<tr>"
            f'<td><span class="swatch" style="border-color: rgb({r},{g},{b});'
            f'{"" if s.confirmed else " border-style: dashed;"}"></span>{_e(s.id)}</td>'
            f"<td>{chip_html}</td>"
            f"<td>{seen}</td>"
            f'<td class="num">{s.area_m2:,.0f} m²<br><span class="muted">≈ {s.area_m2 / px:.0f} px'
            "</span></td>"
            f"<td>{_e(bermed)}</td>"
            f'<td class="num">{s.confidence:.2f}</td>'
            f"<td>{_e(status)}</td>"
            f'<td class="num">{s.n_clear_obs}</td>'
            "</tr>"
        )
    return "\n".join(rows)


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #1d1d1f; margin: 0; background: #f6f6f4; }
main { max-width: 1180px; margin: 0 auto; padding: 18px 22px 40px; background: #fff; }
h1 { font-size: 1.55em; margin: 0.2em 0 0.3em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0ee; font-weight: 600; }
table.kv th { width: 28%; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.banner { background: #fff3cd; border: 1px solid #e0b000; padding: 10px 14px; margin: 10px 0;
  font-weight: 600; }
.limits { background: #eef5fb; border-left: 4px solid #3182bd; padding: 8px 14px; }
.muted { color: #666; font-size: 0.9em; }
img.full { max-width: 100%; height: auto; border: 1px solid #ccc; }
.pair { display: flex; gap: 12px; flex-wrap: wrap; }
.pair figure { flex: 1 1 420px; margin: 0; }
.pair img.full { width: 100%; image-rendering: pixelated; }
figcaption { font-size: 0.9em; color: #555; }
img.chip { width: 220px; height: auto; image-rendering: pixelated; display: block; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 3px solid; margin-right: 6px;
  vertical-align: -2px; }
details { margin: 6px 0; }
code { font-size: 0.92em; }
"""


def render_report_html(
    result: RunResult,
    manifest: Mapping[str, Any],
    *,
    images: Mapping[str, bytes],
    chips: Mapping[str, tuple[bytes, str]],
    files: Sequence[tuple[str, int | None]],
) -> str:
    """The report as one HTML string. `images` holds the PNG bytes of before/after/overlay/counts;
    `chips` maps structure id → (PNG bytes, relative file name); `files` lists (name, size)."""
    return "".join(
        [
            _head_html(manifest),
            _summary_html(result, manifest),
            _limits_html(manifest["detection_limits"]),
            _counts_html(manifest["results"], images),
            _map_html(result, images),
            _structures_html(result, chips),
            _files_html(files),
        ]
    )


def _head_html(manifest: Mapping[str, Any]) -> str:
    """Document head, title line and, for synthetic input, the banner saying so."""
    aoi = manifest["aoi"]
    title = f"changedet report: {aoi['name']} ({aoi['id']})"
    head = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{REPORT_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{_e(title)}</h1>\n"
        f'<p class="muted">changedet {_e(manifest["versions"].get("changedet"))}, run created '
        f"{_e(manifest.get('created'))}, config fingerprint <code>"
        f"{_e(manifest.get('config_fingerprint'))}</code></p>\n"
    )
    if bool(manifest.get("synthetic")):
        head += (
            '<div class="banner" id="synthetic">SYNTHETIC INPUT DATA: this run used generated sample '
            "tiles, not real Sentinel-2 imagery. The detections demonstrate the pipeline and say "
            "nothing about the real site.</div>\n"
        )
    return head


def _summary_html(result: RunResult, manifest: Mapping[str, Any]) -> str:
    aoi = manifest["aoi"]
    res = manifest["results"]
    tr = manifest["time_range"]
    coreg = manifest["coregistration"]
    used = manifest["scenes"]["used"]
    skipped = manifest["scenes"]["skipped"]
    used_list = "".join(
        f"<li><code>{_e(s['id'])}</code> {_e(s['datetime'])}{_cloud(s.get('cloud_cover'))}</li>"
        for s in used
    )
    skipped_list = "".join(
        f"<li><code>{_e(s['id'])}</code>: {_e(s['reason'])}</li>" for s in skipped
    )
    bbox = ", ".join(f"{v:.4f}" for v in aoi["bbox"])
    return (
        '<h2>Summary</h2>\n<table class="kv">\n'
        f"<tr><th>AOI</th><td>{_e(aoi['name'])} (<code>{_e(aoi['id'])}</code>), "
        f"{aoi['area_km2']:.2f} km², bbox (lon/lat) {bbox}</td></tr>\n"
        f"<tr><th>Time range</th><td>{_e(tr['start'])} to {_e(tr['end'])} "
        f"(before: {_e(result.before.period.label)}, after: {_e(result.after.period.label)})"
        "</td></tr>\n"
        f"<tr><th>Scenes used</th><td>{len(used)}<details><summary>list</summary><ul>{used_list}"
        "</ul></details></td></tr>\n"
        f"<tr><th>Scenes skipped</th><td>{len(skipped)}"
        + (
            f"<details><summary>list with reasons</summary><ul>{skipped_list}</ul></details>"
            if skipped
            else ""
        )
        + "</td></tr>\n"
        f"<tr><th>Grid</th><td>{_e(manifest['grid']['crs'])}, {manifest['grid']['width']} × "
        f"{manifest['grid']['height']} px of {manifest['grid']['resolution_m']:g} m</td></tr>\n"
        f"<tr><th>Co-registration</th><td>measured shift {coreg['shift_px'][0]:+.2f} / "
        f"{coreg['shift_px'][1]:+.2f} px (row / col), "
        f"{'corrected' if coreg['corrected'] else 'not corrected'}</td></tr>\n"
        f"<tr><th>Detections</th><td>{res['n_structures']} structures ({res['n_confirmed']} "
        f"confirmed, {res['n_unconfirmed']} unconfirmed), {res['n_bermed']} bermed, "
        f"{res['n_berm_lines']} berm line(s)</td></tr>\n"
        "</table>\n"
    )


def _limits_html(limits: Mapping[str, Any]) -> str:
    mmu_px = limits["min_mapping_unit_px"]
    return (
        '<h2>Detection limits</h2>\n<div class="limits" id="limits"><ul>'
        f"<li>Pixel size {limits['pixel_size_m']:g} m (one pixel = "
        f"{limits['pixel_area_m2']:g} m²). Minimum mapping unit "
        f"<b>{limits['min_mapping_unit_m2']:g} m² (≈ {mmu_px:g} pixels)</b>; smaller objects are "
        "not reported.</li>"
        + "".join(f"<li>{_e(n)}</li>" for n in limits["notes"])
        + f"<li>Change threshold: score ≥ {_e(limits['change_threshold'])} (robust z).</li>"
        "</ul></div>\n"
    )


def _counts_html(res: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    last = res.get("cumulative_range")
    range_text = (
        f"Cumulative confirmed at the end: {res['cumulative_confirmed']} "
        f"(range {last[0]}–{last[1]})."
        if last
        else "No per-period counts in this run."
    )
    return (
        "<h2>Count over time</h2>\n"
        f'<img class="full" id="counts" src="{_data_uri(images["counts"])}" '
        'alt="chart of confirmed structures per period">\n'
        f"<p>{_e(range_text)} Values are estimates: a structure can only be dated to the interval "
        "between the last clear period it was absent and the first it was present.</p>\n"
    )


def _map_html(result: RunResult, images: Mapping[str, bytes]) -> str:
    before, after = result.before.period, result.after.period
    return (
        "<h2>Map</h2>\n"
        f'<img class="full" id="overlay" src="{_data_uri(images["overlay"])}" '
        'alt="map of detections on the after composite">\n'
        '<div class="pair">'
        f'<figure><img class="full" id="before" src="{_data_uri(images["before"])}" '
        f'alt="before true colour"><figcaption>Before: {_e(before.label)} '
        f"({_e(before.start)} – {_e(before.end)}); grey = no clear "
        "observation</figcaption></figure>"
        f'<figure><img class="full" id="after" src="{_data_uri(images["after"])}" '
        f'alt="after true colour"><figcaption>After: {_e(after.label)} '
        f"({_e(after.start)} – {_e(after.end)}); same stretch as "
        "before</figcaption></figure>"
        "</div>\n"
    )


def _structures_html(result: RunResult, chips: Mapping[str, tuple[bytes, str]]) -> str:
    n_chips = len(chips)
    chip_note = (
        ""
        if n_chips == len(result.structures)
        else f" Chips are shown for the {n_chips} most confident structures only."
    )
    heading = (
        f"<h2>Structures ({len(result.structures)})</h2>\n"
        f'<p class="muted">Chips: before | after, same stretch, outline in yellow.{chip_note} '
        "Outline colour = first-seen date; dashed = unconfirmed.</p>\n"
    )
    if not result.structures:
        return heading + (
            "<p>No new structure passed the minimum mapping unit and persistence rules.</p>\n"
        )
    classes = first_seen_classes(result.structures)
    return heading + (
        '<table id="structures">\n<tr><th>id</th><th>evidence</th><th>first seen</th>'
        "<th>area</th><th>bermed (score)</th><th>confidence</th><th>status</th>"
        "<th>clear obs</th></tr>\n" + _structure_rows(result, chips, classes) + "\n</table>\n"
    )


def _files_html(files: Sequence[tuple[str, int | None]]) -> str:
    file_rows = "".join(
        f'<tr><td><a href="{_e(name)}">{_e(name)}</a></td>'
        f"<td>{_e(FILE_DESCRIPTIONS.get(name, _describe(name)))}</td>"
        f'<td class="num">{"" if size is None else _fmt_size(size)}</td></tr>'
        for name, size in files
    )
    return (
        '<h2>Files</h2>\n<table id="files"><tr><th>file</th><th>content</th><th>size</th></tr>'
        f"{file_rows}</table>\n"
        '<p class="muted">Open changedet.gpkg or structures.geojson in QGIS: the styles load '
        "automatically. run.json records every scene, the config fingerprint and software "
        "versions.</p>\n</main>\n</body>\n</html>\n"
    )


def _cloud(value: float | None) -> str:
    return "" if value is None else f", scene cloud cover {value:g}%"


def _describe(name: str) -> str:
    if name.startswith("chips/"):
        return "before | after evidence chip of " + Path(name).stem
    return ""


# ----------------------------------------------------------------------------------------------
# Orchestration (called by changedet.outputs.write.write_run_outputs inside its temporary folder)


def write_report_files(
    result: RunResult,
    out_dir: Path,
    *,
    manifest: Mapping[str, Any],
    config: OutputConfig,
    extra_files: Sequence[str] = (),
    progress: Progress = no_progress,
) -> list[Path]:
    """Write before.png, after.png, overlay.png, counts.png, chips/<id>.png and (when
    config.report) report.html into `out_dir`. `extra_files` are names written later (run.json)
    that the report must still link to."""
    written: list[Path] = []

    def save(name: str, data: bytes) -> None:
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)

    lo, hi = shared_stretch(result.before, result.after)
    before_rgb = truecolor(result.before, lo, hi)
    after_rgb = truecolor(result.after, lo, hi)
    classes = first_seen_classes(result.structures)
    images = {
        "before": _png(_downsample(before_rgb, QUICKLOOK_MAX_PX)[0]),
        "after": _png(_downsample(after_rgb, QUICKLOOK_MAX_PX)[0]),
        "overlay": overlay_map(result, after_rgb, classes),
        "counts": counts_chart(result),
    }
    for key, data in images.items():
        save(f"{key}.png", data)
    chips: dict[str, tuple[bytes, str]] = {}
    if config.chips:
        chosen = sorted(result.structures, key=lambda s: (-s.confidence, s.id))[: config.max_chips]
        for i, s in enumerate(chosen):
            name = f"chips/{_chip_name(s.id)}.png"
            data = _png(chip_image(result.before, result.after, s, lo, hi))
            save(name, data)
            chips[s.id] = (data, name)
            progress("chips", i + 1, len(chosen))
    if config.report:
        names = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
        names.update(extra_files)
        files = [
            (n, (out_dir / n).stat().st_size if (out_dir / n).is_file() else None)
            for n in sorted(names, key=lambda n: (n.startswith("chips/"), n))
        ]
        text = render_report_html(result, manifest, images=images, chips=chips, files=files)
        path = out_dir / "report.html"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _chip_name(structure_id: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in structure_id).strip(".")
    return safe or "structure"
