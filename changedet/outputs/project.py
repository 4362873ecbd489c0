"""changedet.qgz: a QGIS project that opens every output of a run, styled, in groups.

One responsibility: the project document. QGIS needs not be installed to write it: a project is
XML (`.qgs`) zipped into a `.qgz`, and a layer in it is its data source, its CRS and the same
style document as its `.qml` sidecar (`<qgis>`'s children become the `<maplayer>`'s). Paths are
relative to the project, so the run folder can be moved, mailed or archived whole.

Layer order is the order in the layer tree, top first: detections (structures labelled by id,
berms, the AOI outline white on a dark halo, the analysed area; change areas and scenes off),
then the change evidence rasters, then the imagery, so the imagery always lies under the
vectors. The latest true colour and the change mask are shown; the other rasters are a click
away. The map opens on the analysis grid in the grid's CRS; each layer declares its own data's
CRS (the grid's, or EPSG:4326 for GeoJSON), and QGIS reprojects on the fly.
"""

from __future__ import annotations

import io
import re
import uuid
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

from pyproj import CRS

from changedet.models import Grid

__all__ = ["PROJECT_NAME", "ProjectLayer", "project_qgs", "project_qgz"]

PROJECT_NAME = "changedet.qgz"
QGIS_VERSION = "3.22.16-Białowieża"
_STYLE_ATTRS = ("labelsEnabled", "hasScaleBasedVisibilityFlag", "minScale", "maxScale")


@dataclass(frozen=True)
class ProjectLayer:
    """One layer of the project: data source relative to the project (GDAL/OGR syntax), name,
    "vector" or "raster", its style document, its group path ("Imagery/Periods") and whether it
    is shown at first. Vector layers also name their geometry ("Polygon", "Line"). `crs` is the
    CRS of the layer's data when it is not the grid's (a GeoJSON file's: EPSG:4326)."""

    source: str
    name: str
    kind: str
    style: str
    group: str
    visible: bool = True
    geometry: str | None = None
    crs: str | None = None


def _srs(parent: ET.Element, crs: str) -> None:
    c = CRS.from_user_input(crs)
    srs = ET.SubElement(parent, "spatialrefsys")
    ET.SubElement(srs, "wkt").text = c.to_wkt()
    code = c.to_epsg()
    ET.SubElement(srs, "srid").text = str(code or 0)
    ET.SubElement(srs, "authid").text = f"EPSG:{code}" if code else ""
    ET.SubElement(srs, "description").text = c.name
    ET.SubElement(srs, "geographicflag").text = "true" if c.is_geographic else "false"


def _layer_id(layer: ProjectLayer, i: int) -> str:
    """An id shaped like QGIS's own (name_uuid): QGIS 3.22 replaces ids shorter than 12
    characters with fresh ones, which cuts those layers off the layer tree. Derived from the
    source, so the same run gives the same ids."""
    key = uuid.uuid5(uuid.NAMESPACE_URL, f"changedet:{i}:{layer.source}")
    return re.sub(r"[^A-Za-z0-9_]", "_", layer.name)[:40] + "_" + str(key).replace("-", "_")


def _maplayer(layer: ProjectLayer, layer_id: str, crs: str) -> ET.Element:
    style = ET.fromstring(layer.style)
    el = ET.Element("maplayer", {"type": layer.kind, "styleCategories": "AllStyleCategories"})
    for key in _STYLE_ATTRS:
        if key in style.attrib:
            el.set(key, style.attrib[key])
    if layer.kind == "vector":
        geometry = layer.geometry or "Polygon"
        el.set("geometry", geometry)
        el.set("wkbType", "MultiLineString" if geometry == "Line" else "MultiPolygon")
    ET.SubElement(el, "id").text = layer_id
    ET.SubElement(el, "datasource").text = layer.source
    ET.SubElement(el, "layername").text = layer.name
    _srs(ET.SubElement(el, "srs"), layer.crs or crs)
    provider = ET.SubElement(el, "provider")
    provider.text = "ogr" if layer.kind == "vector" else "gdal"
    if layer.kind == "vector":
        provider.set("encoding", "UTF-8")
    for child in style:
        el.append(child)
    return el


