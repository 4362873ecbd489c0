"""QGIS itself opens the outputs styled: the GeoPackage with its embedded layer_styles and the
GeoJSON files with their .qml sidecars. Runs the system Python with Debian's python3-qgis, headless
(QT_QPA_PLATFORM=offscreen), in a subprocess; skipped when QGIS is not installed. Also runs GDAL's
GeoPackage validator over the file when the system GDAL Python bindings are present.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import textwrap
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from qgiskit import SYSTEM_PYTHON, qgis_result, skip_without_qgis

from changedet.config import OutputConfig
from changedet.models import FALSE_POSITIVE, RunResult
from changedet.outputs.legend import (
    DISMISSED_COLOUR,
    UNKNOWN_COLOUR,
    DateClass,
    class_of,
    first_seen_classes,
    shown_structures,
)
from changedet.outputs.styles import class_expression
from changedet.outputs.write import GPKG_LAYERS, write_run_outputs

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

QGIS_SCRIPT = textwrap.dedent(
    r"""
    import json, os, sys
    from qgis.core import (QgsApplication, QgsMapRendererSequentialJob, QgsMapSettings,
                           QgsRenderContext, QgsSymbolLayer, QgsVectorLayer, Qgis,
                           QgsExpressionContextUtils)
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    gpkg, folder, png = sys.argv[1:4]
    app = QgsApplication([], False)
    app.initQgis()
    out = {"qgis": Qgis.QGIS_VERSION, "layers": {}, "files": {}}

    def describe(layer):
        r = layer.renderer()
        info = {"valid": layer.isValid(), "count": layer.featureCount(),
                "crs": layer.crs().authid(), "renderer": r.type() if r else None}
        if r is None:
            return info
        if r.type() == "categorizedSymbol":
            info["attr"] = r.classAttribute()
            info["categories"] = [[str(c.value()), c.label(), c.symbol().color().name()]
                                  for c in r.categories()]
        else:
            sym = r.symbol()
            info["symbol_type"] = sym.type()
            info["colour"] = sym.color().name()
        ctx = QgsRenderContext()
        ctx.expressionContext().appendScope(QgsExpressionContextUtils.layerScope(layer))
        r.startRender(ctx, layer.fields())
        feats = []
        for f in layer.getFeatures():
            ctx.expressionContext().setFeature(f)
            sym = r.symbolForFeature(f, ctx)
            row = {"colour": sym.color().name() if sym else None}
            if "id" in f.fields().names():
                row["id"] = f["id"]
            if sym is not None:
                prop = sym.symbolLayer(0).dataDefinedProperties().property(
                    QgsSymbolLayer.PropertyStrokeStyle)
                if prop.isActive():
                    row["stroke"] = prop.valueAsString(ctx.expressionContext(), "")[0]
                else:
                    row["stroke"] = sym.symbolLayer(0).properties().get("outline_style")
            feats.append(row)
        r.stopRender(ctx)
        info["features"] = feats
        return info

    layers = {}
    for name in ["aoi", "analysed_area", "structures", "berms", "change_areas", "scenes"]:
        layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
        layers[name] = layer
        out["layers"][name] = describe(layer)
    for stem in ["structures", "berms"]:
        layer = QgsVectorLayer(os.path.join(folder, stem + ".geojson"), stem, "ogr")
        out["files"][stem] = describe(layer)

    settings = QgsMapSettings()
    settings.setLayers([layers["structures"], layers["berms"], layers["change_areas"],
                        layers["aoi"]])
    settings.setDestinationCrs(layers["aoi"].crs())
    extent = layers["aoi"].extent()
    extent.grow(60)
    settings.setExtent(extent)
    settings.setOutputSize(QSize(900, 700))
    settings.setBackgroundColor(QColor(60, 60, 60))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    out["rendered"] = job.renderedImage().save(png, "PNG")
    print("RESULT " + json.dumps(out), flush=True)
    os._exit(0)  # exitQgis() can segfault on teardown in 3.22: report first, then leave
    """
)


@pytest.fixture(scope="module")
def run_result(make_run_result: Callable[..., RunResult]) -> RunResult:
    return make_run_result()


@pytest.fixture(scope="module")
def out_dir(run_result: RunResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qgis") / "khojir-test"
    write_run_outputs(run_result, out, config=OutputConfig(report=False, chips=False))
    return out


@pytest.fixture(scope="module")
def qgis_view(out_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _open_styled(out_dir, tmp_path_factory, ARTIFACTS / "qgis_render.png")


def _open_styled(out_dir: Path, tmp_path_factory: pytest.TempPathFactory, png: Path) -> dict:
    """What QGIS_SCRIPT reports of the GeoPackage and the GeoJSON files in `out_dir`."""
    skip_without_qgis()
    png.parent.mkdir(parents=True, exist_ok=True)
    args = [str(out_dir / "changedet.gpkg"), str(out_dir), str(png)]
    view: dict = qgis_result(QGIS_SCRIPT, args, tmp_path_factory.mktemp("qgis"), timeout=180)
    return view


def _hex(colour: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in colour)


def test_qgis_opens_every_layer_with_its_embedded_style(
    qgis_view: dict, run_result: RunResult
) -> None:
    layers = qgis_view["layers"]
    assert set(layers) == set(GPKG_LAYERS)
    for name, info in layers.items():
        assert info["valid"], name
        assert info["crs"] == "EPSG:32639"
    assert layers["structures"]["count"] == len(run_result.structures)
    # QGIS's own default for a new layer is a random single symbol: these prove the styles loaded.
    assert layers["structures"]["renderer"] == "categorizedSymbol"
    assert '"first_seen_end"' in layers["structures"]["attr"]  # an expression on the date
    assert layers["scenes"]["renderer"] == "categorizedSymbol"
    assert layers["berms"]["renderer"] == "singleSymbol"
    assert layers["berms"]["symbol_type"] == 1  # QgsSymbol.Line
    assert layers["berms"]["colour"] == "#00e5ff"
    assert layers["change_areas"]["colour"] == "#e31a1c"


def test_qgis_colours_by_first_seen_date_and_dashes_unconfirmed(
    qgis_view: dict, run_result: RunResult
) -> None:
    classes = first_seen_classes(run_result.structures)
    feats = {f["id"]: f for f in qgis_view["layers"]["structures"]["features"]}
    for s in run_result.structures:
        found = class_of(s, classes)
        assert found is not None
        assert feats[s.id]["colour"] == _hex(found.colour), s.id
        assert feats[s.id]["stroke"] == ("solid" if s.confirmed else "dash"), s.id
    assert len({f["colour"] for f in feats.values()}) == 3


def test_qgis_picks_up_the_qml_sidecars(qgis_view: dict, run_result: RunResult) -> None:
    files = qgis_view["files"]
    assert files["structures"]["renderer"] == "categorizedSymbol"
    assert files["structures"]["crs"] == "EPSG:4326"
    assert files["structures"]["categories"] == qgis_view["layers"]["structures"]["categories"]
    strokes = {f["id"]: f["stroke"] for f in files["structures"]["features"]}
    assert strokes == {s.id: "solid" if s.confirmed else "dash" for s in run_result.structures}
    assert files["berms"]["colour"] == "#00e5ff"


def test_qgis_renders_the_styled_map(qgis_view: dict) -> None:
    from matplotlib.image import imread

    assert qgis_view["rendered"]
    img = imread(ARTIFACTS / "qgis_render.png")
    # Berm cyan (0, 229, 255) is drawn somewhere on the dark background.
    rgb = (img[..., :3] * 255).round()
    cyan = (rgb[..., 0] < 12) & (abs(rgb[..., 1] - 229) < 8) & (rgb[..., 2] > 245)
    assert cyan.sum() > 50


def test_gdal_geopackage_validator(out_dir: Path) -> None:
    """GDAL's validate_gpkg.py (system python3-gdal, a dependency of python3-qgis) finds nothing:
    neither in the layers written through OGR nor in the layer_styles table written with sqlite3."""
    probe = (
        subprocess.run(
            [str(SYSTEM_PYTHON), "-c", "import osgeo_utils.samples.validate_gpkg"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if SYSTEM_PYTHON.exists()
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip("GDAL's validate_gpkg.py not available (apt-get install -y python3-gdal)")
    gpkg = out_dir / "changedet.gpkg"
    con = sqlite3.connect(gpkg)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 10200  # GeoPackage 1.2
    finally:
        con.close()
    proc = subprocess.run(
        [str(SYSTEM_PYTHON), "-m", "osgeo_utils.samples.validate_gpkg", "-k", "--extra", str(gpkg)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    findings = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 0 and findings == [], findings


# ---------------------------------------------------------------------------------------------
# The QGIS project: every layer of the run, styled, grouped, imagery under the vectors


@pytest.fixture(scope="module")
def project_view(
    out_dir: Path, open_in_qgis: Callable[..., dict], tmp_path_factory: pytest.TempPathFactory
) -> dict:
    return open_in_qgis(
        out_dir / "changedet.qgz", ARTIFACTS / "qgis_project.png", tmp_path_factory.mktemp("qgz")
    )


def test_the_project_opens_every_layer_valid_and_styled(project_view: dict, out_dir: Path) -> None:
    assert project_view["read"] and project_view["crs"] == "EPSG:32639"
    layers = {info["name"]: info for info in project_view["layers"]}
    assert not [info for info in project_view["layers"] if info.get("missing")]
    assert all(info["valid"] for info in layers.values()), layers
    # Every raster written is in the project, from its file beside the project.
    rasters = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.tif")}
    sources = {
        Path(info["source"]).resolve().relative_to(out_dir.resolve()).as_posix()
        for info in layers.values()
        if info["type"] == "raster"
    }
    assert sources == rasters
    renderers = {
        Path(i["source"]).name: i["renderer"] for i in layers.values() if i["type"] == "raster"
    }
    assert renderers == {
        "change.tif": "singlebandpseudocolor",
        "change_mask.tif": "paletted",
        "clear_count.tif": "singlebandpseudocolor",
        "latest.tif": "multibandcolor",
        "baseline.tif": "multibandcolor",
        "latest_date.tif": "paletted",
        "baseline_date.tif": "paletted",
    }
    vectors = {name: i for name, i in layers.items() if i["type"] == "vector"}
    assert set(vectors) == {"structures", "berms", "aoi", "analysed area", "change areas", "scenes"}
    assert vectors["structures"]["renderer"] == "categorizedSymbol"
    assert vectors["structures"]["labels"] and vectors["structures"]["label_field"] == "id"
    assert vectors["structures"]["features"] == 3


def test_the_project_draws_imagery_under_the_vectors(project_view: dict) -> None:
    layers = project_view["layers"]
    # Drawing order: the layer tree's, top first. Every vector layer above every raster.
    last_vector = max(i["order"] for i in layers if i["type"] == "vector")
    first_raster = min(i["order"] for i in layers if i["type"] == "raster")
    assert last_vector < first_raster
    imagery = [i for i in layers if i["group"] in ("Imagery", "Periods")]
    evidence = [i for i in layers if i["group"] == "Change evidence"]
    assert max(i["order"] for i in evidence) < min(i["order"] for i in imagery)
    shown = {i["name"] for i in layers if i["visible"]}
    assert {"structures", "berms", "aoi", "analysed area"} <= shown
    assert any(name.startswith("latest") and name.endswith("true colour") for name in shown)


def test_the_rendered_project_shows_imagery_and_detections(project_view: dict) -> None:
    from matplotlib.image import imread

    assert project_view["rendered"]
    rgb = (imread(ARTIFACTS / "qgis_project.png")[..., :3] * 255).round()
    background = (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 255)
    # The latest true colour fills the grid (a 6:5 rectangle in the middle of the square view).
    assert not background[300:700, 300:700].any() and background.mean() < 0.35
    cyan = (rgb[..., 0] < 12) & (abs(rgb[..., 1] - 229) < 8) & (rgb[..., 2] > 245)
    assert cyan.sum() > 50  # berm lines drawn over the imagery
    white = (rgb > 250).all(axis=-1)
    assert white.sum() > 500  # the AOI outline (and the labels' text)


def test_without_geopackage_the_project_puts_the_geojson_layers_where_they_are(
    run_result: RunResult,
    open_in_qgis: Callable[..., dict],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """[output] geopackage = false: the project reads the GeoJSON files, which are EPSG:4326; a
    layer declared in the grid's UTM CRS lay ~560 km off (lon/lat read as metres). Every vector
    layer, the AOI and the analysed area included, lands on the grid."""
    out = tmp_path_factory.mktemp("nogpkg") / "khojir-test"
    write_run_outputs(run_result, out, config=OutputConfig(geopackage=False, chips=False))
    view = open_in_qgis(out / "changedet.qgz", ARTIFACTS / "qgis_nogpkg.png", out.parent)
    layers = {i["name"]: i for i in view["layers"]}
    vectors = {name: i for name, i in layers.items() if i["type"] == "vector"}
    assert set(vectors) == {"structures", "berms", "aoi", "analysed area"}
    x0, y0, x1, y1 = run_result.grid.bounds
    for name, info in vectors.items():
        assert info["valid"] and info["crs"] == "EPSG:4326", (name, info)
        ex0, ey0, ex1, ey1 = info["extent"]
        # On the grid (the AOI reaches a little past it), not hundreds of km away.
        assert ex0 < x1 and ex1 > x0 and ey0 < y1 and ey1 > y0, (name, info["extent"])
        assert abs(ex0 - x0) < 5_000 and abs(ey1 - y1) < 5_000, (name, info["extent"])
    assert vectors["structures"]["features"] == len(run_result.structures)


def test_qgis_draws_dropped_candidates_faint_and_false_positives_crossed(
    make_run_result: Callable[..., RunResult], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A structure the analyst reviewed as a false positive was drawn like any confirmed one, and
    a dropped candidate like a live one (in the colour of the next class when first seen in a
    month between classes): each now has its own category, in the GeoPackage and the GeoJSON."""
    result = make_run_result()
    s1, s2, s3 = result.structures
    structures = (
        replace(s1, review=FALSE_POSITIVE, review_note="road works"),
        s2,
        replace(s3, status="dropped", confirmed=False),
    )
    result = replace(result, structures=structures)
    out = tmp_path_factory.mktemp("reviewed") / "khojir-test"
    write_run_outputs(result, out, config=OutputConfig(report=False, chips=False))
    view = _open_styled(out, tmp_path_factory, ARTIFACTS / "qgis_reviewed.png")
    (only,) = first_seen_classes(shown_structures(structures))  # s2's month alone
    for info in (view["layers"]["structures"], view["files"]["structures"]):
        labels = {c[0]: c[1] for c in info["categories"]}
        assert labels["false-positive"] == "reviewed false positive, not counted"
        assert labels["dropped"].startswith("dropped candidate")
        feats = {f["id"]: f for f in info["features"]}
        assert feats[s2.id] == {"id": s2.id, "colour": _hex(only.colour), "stroke": "solid"}
        assert feats[s1.id] == {"id": s1.id, "colour": _hex(DISMISSED_COLOUR), "stroke": "dot"}
        assert feats[s3.id] == {"id": s3.id, "colour": _hex(UNKNOWN_COLOUR), "stroke": "dot"}


