"""QGIS styles (.qml) of the raster outputs, built per run.

One responsibility: how QGIS draws each COG. Every style is a QGIS 3.22 `<qgis>` document with
one raster renderer in its pipe: true colour as plain 8-bit RGB (the COGs are stretched
already); the change score on a diverging ramp, transparent near zero and where unobserved; the
change mask as a red palette entry over transparency; clear observations on a red-to-green ramp;
acquisition dates as one labelled palette entry per date. The same documents go into the QGIS
project (`changedet.outputs.project`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from matplotlib import colormaps

__all__ = ["change_qml", "count_qml", "date_qml", "mask_qml", "truecolor_qml"]

QGIS_VERSION = "3.22.16-Białowieża"
_HEADER = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{v:02x}" for v in rgb[:3])


def _document(renderer: ET.Element, comment: str) -> str:
    root = ET.Element(
        "qgis",
        {
            "version": QGIS_VERSION,
            "styleCategories": "AllStyleCategories",
            "hasScaleBasedVisibilityFlag": "0",
            "minScale": "1e+08",
            "maxScale": "0",
        },
    )
    pipe = ET.SubElement(root, "pipe")
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(
        provider,
        "resampling",
        {
            "enabled": "false",
            "maxOversampling": "2",
            "zoomedInResamplingMethod": "nearestNeighbour",
            "zoomedOutResamplingMethod": "nearestNeighbour",
        },
    )
    pipe.append(renderer)
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(pipe, "resamplingStage").text = "resamplingFilter"
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root, space="  ")
    return (
        _HEADER + f"<!-- changedet: {comment} -->\n" + ET.tostring(root, encoding="unicode") + "\n"
    )


def _renderer(kind: str, **attrs: str) -> ET.Element:
    el = ET.Element(
        "rasterrenderer", {"type": kind, "opacity": "1", "alphaBand": "-1", "nodataColor": ""}
    )
    el.attrib.update(attrs)
    origin = ET.SubElement(el, "minMaxOrigin")
    ET.SubElement(origin, "limits").text = "None"
    ET.SubElement(origin, "extent").text = "WholeRaster"
    ET.SubElement(origin, "statAccuracy").text = "Estimated"
    return el


def truecolor_qml() -> str:
    """8-bit RGB drawn as it is (the COG holds display values already; 0 is no data)."""
    el = _renderer("multibandcolor", redBand="1", greenBand="2", blueBand="3")
    for colour in ("red", "green", "blue"):
        ce = ET.SubElement(el, f"{colour}ContrastEnhancement")
        ET.SubElement(ce, "minValue").text = "0"
        ET.SubElement(ce, "maxValue").text = "255"
        ET.SubElement(ce, "algorithm").text = "StretchToMinimumMaximum"
    return _document(el, "true colour, stretched once for the whole run (see the COG's tags)")


def _pseudocolor(
    items: Sequence[tuple[float, tuple[int, int, int], int, str]], ramp_type: str, comment: str
) -> str:
    el = _renderer(
        "singlebandpseudocolor",
        band="1",
        classificationMin=str(items[0][0]),
        classificationMax=str(items[-1][0]),
    )
    shader = ET.SubElement(ET.SubElement(el, "rastershader"), "colorrampshader")
    shader.attrib.update(
        {
            "colorRampType": ramp_type,
            "classificationMode": "1",
            "clip": "0",
            "minimumValue": str(items[0][0]),
            "maximumValue": str(items[-1][0]),
            "labelPrecision": "1",
        }
    )
    for value, rgb, alpha, label in items:
        ET.SubElement(
            shader,
            "item",
            {"value": str(value), "color": _hex(rgb), "alpha": str(alpha), "label": label},
        )
    return _document(el, comment)


def change_qml(threshold: float) -> str:
    """Diverging ramp centred on 0 (transparent there): blue below, orange at the threshold, dark
    red at twice it; NaN (unobserved) is no data, so it stays transparent."""
    t = float(threshold) if threshold and threshold > 0 else 10.0
    items = [
        (-t, (33, 102, 172), 200, f"{-t:g} (less change than usual)"),
        (0.0, (247, 247, 247), 0, "0 (typical)"),
        (t / 2, (253, 219, 199), 120, f"{t / 2:g}"),
        (t, (244, 109, 67), 230, f"{t:g} (threshold)"),
        (2 * t, (165, 0, 38), 255, f"{2 * t:g} and more"),
    ]
    return _pseudocolor(items, "INTERPOLATED", "change score in robust z units")


def count_qml(max_count: int) -> str:
    """Clear observations per pixel: red where never or rarely clear, green where often."""
    top = max(int(max_count), 2)
    items = [
        (0.0, (165, 0, 38), 220, "0 (never clear)"),
        (1.0, (244, 109, 67), 200, "1"),
        (top / 2, (254, 224, 139), 180, f"{top / 2:g}"),
        (float(top), (26, 152, 80), 180, f"{top} and more"),
    ]
    return _pseudocolor(items, "INTERPOLATED", "clear observations over the run")


def _paletted(entries: Sequence[tuple[int, tuple[int, int, int], int, str]], comment: str) -> str:
    el = _renderer("paletted", band="1")
    palette = ET.SubElement(el, "colorPalette")
    for value, rgb, alpha, label in entries:
        ET.SubElement(
            palette,
            "paletteEntry",
            {"value": str(value), "color": _hex(rgb), "alpha": str(alpha), "label": label},
        )
    return _document(el, comment)


def mask_qml() -> str:
    """Change in red; no change transparent; 255 (unobserved) is no data."""
    return _paletted(
        [(1, (227, 26, 28), 200, "change"), (0, (0, 0, 0), 0, "no change")],
        "change mask (1 change, 0 no change, 255 unobserved = no data)",
    )


def date_qml(dates: Sequence[int]) -> str:
    """One palette entry per acquisition date (YYYYMMDD values), labelled YYYY-MM-DD, coloured
    from dark (oldest) to bright (newest)."""
    cmap = colormaps["viridis"]
    n = len(dates)
    entries = []
    for i, value in enumerate(dates):
        r, g, b, _ = cmap(0.5 if n == 1 else i / (n - 1))
        text = str(value)
        label = f"{text[:4]}-{text[4:6]}-{text[6:]}"
        entries.append((value, (round(r * 255), round(g * 255), round(b * 255)), 255, label))
    if not entries:  # nothing observed: a valid, empty palette
        entries.append((0, (0, 0, 0), 0, "no observation"))
    return _paletted(entries, "acquisition date of each pixel (YYYYMMDD; 0 = none)")
