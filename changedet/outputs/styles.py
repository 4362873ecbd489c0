"""QGIS styles of the vector outputs: QML documents and the GeoPackage `layer_styles` table.

One responsibility: make QGIS open every output styled. `layer_style_qml` gives the style of one
layer from the templates in `changedet/outputs/qml/`; for `structures` it builds one category
per first-seen class of the run (`changedet.outputs.legend`), in the same colours as the
report, chosen by an expression on `first_seen_end` (exact: a structure no class holds is
'other'); dropped candidates and false positives the analyst reviewed get their own faint and
crossed categories. `embed_styles` writes those
styles into a GeoPackage's `layer_styles` table (the convention QGIS itself uses), registered so
the file stays a valid GeoPackage. `changedet.outputs.write` writes the `.qml` sidecars and
calls `embed_styles` on the GeoPackage it has written.
"""

from __future__ import annotations

import copy
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from changedet import __version__
from changedet.errors import OutputError
from changedet.models import FALSE_POSITIVE, RunResult
from changedet.outputs.legend import (
    DISMISSED_COLOUR,
    UNKNOWN_COLOUR,
    DateClass,
    first_seen_classes,
    shown_structures,
)

__all__ = ["class_expression", "embed_styles", "layer_style_qml"]


def _style_template(layer: str) -> str:
    return resources.files("changedet.outputs").joinpath("qml", f"{layer}.qml").read_text("utf-8")


def _rgba(colour: Sequence[float], alpha: int) -> str:
    r, g, b = (round(float(c) * 255) for c in colour[:3])
    return f"{r},{g},{b},{alpha}"


# Category values of the structures that are in no first-seen class.
DROPPED = "dropped"  # a candidate that did not persist: faint, dotted, unfilled
DISMISSED = "false-positive"  # reviewed as a false positive: grey, crossed
OTHER = "other"  # first seen in a month no class covers (a dropped one's, say): grey


def class_expression(classes: Sequence[DateClass]) -> str:
    """A QGIS expression giving each structure its category: 'false-positive' for one the
    analyst reviewed so, 'dropped' for a dropped candidate, '' when its first-seen date is
    unknown, else the key of the first-seen class holding it (start < first_seen_end <= end,
    as `legend.class_of`), 'other' when none does. first_seen_end is ISO text in GeoPackage, a
    date in GeoJSON: compared as 'YYYY-MM-DD' text either way."""
    value = 'left(to_string("first_seen_end"), 10)'
    whens = "".join(
        f"WHEN {value} > '{c.start.isoformat()}' AND {value} <= '{c.end.isoformat()}' "
        f"THEN '{c.key}' "
        for c in classes
        if c.start is not None and c.end is not None
    )
    return (
        f"CASE WHEN \"review\" = '{FALSE_POSITIVE}' THEN '{DISMISSED}' "
        f"WHEN \"status\" = 'dropped' THEN '{DROPPED}' "
        f"WHEN \"first_seen_end\" IS NULL THEN '' {whens}ELSE '{OTHER}' END"
    )


def _set_props(symbol: ET.Element, **values: str) -> None:
    for prop in symbol.iter("prop"):
        key = prop.get("k")
        if key in values:
            prop.set("v", values[key])


def _fixed(symbol: ET.Element, *names: str) -> None:
    """Switch off the symbol's data-defined `names` (fillStyle, outlineStyle): its own hold."""
    for option in symbol.iter("Option"):
        if option.get("name") in names:
            for sub in option:
                if sub.get("name") == "active":
                    sub.set("value", "false")


# The categories outside the first-seen classes: (fill alpha, outline alpha, QGIS properties).
_APART: dict[str, tuple[int, int, dict[str, str]]] = {
    DROPPED: (0, 140, {"style": "no", "outline_style": "dot", "outline_width": "0.4"}),
    DISMISSED: (200, 255, {"style": "diagcross", "outline_style": "dot"}),
}