EXPRESSION_SCRIPT = textwrap.dedent(
    r"""
    import json, sys
    from qgis.core import (QgsApplication, QgsExpression, QgsExpressionContext, QgsFeature,
                           QgsField, QgsFields)
    from qgis.PyQt.QtCore import QVariant

    app = QgsApplication([], False)
    app.initQgis()
    expression, rows = sys.argv[1], json.loads(sys.argv[2])
    fields = QgsFields()
    for name in ("first_seen_end", "status", "review"):
        fields.append(QgsField(name, QVariant.String))
    out = []
    for row in rows:
        f = QgsFeature(fields)
        f.setAttributes(row)
        ctx = QgsExpressionContext()
        ctx.setFeature(f)
        e = QgsExpression(expression)
        out.append(e.evaluate(ctx))
        assert not e.hasEvalError(), e.evalErrorString()
    print("RESULT " + json.dumps(out), flush=True)
    import os
    os._exit(0)
    """
)


def test_qgis_class_expression_matches_each_class_exactly(tmp_path: Path) -> None:
    """The first-seen class expression was a chain of `<= end` tests: a structure first seen in
    a month between two classes took the later class's label. Each class now matches its own
    months only, and any other month falls to 'other'."""
    skip_without_qgis()
    oct_, dec = (date(2023, 10, 1), date(2023, 11, 1)), (date(2023, 12, 1), date(2024, 1, 1))
    classes = [DateClass(a, b, "", (0.0, 0.0, 0.0), 1) for a, b in (oct_, dec)]
    rows = [
        ["2023-11-01", "active", None],  # October: the first class
        ["2023-12-01", "active", None],  # November: between the classes
        ["2024-01-01", "active", None],  # December
        ["2024-03-01", "active", None],  # after the last class
        ["2023-09-15", "active", None],  # before the first
        [None, "active", None],
        ["2023-11-01", "dropped", None],
        ["2023-11-01", "active", "false-positive"],
    ]
    got = qgis_result(
        EXPRESSION_SCRIPT, [class_expression(classes), json.dumps(rows)], tmp_path, timeout=120
    )
    k_oct, k_dec = (c.key for c in classes)
    assert got == [k_oct, "other", k_dec, "other", "other", "", "dropped", "false-positive"]