def _tree(root: ET.Element, layers: Sequence[tuple[ProjectLayer, str]]) -> None:
    """Nested layer-tree groups in first-appearance order; layers in the given order."""
    groups: dict[str, ET.Element] = {"": root}
    for layer, layer_id in layers:
        path = ""
        for part in layer.group.split("/"):
            parent, path = groups[path], f"{path}/{part}" if path else part
            if path not in groups:
                groups[path] = ET.SubElement(
                    parent,
                    "layer-tree-group",
                    {
                        "name": part,
                        "checked": "Qt::Checked",
                        "expanded": "0" if "/" in path else "1",
                    },
                )
        ET.SubElement(
            groups[path],
            "layer-tree-layer",
            {
                "id": layer_id,
                "name": layer.name,
                "source": layer.source,
                "providerKey": "ogr" if layer.kind == "vector" else "gdal",
                "checked": "Qt::Checked" if layer.visible else "Qt::Unchecked",
                "expanded": "0",
            },
        )
    ET.SubElement(root, "custom-order", {"enabled": "0"})


def project_qgs(layers: Sequence[ProjectLayer], grid: Grid, title: str) -> str:
    """The project document (.qgs XML) for `layers` (top first), in the grid's CRS, opening on
    the grid's extent."""
    root = ET.Element("qgis", {"version": QGIS_VERSION, "projectname": title})
    ET.SubElement(root, "homePath", {"path": ""})
    ET.SubElement(root, "title").text = title
    _srs(ET.SubElement(root, "projectCrs"), grid.crs)
    ided = [(layer, _layer_id(layer, i)) for i, layer in enumerate(layers)]
    _tree(ET.SubElement(root, "layer-tree-group"), ided)
    canvas = ET.SubElement(root, "mapcanvas", {"name": "theMapCanvas", "annotationsVisible": "1"})
    ET.SubElement(canvas, "units").text = "meters"
    extent = ET.SubElement(canvas, "extent")
    x0, y0, x1, y1 = grid.bounds
    pad = 0.03 * max(x1 - x0, y1 - y0)
    for key, value in zip(
        ("xmin", "ymin", "xmax", "ymax"), (x0 - pad, y0 - pad, x1 + pad, y1 + pad), strict=True
    ):
        ET.SubElement(extent, key).text = repr(float(value))
    ET.SubElement(canvas, "rotation").text = "0"
    _srs(ET.SubElement(canvas, "destinationsrs"), grid.crs)
    view = ET.SubElement(root, "ProjectViewSettings", {"UseProjectScales": "0", "rotation": "0"})
    default = ET.SubElement(
        view,
        "DefaultViewExtent",
        {
            "xmin": repr(x0 - pad),
            "ymin": repr(y0 - pad),
            "xmax": repr(x1 + pad),
            "ymax": repr(y1 + pad),
        },
    )
    _srs(default, grid.crs)
    projectlayers = ET.SubElement(root, "projectlayers")
    for layer, layer_id in ided:
        projectlayers.append(_maplayer(layer, layer_id, grid.crs))
    order = ET.SubElement(root, "layerorder")
    for _, layer_id in ided:
        ET.SubElement(order, "layer", {"id": layer_id})
    props = ET.SubElement(root, "properties")
    paths = ET.SubElement(ET.SubElement(props, "Paths"), "Absolute", {"type": "bool"})
    paths.text = "false"
    # QGIS reads <projectCrs> only when the project says it is projected.
    srs = ET.SubElement(
        ET.SubElement(props, "SpatialRefSys"), "ProjectionsEnabled", {"type": "int"}
    )
    srs.text = "1"
    ET.indent(root, space="  ")
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(
        root, encoding="unicode"
    )


def project_qgz(layers: Sequence[ProjectLayer], grid: Grid, title: str) -> bytes:
    """The project zipped as QGIS writes it: one .qgs inside a .qgz."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(PROJECT_NAME.replace(".qgz", ".qgs"), project_qgs(layers, grid, title))
    return buf.getvalue()
