"""The analyst-facing pictures and the self-contained HTML report of one run.

One responsibility: report.html and the PNG files it shows. The report opens with the headline
(`changedet.outputs.headline`) and how much of the AOI was analysed (with an inset map), then the
count over time, the detection map, and one row per structure with its dated evidence chip,
coordinates and links to open the spot in web viewers. Every image is written as a PNG file and
also embedded as a data: URI, so the report opens air-gapped: it loads nothing (a strict
Content-Security-Policy enforces that) and needs no other file beside it. The viewer links are
plain links: nothing is fetched unless the reader follows one.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from changedet.config import OutputConfig
from changedet.core.evidence import chip_order
from changedet.models import (
    FALSE_POSITIVE,
    Composite,
    Progress,
    RunResult,
    Structure,
    StructureEvidence,
    no_progress,
)
from changedet.outputs.chips import chip_image, evidence_of, stamp_synthetic
from changedet.outputs.drawn import Drawings, take_or_draw
from changedet.outputs.figures import (
    QUICKLOOK_MAX_PX,
    counts_chart,
    coverage_inset,
    downsample,
    overlay_map,
)
from changedet.outputs.headline import Headline, headline, km2
from changedet.outputs.imagery import truecolor
from changedet.outputs.legend import class_of, first_seen_classes, shown_structures
from changedet.outputs.vectors import structure_point, viewer_links

__all__ = [
    "FILE_DESCRIPTIONS",
    "REPORT_CSP",
    "Pictures",
    "render_report_html",
    "write_pictures",
    "write_report_html",
]

Chip = tuple[bytes, str, str]  # a structure's chip: PNG bytes, file name, caption with dates
# Nothing may be fetched: images are data: URIs, styles are inline, no scripts at all.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _png(img: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image. zlib level 1: a run writes a picture per
    structure, and level 1 encodes them about 3 x faster than the default for files about 7 %
    larger. Pillow straight from the array: matplotlib's imsave adds an alpha channel first
    (a third more to compress)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(
        buf, format="png", compress_level=1
    )
    return buf.getvalue()


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
    "changedet.qgz": "QGIS project: every layer below, styled and grouped (open this first)",
    "structures.geojson": "new structures, RFC 7946 GeoJSON (EPSG:4326)",
    "structures.qml": "QGIS style for structures.geojson",
    "structures.csv": "one row per structure with latitude/longitude and every property",
    "structures.kml": "structures for Google Earth (KML)",
    "berms.geojson": "berm lines, RFC 7946 GeoJSON (EPSG:4326)",
    "berms.qml": "QGIS style for berms.geojson",
    "aoi.geojson": "the AOI, RFC 7946 GeoJSON (EPSG:4326; written without the GeoPackage)",
    "aoi.qml": "QGIS style for aoi.geojson",
    "analysed_area.geojson": "the analysed part of the AOI, RFC 7946 GeoJSON (EPSG:4326; "
    "written without the GeoPackage)",
    "analysed_area.qml": "QGIS style for analysed_area.geojson",
    "changedet.gpkg": "GeoPackage (aoi, analysed_area, structures, berms, change_areas, scenes) "
    "with QGIS styles",
    "change.tif": "COG: change score (robust z)",
    "change_mask.tif": "COG: change mask (1 change, 0 none, 255 unobserved)",
    "clear_count.tif": "COG: clear observations per pixel over the run",
    "imagery/latest.tif": "COG: true colour of the latest composite",
    "imagery/baseline.tif": "COG: true colour of the baseline composite",
    "imagery/latest_date.tif": "COG: acquisition date (YYYYMMDD) of each latest-composite pixel",
    "imagery/baseline_date.tif": "COG: acquisition date (YYYYMMDD) of each baseline pixel",
    "counts.csv": "new and cumulative structures per period with ranges, clear share of the AOI",
    "counts.png": "chart of counts.csv",
    "coverage.png": "the AOI against the part of it that was analysed",
    "before.png": "true-colour quicklook, before composite",
    "after.png": "true-colour quicklook, after composite",
    "overlay.png": "map of detections on the after composite",
    "report.html": "this report",
    "run.json": "provenance: scenes, effective config, versions, timings, limits, coverage",
    "alerts.geojson": "the monitor's alerts of this AOI, oldest first, RFC 7946 GeoJSON "
    "(EPSG:4326)",
}


def _describe(name: str) -> str:
    if name in FILE_DESCRIPTIONS:
        return FILE_DESCRIPTIONS[name]
    if name.startswith("chips/"):
        return "dated before | after evidence chip of " + Path(name).stem
    if name.startswith("imagery/periods/") and name.endswith(".tif"):
        return f"COG: true colour of period {Path(name).stem}"
    if name.endswith(".qml"):
        return f"QGIS style for {Path(name).with_suffix('.tif').as_posix()}"
    return ""


# ----------------------------------------------------------------------------------------------
# Sections


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #1d1d1f; margin: 0; background: #f6f6f4; }
main { max-width: 1240px; margin: 0 auto; padding: 18px 22px 40px; background: #fff; }
h1 { font-size: 1.55em; margin: 0.2em 0 0.3em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; width: 100%; }
.wide { overflow-x: auto; }  /* a table wider than the window scrolls in its box, not the page */
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0ee; font-weight: 600; }
table.kv th { width: 28%; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.banner { background: #fff3cd; border: 1px solid #e0b000; padding: 10px 14px; margin: 10px 0;
  font-weight: 600; }
.warn { background: #fde2e1; border: 1px solid #c62828; padding: 10px 14px; margin: 10px 0;
  font-weight: 600; }
.headline { background: #eef5ee; border-left: 5px solid #31a354; padding: 8px 16px; margin: 12px 0; }
.headline p { margin: 4px 0; }
.headline p.lead { font-size: 1.25em; font-weight: 650; }
.coverage { display: flex; gap: 18px; align-items: flex-start; flex-wrap: wrap; }
.coverage > div { flex: 1 1 420px; }
.coverage img { width: 340px; height: auto; border: 1px solid #ccc; }
.periods { display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: 0.9em; }
.limits { background: #eef5fb; border-left: 4px solid #3182bd; padding: 8px 14px; }
.muted { color: #666; font-size: 0.9em; }
img.full { max-width: 100%; height: auto; border: 1px solid #ccc; }
.pair { display: flex; gap: 12px; flex-wrap: wrap; }
.pair figure { flex: 1 1 420px; margin: 0; }
.pair img.full { width: 100%; image-rendering: pixelated; }
figcaption { font-size: 0.9em; color: #555; }
img.chip { display: block; }  /* 1:1, so the dates in the picture stay sharp */
td.evidence { min-width: 350px; }
td .muted { display: block; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 3px solid; margin-right: 6px;
  vertical-align: -2px; }
td.where a { display: inline-block; margin-right: 6px; }
td.seen { white-space: nowrap; }
td.id { min-width: 8.6em; overflow-wrap: anywhere; }  /* "39N-560750-" on its first line */
details { margin: 6px 0; }
code { font-size: 0.92em; }
"""


