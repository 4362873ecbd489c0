"""What structures.kml says beyond its geometry: a style and a verdict per placemark, and the
run's headline for the document.

Google Earth shows a KML on its own, without the report: every placemark looked alike, so 24
dropped candidates read as 24 more buildings, and nothing said how little of the AOI was seen.
Here a counted structure is outlined in its first-seen class's colour (the report's and QGIS's),
wider when confirmed; a candidate that is not counted is outlined thin, in grey when it was
dropped or reviewed as a false positive, and its description starts by saying it is not
counted. The document's description holds the headline, the coverage and every warning.
GDAL's KML driver writes a feature's OGR_STYLE field as the placemark's <Style>, and also as
ExtendedData, which `finish_kml` takes out again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from xml.sax.saxutils import escape

from matplotlib.colors import to_hex

from changedet.errors import OutputError
from changedet.models import FALSE_POSITIVE, RunResult, Structure
from changedet.outputs.headline import headline
from changedet.outputs.legend import (
    DISMISSED_COLOUR,
    UNKNOWN_COLOUR,
    DateClass,
    class_of,
    first_seen_classes,
    shown_structures,
)

__all__ = [
    "STYLE_FIELD",
    "document_text",
    "finish_kml",
    "not_counted",
    "placemark_style",
    "style_classes",
]

STYLE_FIELD = "OGR_STYLE"


def not_counted(s: Structure) -> str:
    """Why a structure is in no count ('' when it is counted): the description's first words."""
    if s.review == FALSE_POSITIVE:
        return "reviewed as a false positive"
    if s.status == "dropped":
        return "dropped candidate (did not persist)"
    if not s.confirmed:
        return "unconfirmed candidate"
    return ""


def placemark_style(s: Structure, classes: Sequence[DateClass]) -> str:
    """The OGR style string of one placemark: outline colour and width."""
    if s.review == FALSE_POSITIVE or s.status == "dropped":
        return f"PEN(c:{to_hex(DISMISSED_COLOUR).upper()},w:1px)"
    found = class_of(s, classes)
    colour = found.colour if found is not None else UNKNOWN_COLOUR
    return f"PEN(c:{to_hex(colour).upper()},w:{3 if s.confirmed else 1}px)"


def style_classes(result: RunResult) -> list[DateClass]:
    """The first-seen classes the report's map and the QGIS style use."""
    return first_seen_classes(shown_structures(result.structures))


def document_text(result: RunResult, synthetic_label: str) -> str:
    """The KML document's description: what the file is of, the headline, coverage, warnings."""
    said = headline(result)
    parts = [synthetic_label] if result.synthetic else []
    parts.append(f"changedet run of AOI '{result.aoi.id}'")
    parts.extend(said.lines())
    parts.extend(f"Warning: {w}" for w in said.warnings)
    parts.append(
        "Outline colour: first-seen class (as in the report); thick: counted; thin: not "
        "counted (see each description); grey: dropped or reviewed false positive"
    )
    return ". ".join(p.rstrip(".") for p in parts) + "."


_STYLE_DATA = re.compile(
    rf'\s*<SimpleField name="{STYLE_FIELD}"[^>]*></SimpleField>'
    rf'|\s*<SimpleData name="{STYLE_FIELD}">[^<]*</SimpleData>'
)


def finish_kml(text: str, description: str) -> str:
    """GDAL's KML with the style field out of its ExtendedData and a <description> in its
    <Document> (the driver writes none)."""
    start = text.find("<Document")
    end = text.find(">", start)
    if start < 0 or end < 0:  # the driver leaves the file empty, raising nothing, on a full disk
        raise OutputError("structures.kml: GDAL's KML driver wrote no <Document> to describe")
    text = text[: end + 1] + f"<description>{escape(description)}</description>" + text[end + 1 :]
    return _STYLE_DATA.sub("", text)