def _symbol(template: ET.Element, i: int, kind: str, colour: Sequence[float]) -> ET.Element:
    """The template's symbol in `colour`: a class's (fill by kind, dashed when unconfirmed),
    a dropped candidate's (faint dotted outline, no fill) or a false positive's (crossed)."""
    symbol = copy.deepcopy(template)
    symbol.set("name", str(i))
    fill, outline, props = _APART.get(kind, (70, 255, {}))
    if props:  # its own fill and outline, not the data-defined ones of a class
        _fixed(symbol, "fillStyle", "outlineStyle")
    _set_props(symbol, color=_rgba(colour, fill), outline_color=_rgba(colour, outline), **props)
    return symbol


def layer_style_qml(layer: str, result: RunResult | None = None) -> str:
    """The QGIS style of one layer. For `structures` one category per first-seen class of
    `result` (same classes and colours as the report's map), and apart from them dropped
    candidates (faint), false positives the analyst reviewed (grey, crossed) and any structure
    no class holds, built from the `qml/structures.qml` template."""
    text = _style_template(layer)
    if layer != "structures" or result is None:
        return text
    root = ET.fromstring(text)
    renderer = root.find("renderer-v2")
    categories = renderer.find("categories") if renderer is not None else None
    symbols = renderer.find("symbols") if renderer is not None else None
    if renderer is None or categories is None or symbols is None:  # pragma: no cover - ours
        raise OutputError("qml/structures.qml lost its categories; reinstall changedet")
    template = symbols.find("symbol")
    assert template is not None
    for child in list(categories):
        categories.remove(child)
    for child in list(symbols):
        symbols.remove(child)
    classes = [
        c for c in first_seen_classes(shown_structures(result.structures)) if c.start is not None
    ]
    renderer.set("attr", class_expression(classes))
    entries: list[tuple[str, str, Sequence[float]]] = [
        (c.key, f"first seen {c.label}", c.colour) for c in classes
    ]
    entries += [
        ("", "first-seen date unknown", UNKNOWN_COLOUR),
        (OTHER, "first seen in another month", UNKNOWN_COLOUR),
        (DROPPED, "dropped candidate (did not persist), not counted", UNKNOWN_COLOUR),
        (DISMISSED, "reviewed false positive, not counted", DISMISSED_COLOUR),
    ]
    for i, (value, label, colour) in enumerate(entries):
        ET.SubElement(
            categories,
            "category",
            {"render": "true", "symbol": str(i), "value": value, "label": label, "type": "string"},
        )
        symbols.append(_symbol(template, i, value, colour))
    ET.indent(root, space="  ")
    header = (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        "<!-- changedet: new structures coloured by first-seen class; unconfirmed ones dashed, "
        "those that are not buildings hatched; dropped candidates faint and dotted, reviewed "
        "false positives grey and crossed; labelled by id. -->\n"
    )
    return header + ET.tostring(root, encoding="unicode") + "\n"


_LAYER_STYLES_SQL = """
CREATE TABLE IF NOT EXISTS layer_styles (
  id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  f_table_catalog TEXT(256),
  f_table_schema TEXT(256),
  f_table_name TEXT(256),
  f_geometry_column TEXT(256),
  styleName TEXT(30),
  styleQML TEXT,
  styleSLD TEXT,
  useAsDefault BOOLEAN,
  description TEXT,
  owner TEXT(30),
  ui TEXT(30),
  update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)
"""


def embed_styles(gpkg: Path, styles: Mapping[str, str]) -> None:
    """Write the QGIS `layer_styles` table (the convention QGIS itself uses) and register it as a
    GeoPackage attributes table so the file stays a valid GeoPackage."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    con = sqlite3.connect(gpkg)
    try:
        with con:
            geom_cols = dict(
                con.execute("SELECT table_name, column_name FROM gpkg_geometry_columns")
            )
            con.execute(_LAYER_STYLES_SQL)
            for layer, qml in styles.items():
                con.execute(
                    "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name,"
                    " f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description,"
                    " owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', NULL, ?)",
                    (layer, geom_cols[layer], layer, qml, f"changedet {__version__} style", now),
                )
            con.execute(
                "INSERT OR REPLACE INTO gpkg_contents (table_name, data_type, identifier,"
                " description, last_change) VALUES ('layer_styles', 'attributes', 'layer_styles',"
                " 'QGIS layer styles', ?)",
                (now,),
            )
    except (sqlite3.Error, KeyError) as exc:
        raise OutputError(f"cannot embed QGIS styles in {gpkg.name}: {exc}") from None
    finally:
        con.close()