def _head_html(manifest: Mapping[str, Any]) -> str:
    """Document head, title line and, for synthetic input, the banner saying so."""
    aoi = manifest["aoi"]
    title = f"changedet report: {aoi['name']} ({aoi['id']})"
    head = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{REPORT_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{_e(title)}</h1>\n"
        f'<p class="muted">changedet {_e(manifest["versions"].get("changedet"))}, run created '
        f"{_e(manifest.get('created'))}, config fingerprint <code>"
        f"{_e(manifest.get('config_fingerprint'))}</code></p>\n"
    )
    if bool(manifest.get("synthetic")):
        head += (
            '<div class="banner" id="synthetic">SYNTHETIC INPUT DATA: this run used generated '
            "acquisitions (the bundled sample tiles, or a semi-real series from OSCD spectra), not "
            "Sentinel-2 imagery of this site. The detections test the pipeline and say nothing "
            "about the real place.</div>\n"
        )
    return head


def _headline_html(told: Headline) -> str:
    lines = told.lines()
    lead, rest = (lines[0], lines[1:]) if lines else ("", ())
    warnings = "".join(
        f'<div class="warn" id="{name}-warning">{_e(w[:1].upper() + w[1:])}</div>\n'
        for name, w in told.named_warnings
    )
    return (
        '<section class="headline" id="headline">'
        f'<p class="lead">{_e(lead)}</p>'
        + "".join(f"<p>{_e(line)}</p>" for line in rest)
        + "</section>\n"
        + warnings
    )


def _coverage_html(result: RunResult, images: Mapping[str, bytes]) -> str:
    cov = result.coverage
    if cov is None:
        return ""
    periods = "".join(
        f"<span><b>{_e(p.label)}</b> {100 * p.share:.1f} %</span>" for p in cov.periods
    )
    inset = (
        f'<img id="coverage-inset" src="{_data_uri(images["coverage"])}" '
        'alt="inset map: the AOI and the part of it that was analysed">'
        if "coverage" in images
        else ""
    )
    layer = (  # a layer of the GeoPackage, else its own GeoJSON file
        "; it is the <code>analysed_area</code> layer of changedet.gpkg"
        if result.config.get("output", {}).get("geopackage", True)
        else "; it is <code>analysed_area.geojson</code>"
    )
    return (
        '<h2>Coverage: where the run could see</h2>\n<div class="coverage" id="coverage"><div>'
        f"<p>AOI <b>{km2(cov.aoi_km2)}</b>; analysed <b>{km2(cov.analysed_km2)} "
        f"({100 * cov.share:.1f} %)</b>: the part of the AOI with a clear baseline and at least "
        "one clear later observation. Outside it the run saw nothing, so no finding (and no "
        f"absence of findings) applies there{layer}.</p>"
        f'<p class="muted">Share of the AOI seen clearly, per period:</p><div class="periods">'
        f"{periods}</div></div>{inset}</div>\n"
    )


def _summary_html(result: RunResult, manifest: Mapping[str, Any]) -> str:
    aoi = manifest["aoi"]
    res = manifest["results"]
    bermed = (
        "berms not assessed" if res["n_bermed"] is None else f"{res['n_bermed']} of them bermed"
    )
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
        f"confirmed, {res['n_unconfirmed']} unconfirmed), {bermed}, "
        + _dismissed(res.get("n_false_positive"))
        + f"{res['n_berm_lines']} berm line(s)</td></tr>\n"
        "</table>\n"
    )


def _dismissed(n: object) -> str:
    """The structures reviewed as false positives, said apart from the counts."""
    if not isinstance(n, int) or not n:
        return ""
    return f"{n} more reviewed as false positive{'' if n == 1 else 's'} (not counted), "


def _limits_html(limits: Mapping[str, Any]) -> str:
    mmu_px = limits["min_mapping_unit_px"]
    return (
        '<h2>Detection limits</h2>\n<div class="limits" id="limits"><ul>'
        f"<li>Pixel size {limits['pixel_size_m']:g} m (one pixel = "
        f"{limits['pixel_area_m2']:g} m²). Minimum mapping unit "
        f"<b>{limits['min_mapping_unit_m2']:g} m² (≈ {mmu_px:g} pixels)</b>; smaller objects are "
        "not reported.</li>"
        + "".join(f"<li>{_e(n)}</li>" for n in limits["notes"])
        + f"<li>Change threshold: score ≥ {_e(limits['change_threshold'])} (robust z)"
        + _structure_threshold(limits.get("structure_threshold"))
        + ".</li>"
        "</ul></div>\n"
    )


def _structure_threshold(threshold: object) -> str:
    if threshold is None:
        return ""
    return (
        f"; structures are seeded at ≥ {_e(threshold)} on the score that discounts change the "
        "neighbourhood explains (sub-pixel shift, resampling, shadow length)"
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
        "between the last clear period it was absent and the first it was present, so one first "
        "seen after cloudy periods is spread over the periods it may have appeared in; the bars "
        "are those estimates and add up to the line (counts.csv: <code>new</code>; "
        "<code>first_seen</code> counts each structure in the period it was first seen).</p>\n"
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


def _where_html(s: Structure, crs: str) -> str:
    point = structure_point(s, crs)
    if point is None:
        return "–"
    lat, lon = point
    links = " ".join(
        f'<a href="{_e(url)}" rel="noreferrer noopener" target="_blank">{_e(name)}</a>'
        for name, url in viewer_links(lat, lon).items()
    )
    return f"<code>{lat:.6f}, {lon:.6f}</code><br>{links}"


def _structure_row(
    s: Structure, result: RunResult, chip: Chip | None, colour: Sequence[float]
) -> str:
    r, g, b = (round(c * 255) for c in colour)
    chip_html = (
        f'<a href="{_e(chip[1])}"><img class="chip" src="{_data_uri(chip[0])}" '
        f'alt="{_e(s.id)}: {_e(chip[2])}"></a><span class="muted">{_e(chip[2])}</span>'
        if chip
        else '<span class="muted">no chip</span>'
    )
    if s.first_seen_start or s.first_seen_end:
        seen = f"{_e(s.first_seen_start or '?')} –<br>{_e(s.first_seen_end or '?')}"
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
    elif s.absent_since:
        status += f", absent since {s.absent_since.isoformat()} (not yet vanished)"
    if s.review:
        status += f"; reviewed: {s.review}" + (f" ({s.review_note})" if s.review_note else "")
    px = result.grid.pixel_area_m2
    return (
        "<tr>"
        f'<td class="id"><span class="swatch" style="border-color: rgb({r},{g},{b});'
        f'{"" if s.confirmed else " border-style: dashed;"}"></span>{_e(s.id)}'
        f'<br><span class="muted">{_e(s.kind)}</span></td>'
        f'<td class="evidence">{chip_html}</td>'
        f'<td class="seen">{seen}</td>'
        f'<td class="where">{_where_html(s, result.grid.crs)}</td>'
        f'<td class="num">{s.area_m2:,.0f} m²<br><span class="muted">≈ {s.area_m2 / px:.0f} px'
        "</span></td>"
        f"<td>{_e(bermed)}</td>"
        f'<td class="num">{s.confidence:.2f}</td>'
        f"<td>{_e(status)}</td>"
        f'<td class="num">{s.n_clear_obs}</td>'
        "</tr>"
    )


def _structures_html(result: RunResult, chips: Mapping[str, Chip]) -> str:
    n_chips = len(chips)
    chip_note = (
        ""
        if n_chips == len(result.structures)
        else f" Chips are shown for {n_chips} structures: the confirmed ones first, then the "
        "most confident live candidates; dropped candidates (they did not persist) get none."
    )
    heading = (
        f"<h2>Structures ({len(result.structures)})</h2>\n"
        '<p class="muted">Evidence: the last clear acquisition before the structure appeared | '
        "the first clear one with it (dates in the pictures; a period composite where no "
        "acquisition was clear there), same stretch, 100 m scale bar, outline in yellow."
        f"{chip_note} Swatch colour = first-seen class as on the map; dashed = unconfirmed. "
        "Coordinates: the structure's centroid (a point inside it when the centroid falls "
        "outside), latitude, longitude.</p>\n"
    )
    if not result.structures:
        return heading + (
            "<p>No new structure passed the minimum mapping unit and persistence rules.</p>\n"
        )
    classes = first_seen_classes(shown_structures(result.structures))
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
    for s in ordered:
        found = None if s.review == FALSE_POSITIVE else class_of(s, classes)
        colour = found.colour if found else (0.6, 0.6, 0.6)
        rows.append(_structure_row(s, result, chips.get(s.id), colour))
    return heading + (
        '<div class="wide"><table id="structures">\n<tr><th>id, kind</th><th>evidence</th>'
        "<th>first seen</th><th>where (lat, lon)</th><th>area</th><th>bermed (score)</th>"
        "<th>confidence</th><th>status</th><th>clear obs</th></tr>\n"
        + "\n".join(rows)
        + "\n</table></div>\n"
    )


def _files_html(files: Sequence[tuple[str, int | None]]) -> str:
    file_rows = "".join(
        f'<tr><td><a href="{_e(name)}">{_e(name)}</a></td>'
        f"<td>{_e(_describe(name))}</td>"
        f'<td class="num">{"" if size is None else _fmt_size(size)}</td></tr>'
        for name, size in files
    )
    return (
        '<h2>Files</h2>\n<table id="files"><tr><th>file</th><th>content</th><th>size</th></tr>'
        f"{file_rows}</table>\n"
        '<p class="muted">Open changedet.qgz in QGIS: imagery, evidence rasters and detections '
        "open styled and grouped. structures.kml opens in Google Earth, structures.csv in any "
        "spreadsheet. run.json records every scene, the effective config and software "
        "versions.</p>\n</main>\n</body>\n</html>\n"
    )


def _cloud(value: float | None) -> str:
    return "" if value is None else f", scene cloud cover {value:g}%"


def render_report_html(
    result: RunResult,
    manifest: Mapping[str, Any],
    *,
    images: Mapping[str, bytes],
    chips: Mapping[str, Chip],
    files: Sequence[tuple[str, int | None]],
) -> str:
    """The report as one HTML string. `images` holds the PNG bytes of before/after/overlay/counts
    (and coverage); `chips` maps structure id → (PNG bytes, relative file name, caption);
    `files` lists (name, size)."""
    return "".join(
        [
            _head_html(manifest),
            _headline_html(headline(result)),
            _coverage_html(result, images),
            _limits_html(manifest["detection_limits"]),
            _counts_html(manifest["results"], images),
            _map_html(result, images),
            _structures_html(result, chips),
            _summary_html(result, manifest),
            _files_html(files),
        ]
    )


# ----------------------------------------------------------------------------------------------
# Orchestration (called by changedet.outputs.write.write_run_outputs inside its temporary folder)


def _chip_name(structure_id: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in structure_id).strip(".")
    return safe or "structure"


@dataclass(frozen=True)
class Pictures:
    """The report's pictures, written: PNG bytes by name (before, after, overlay, counts,
    coverage) and the chips by structure id."""

    images: dict[str, bytes]
    chips: dict[str, Chip]


def _quicklook_png(rgb: np.ndarray, synthetic: bool) -> bytes:
    small = downsample(rgb, QUICKLOOK_MAX_PX)[0]
    return _png(stamp_synthetic(small) if synthetic else small)


def _chip_png(
    evidence: StructureEvidence, s: Structure, lo: np.ndarray, hi: np.ndarray, synthetic: bool
) -> bytes:
    chip = chip_image(evidence, s, lo, hi)
    return _png(stamp_synthetic(chip) if synthetic else chip)


def _rgb_bands(comp: Composite) -> list[np.ndarray]:
    return [comp.band("red"), comp.band("green"), comp.band("blue")]


def _chip_inputs(
    evidence: StructureEvidence, s: Structure, lo: np.ndarray, hi: np.ndarray, synthetic: bool
) -> tuple[Any, ...]:
    """What a chip is drawn from (`chip_image`): the evidence windows, their labels, the
    structure's outline, the stretch and whether it is stamped synthetic."""
    window = evidence.window
    sides = [(side.rgb, side.label) for side in (evidence.before, evidence.after)]
    stamp = ("synthetic",) if synthetic else ()  # unstamped: the key as before the stamp
    return ("chip", lo, hi, window.crs, tuple(window.transform), window.shape, sides,
            s.geometry.wkb, *stamp)  # fmt: skip


def _draw_chips(
    result: RunResult,
    config: OutputConfig,
    stretch: tuple[np.ndarray, np.ndarray],
    drawings: Drawings | None,
) -> dict[str, Chip]:
    """The chips of the first `config.max_chips` structures in `chip_order`, by structure id: each
    taken from the previous run when drawn from the same inputs."""
    if not config.chips:
        return {}
    lo, hi = stretch
    chips: dict[str, Chip] = {}
    chosen = chip_order(result.structures)[: config.max_chips]
    for s in chosen:
        name = f"chips/{_chip_name(s.id)}.png"
        evidence = evidence_of(result, s)
        data, _ = take_or_draw(
            drawings,
            name,
            _chip_inputs(evidence, s, lo, hi, result.synthetic),
            partial(_chip_png, evidence, s, lo, hi, result.synthetic),
        )
        caption = f"before {evidence.before.label} · after {evidence.after.label}"
        chips[s.id] = (data, name, caption)
    return chips


def write_pictures(
    result: RunResult,
    out_dir: Path,
    *,
    config: OutputConfig,
    stretch: tuple[np.ndarray, np.ndarray],
    progress: Progress = no_progress,
    drawings: Drawings | None = None,
) -> Pictures:
    """Write before.png, after.png, overlay.png, counts.png, coverage.png and chips/<id>.png
    into `out_dir`, all with `stretch` (`imagery.display_stretch`). With `drawings`, a chip or
    the before quicklook the previous run drew from the same inputs is taken again."""

    def save(name: str, data: bytes) -> None:
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    lo, hi = stretch
    # The chips (Pillow, which lets other threads run while it encodes) are drawn beside the
    # figures (matplotlib, in this thread).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="changedet-chips") as pool:
        drawn_chips = pool.submit(_draw_chips, result, config, stretch, drawings)
        after_rgb = truecolor(result.after, lo, hi)
        synthetic = result.synthetic
        stamp = ("synthetic",) if synthetic else ()
        images = {
            # The baseline and the stretch stay while a site is monitored: its quicklook too.
            "before": take_or_draw(
                drawings,
                "before.png",
                ("quicklook", _rgb_bands(result.before), lo, hi, *stamp),
                lambda: _quicklook_png(truecolor(result.before, lo, hi), synthetic),
            )[0],
            "after": _quicklook_png(after_rgb, synthetic),
            "overlay": overlay_map(result, after_rgb),
            "counts": counts_chart(result),
        }
        if result.coverage is not None:
            images["coverage"] = coverage_inset(result)
        for key, data in images.items():
            save(f"{key}.png", data)
        chips = drawn_chips.result()
    for i, (data, name, _caption) in enumerate(chips.values()):
        save(name, data)
        progress("chips", i + 1, len(chips))
    return Pictures(images, chips)


def write_report_html(
    result: RunResult,
    out_dir: Path,
    pictures: Pictures,
    *,
    manifest: Mapping[str, Any],
    extra_files: Sequence[str] = (),
) -> None:
    """Write report.html into `out_dir`, listing every file there and `extra_files` (names
    written later, run.json, that the report must still link to): call it last."""
    names = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    names.update(extra_files)
    files = [
        (n, (out_dir / n).stat().st_size if (out_dir / n).is_file() else None)
        for n in sorted(names, key=_file_order)
    ]
    text = render_report_html(
        result, manifest, images=pictures.images, chips=pictures.chips, files=files
    )
    (out_dir / "report.html").write_text(text, encoding="utf-8")


def _file_order(name: str) -> tuple[int, str]:
    """The QGIS project first, then top-level files, imagery, chips."""
    rank = (
        0
        if name == "changedet.qgz"
        else 3
        if name.startswith("chips/")
        else 2
        if "/" in name
        else 1
    )
    return rank, name
