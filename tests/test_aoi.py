"""AOI loading, validation, repair and grid choice."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import LineString, Polygon, box, mapping

from changedet.aoi import (
    aoi_mask,
    area_km2,
    grid_for,
    load_aois,
    safe_id,
    utm_epsg,
    zone_edge_crossed,
)
from changedet.config import AOIConfig
from changedet.errors import AOIError

KHOJIR_BOX = box(51.60, 35.57, 51.80, 35.70)


def _write_geojson(path: Path, geometry: dict, **props: object) -> Path:
    fc = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": props, "geometry": geometry}],
    }
    path.write_text(json.dumps(fc))
    return path


def test_bundled_aois_load_with_provenance(repo: Path) -> None:
    for name, tile_epsg in (("khojir", 32639), ("modarres", 32639)):
        (aoi,) = load_aois(repo / "aoi" / f"{name}.geojson")
        assert aoi.id == name
        assert aoi.properties["source"] and aoi.properties["confidence"]
        assert grid_for(aoi).epsg == tile_epsg


def test_modarres_site_point_inside_its_aoi(repo: Path) -> None:
    from shapely.geometry import Point

    (aoi,) = load_aois(repo / "aoi" / "modarres.geojson")
    assert aoi.geometry.contains(Point(50.875, 35.625))


def test_grid_is_snapped_utm_and_covers_aoi() -> None:
    from changedet.models import AOI

    aoi = AOI("k", "k", KHOJIR_BOX)
    grid = grid_for(aoi)
    assert grid.crs == "EPSG:32639" and grid.res == 10.0
    x0, y0, x1, y1 = grid.bounds
    assert all(v % 10 == 0 for v in (x0, y0, x1, y1))
    from changedet.aoi import to_grid_crs

    ax0, ay0, ax1, ay1 = to_grid_crs(KHOJIR_BOX, grid.crs).bounds
    assert (
        x0 <= ax0 < x0 + 10 and y0 <= ay0 < y0 + 10 and x1 - 10 < ax1 <= x1 and y1 - 10 < ay1 <= y1
    )
    mask = aoi_mask(aoi, grid)
    assert mask.shape == grid.shape and 0.95 < mask.mean() <= 1.0


def test_utm_zone_choice() -> None:
    assert utm_epsg(51.7, 35.6) == 32639
    assert utm_epsg(2.35, 48.85) == 32631
    assert utm_epsg(-47.9, -15.8) == 32723


def test_geopackage_and_shapefile_in_other_crs_are_reprojected(tmp_path: Path) -> None:
    utm = gpd.GeoDataFrame(
        {"id": ["site a"], "name": ["A"]}, geometry=[KHOJIR_BOX], crs=4326
    ).to_crs(32639)
    utm.to_file(tmp_path / "a.gpkg", driver="GPKG")
    utm.to_file(tmp_path / "a.shp")
    for path in (tmp_path / "a.gpkg", tmp_path / "a.shp"):
        with pytest.warns(UserWarning, match="'site a' is not a safe folder name"):
            (aoi,) = load_aois(path)
        assert aoi.id == "site-a"  # made safe for file names, and said
        assert aoi.geometry.symmetric_difference(KHOJIR_BOX).area < 1e-3 * KHOJIR_BOX.area


def test_one_aoi_per_feature_with_unique_ids(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame(
        {"id": ["x", "x"]},
        geometry=[box(51.6, 35.6, 51.61, 35.61), box(51.7, 35.6, 51.71, 35.61)],
        crs=4326,
    )
    frame.to_file(tmp_path / "two.geojson", driver="GeoJSON")
    with pytest.warns(UserWarning, match="repeats the id 'x'"):
        ids = [a.id for a in load_aois(tmp_path / "two.geojson")]
    assert len(ids) == 2 and len(set(ids)) == 2


def test_a_feature_without_an_id_among_others_takes_its_name(tmp_path: Path) -> None:
    """A column missing for one feature reads as NaN from the file: it is no id."""
    sites = [box(51.6, 35.6, 51.61, 35.61), box(51.7, 35.6, 51.71, 35.61)]
    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"id": "a"}, "geometry": mapping(sites[0])},
            {"type": "Feature", "properties": {"name": "Site B"}, "geometry": mapping(sites[1])},
        ],
    }
    (tmp_path / "mixed.geojson").write_text(json.dumps(fc))
    first, second = load_aois(tmp_path / "mixed.geojson")
    assert (first.id, first.name) == ("a", "a")
    assert (second.id, second.name) == ("Site-B", "Site B")
    for feature, number in zip(fc["features"], (1, None), strict=True):
        feature["properties"] = {} if number is None else {"id": number}
    (tmp_path / "numbers.geojson").write_text(json.dumps(fc))
    assert [a.id for a in load_aois(tmp_path / "numbers.geojson")] == ["1", "numbers-2"]


def test_an_unnamed_aoi_is_named_after_its_file_and_a_kml_name_is_a_name(tmp_path: Path) -> None:
    """Two unnamed files both ran as OUT/aoi-1, the second replacing the first; a placemark's
    name (KML's `Name`) was not read."""
    site = mapping(box(51.6, 35.6, 51.61, 35.61))
    (north,) = load_aois(_write_geojson(tmp_path / "site north.geojson", site))
    (south,) = load_aois(_write_geojson(tmp_path / "south.geojson", site))
    assert (north.id, south.id) == ("site-north", "south")
    (placemark,) = load_aois(_write_geojson(tmp_path / "ge.geojson", site, Name="Nantes core"))
    assert (placemark.id, placemark.name) == ("Nantes-core", "Nantes core")


def test_a_geopackage_of_several_layers_names_the_one_to_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sites.gpkg"
    for layer, site in (("north", box(51.6, 35.6, 51.61, 35.61)), ("south", KHOJIR_BOX)):
        frame = gpd.GeoDataFrame({"id": [layer]}, geometry=[site], crs=4326)
        frame.to_file(path, layer=layer, driver="GPKG")
    with pytest.raises(AOIError, match=r"has 2 layers \(north, south\); name the one to read as"):
        load_aois(path)
    (south,) = load_aois(f"{path}:south")
    assert south.id == "south" and south.geometry.equals(KHOJIR_BOX)
    with pytest.raises(AOIError, match="no layer 'east' with geometry; its layers: north, south"):
        load_aois(f"{path}:east")
    odd = tmp_path / "odd.gpkg"  # a layer's name may hold a colon
    for layer in ("a:b", "c"):
        gpd.GeoDataFrame({"id": [layer]}, geometry=[KHOJIR_BOX], crs=4326).to_file(
            odd, layer=layer, driver="GPKG"
        )
    with pytest.warns(UserWarning, match="id 'a:b' is not a safe folder name"):
        assert [a.id for a in load_aois(f"{odd}:a:b")] == ["a-b"]
    # unnamed features of two layers are named after file and layer, not both after the file
    unnamed = tmp_path / "unnamed.gpkg"
    for layer in ("north", "south"):
        gpd.GeoDataFrame({"x": [1]}, geometry=[KHOJIR_BOX], crs=4326).to_file(
            unnamed, layer=layer, driver="GPKG"
        )
    ids = [a.id for layer in ("north", "south") for a in load_aois(f"{unnamed}:{layer}")]
    assert ids == ["unnamed-north", "unnamed-south"]
    # a path as typed, "./x" (Path drops the "./"), names the same (it gave "nnamed-g-north")
    monkeypatch.chdir(tmp_path)
    assert [a.id for a in load_aois("./unnamed.gpkg:north")] == ["unnamed-north"]
    frame = gpd.GeoDataFrame({"x": [1]}, geometry=[KHOJIR_BOX], crs=4326)
    frame.to_file(tmp_path / "u.geojson", driver="GeoJSON")
    assert [a.id for a in load_aois("./u.geojson")] == [a.id for a in load_aois("u.geojson")]
    frame.to_file(tmp_path / "one.gpkg", layer="sites", driver="GPKG")  # its one layer named
    assert [a.id for a in load_aois("one.gpkg:sites")] == [a.id for a in load_aois("one.gpkg")]


def test_invalid_ring_is_repaired_with_a_warning(tmp_path: Path) -> None:
    bowtie = {
        "type": "Polygon",
        "coordinates": [[[51.6, 35.6], [51.7, 35.7], [51.7, 35.6], [51.6, 35.7], [51.6, 35.6]]],
    }
    path = _write_geojson(tmp_path / "bowtie.geojson", bowtie, id="bow")
    with pytest.warns(UserWarning, match="repaired"):
        (aoi,) = load_aois(path)
    assert aoi.geometry.is_valid and aoi.geometry.area > 0


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        (LineString([(51.6, 35.6), (51.7, 35.7)]).__geo_interface__, "not a polygon"),
        ({"type": "Point", "coordinates": [51.6, 35.6]}, "not a polygon"),
    ],
)
def test_non_polygon_rejected(tmp_path: Path, geometry: dict, message: str) -> None:
    path = _write_geojson(tmp_path / "bad.geojson", geometry, id="bad")
    with pytest.raises(AOIError, match=message):
        load_aois(path)


def test_oversized_aoi_rejected(tmp_path: Path) -> None:
    path = _write_geojson(tmp_path / "big.geojson", box(50, 34, 53, 37).__geo_interface__, id="big")
    with pytest.raises(AOIError, match="above the 2500 km"):
        load_aois(path)
    assert load_aois(path, AOIConfig(max_area_km2=200_000.0))


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(AOIError, match="not found"):
        load_aois(tmp_path / "nope.geojson")
    junk = tmp_path / "junk.geojson"
    junk.write_text("this is not json")
    with pytest.raises(AOIError, match="could not be read") as info:
        load_aois(junk)
    assert "<DRIVER>" not in str(info.value)  # GDAL's advice on driver prefixes is not ours
    junk.write_text("")
    with pytest.raises(AOIError, match=r"could not be read as a vector file \(the file is empty\)"):
        load_aois(junk)


def test_empty_feature_collection_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(AOIError):
        load_aois(path)


@pytest.mark.parametrize("raw", ["../../etc/passwd", "..", "/abs/path", "a/b\\c", "", "   "])
def test_safe_id_never_escapes(raw: str) -> None:
    out = safe_id(raw, "fallback")
    assert "/" not in out and "\\" not in out and out not in ("", ".", "..")
    assert not out.startswith(".")


@pytest.mark.parametrize(
    ("raw", "shown", "safe"), [("a\u0000b", "a\\\\x00b", "a-b"), ("a\nb", "a\\\\nb", "a-b")]
)
def test_an_id_with_a_nul_or_a_newline_is_made_safe_and_said_on_one_line(
    raw: str, shown: str, safe: str, tmp_path: Path
) -> None:
    """GDAL reads text up to a NUL: an id 'a\\u0000b' named folder 'a' without a word. A
    newline in an id split the warning over two lines."""
    square = mapping(box(51.60, 35.60, 51.61, 35.61))
    path = _write_geojson(tmp_path / "a.geojson", square, id=raw)
    with pytest.warns(UserWarning, match=f"id '{shown}' is not a safe folder name") as told:
        (aoi,) = load_aois(path)
    assert aoi.id == safe
    assert all("\n" not in str(w.message) for w in told)


def test_an_unsafe_id_is_renamed_and_said(tmp_path: Path) -> None:
    square = mapping(box(51.60, 35.60, 51.61, 35.61))
    path = _write_geojson(tmp_path / "a.geojson", square, id="../../etc/evil")
    with pytest.warns(
        UserWarning, match="id '../../etc/evil' is not a safe folder name.*'etc-evil'"
    ):
        (aoi,) = load_aois(path)
    assert aoi.id == "etc-evil"
    named = _write_geojson(tmp_path / "b.geojson", square, name="Khojir missile complex")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a name used as the id is made safe without a word
        (aoi,) = load_aois(named)
    assert aoi.id == "Khojir-missile-complex"


def test_polygon_with_hole_keeps_hole_out_of_mask() -> None:
    from changedet.models import AOI

    outer = box(51.60, 35.60, 51.64, 35.64)
    hole = box(51.61, 35.61, 51.63, 35.63)
    aoi = AOI("h", "h", Polygon(outer.exterior.coords, [hole.exterior.coords]))
    grid = grid_for(aoi)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = aoi_mask(aoi, grid)
    expected = aoi.geometry.area / outer.area
    assert abs(mask.mean() - expected) < 0.05
    assert not mask[grid.height // 2, grid.width // 2]
    assert np.any(mask)


def test_repeated_ids_in_one_file_are_renamed_with_a_warning(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame(
        {"id": ["site", "Site", "site"]},
        geometry=[box(51.6 + 0.1 * i, 35.6, 51.61 + 0.1 * i, 35.61) for i in range(3)],
        crs=4326,
    )
    frame.to_file(tmp_path / "three.geojson", driver="GeoJSON")
    with pytest.warns(UserWarning, match="repeats the id") as caught:
        ids = [a.id for a in load_aois(tmp_path / "three.geojson")]
    assert ids == ["site", "Site-2", "site-3"]  # one folder each, also where case is ignored
    assert len(caught) == 2 and "outputs go to 'Site-2'" in str(caught[0].message)


def test_an_id_property_no_feature_has_is_a_warning(tmp_path: Path) -> None:
    """A misspelt aoi.id_property fell back to 'name' without a word: every folder (and a
    monitor's ledger) took another id."""
    frame = gpd.GeoDataFrame(
        {"site": ["k1"], "name": ["Khojir complex"]},
        geometry=[box(51.6, 35.6, 51.61, 35.61)],
        crs=4326,
    )
    frame.to_file(tmp_path / "one.geojson", driver="GeoJSON")
    assert [a.id for a in load_aois(tmp_path / "one.geojson", AOIConfig(id_property="site"))] == [
        "k1"
    ]
    with pytest.warns(UserWarning, match=r"no feature has the property 'stie' \(aoi.id_property\)"):
        (aoi,) = load_aois(tmp_path / "one.geojson", AOIConfig(id_property="stie"))
    assert aoi.id == "Khojir-complex"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default 'id' absent is the common case: no word
        load_aois(tmp_path / "one.geojson")


# An AOI on Taveuni (Fiji) across the antimeridian, in the three ways files hold one: a ring that
# jumps from +179.95 to -179.95, a ring with longitudes past 180, and RFC 7946's two parts.
W, E, S, N = 179.92, -179.96, -16.85, -16.75  # centroid 179.98° E: zone 60
ACROSS = {
    "jumping": {"type": "Polygon", "coordinates": [[[W, S], [E, S], [E, N], [W, N], [W, S]]]},
    "unwrapped": {
        "type": "Polygon",
        "coordinates": [[[W, S], [E + 360, S], [E + 360, N], [W, N], [W, S]]],
    },
    "split": {
        "type": "MultiPolygon",
        "coordinates": [
            [[[W, S], [180.0, S], [180.0, N], [W, N], [W, S]]],
            [[[-180.0, S], [E, S], [E, N], [-180.0, N], [-180.0, S]]],
        ],
    },
}


@pytest.mark.parametrize("form", sorted(ACROSS))
def test_antimeridian_aoi_gets_the_zone_of_its_centroid_and_rfc7946_parts(
    tmp_path: Path, form: str
) -> None:
    (aoi,) = load_aois(_write_geojson(tmp_path / "taveuni.geojson", ACROSS[form], id="taveuni"))
    assert aoi.geometry.geom_type == "MultiPolygon" and len(aoi.geometry.geoms) == 2
    for part in aoi.geometry.geoms:
        xmin, _, xmax, _ = part.bounds
        assert -180.0 <= xmin < xmax <= 180.0 and xmax - xmin < 0.09
    assert math.isclose(aoi.geometry.area, 0.12 * 0.1, rel_tol=1e-9)
    grid = grid_for(aoi)
    assert grid.crs == "EPSG:32760"  # 180° sits on zone 60's edge; south of the equator
    assert (
        12.5 < grid.width * grid.res / 1000 < 13.5 and 10.5 < grid.height * grid.res / 1000 < 11.5
    )
    assert 135.0 < area_km2(aoi) < 145.0


def test_a_prj_less_file_in_metres_names_the_missing_projection(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame(
        {"id": ["site"]}, geometry=[box(545_000, 3_941_000, 553_000, 3_947_000)], crs=32639
    )
    frame.to_file(tmp_path / "site.shp")
    (tmp_path / "site.prj").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused, not first assumed to be degrees
        with pytest.raises(AOIError, match=r"no CRS \(a Shapefile's .prj missing\?\)") as info:
            load_aois(tmp_path / "site.shp")
    assert "not longitude/latitude" in str(info.value) and "catalog" not in str(info.value)
    (tmp_path / "m.geojson").write_text(
        json.dumps(
            {
                "type": "Feature",
                "properties": {},
                "geometry": mapping(box(5e5, 3.9e6, 5.1e5, 3.91e6)),
            }
        )
    )
    with pytest.raises(AOIError, match="outside ±180°/±90°") as info:
        load_aois(tmp_path / "m.geojson")
    # it declares no CRS: the line says how it was read and what to do, not "check the CRS"
    assert "without a 'crs' member is in EPSG:4326" in str(info.value)
    assert "save the AOI in EPSG:4326 or in a format that carries its CRS" in str(info.value)


def test_an_aoi_holding_no_pixel_centre_is_refused(tmp_path: Path) -> None:
    """3 m across: inside every scene, yet no 10 m pixel is its; nothing could be analysed."""
    tiny = box(51.70001, 35.60001, 51.70004, 35.60004)
    path = _write_geojson(tmp_path / "tiny.geojson", mapping(tiny), id="tiny")
    with pytest.raises(AOIError, match=r"AOI 'tiny' \(\d+ m²\) holds no centre of a 10 m pixel"):
        load_aois(path)
    (small,) = load_aois(
        _write_geojson(tmp_path / "small.geojson", mapping(tiny.buffer(0.0002)), id="small")
    )
    assert aoi_mask(small, grid_for(small)).any()


def test_an_aoi_thin_enough_to_miss_every_pixel_centre_is_refused(tmp_path: Path) -> None:
    """1 m by 2 km along a pixel edge: 2000 m², yet no 10 m pixel centre is inside it."""
    from changedet.aoi import reproject_geometry

    sliver = reproject_geometry(box(560_001, 3_940_000, 560_002, 3_942_000), "EPSG:32639", 4326)
    path = _write_geojson(tmp_path / "sliver.geojson", mapping(sliver), id="sliver")
    with pytest.raises(AOIError, match=r"'sliver' \(2000 m²\) holds no centre of a 10 m pixel"):
        load_aois(path)
    wider = reproject_geometry(box(560_001, 3_940_000, 560_006, 3_942_000), "EPSG:32639", 4326)
    assert load_aois(_write_geojson(tmp_path / "wider.geojson", mapping(wider), id="wider"))


def test_coordinates_that_are_not_numbers_are_refused(tmp_path: Path) -> None:
    ring = [[51.6, 35.6], [51.7, float("nan")], [51.7, 35.7], [51.6, 35.7], [51.6, 35.6]]
    path = _write_geojson(tmp_path / "nan.geojson", {"type": "Polygon", "coordinates": [ring]})
    with pytest.raises(AOIError, match="coordinates that are not numbers"):
        load_aois(path)


def test_repair_joins_overlapping_parts_and_takes_out_a_crossing_hole(tmp_path: Path) -> None:
    """Even-odd repair would cut the inner part out of the outer, and turn the part of a hole
    outside its shell into area: the AOI is what was drawn."""
    outer, inner = box(51.60, 35.60, 51.70, 35.70), box(51.62, 35.62, 51.64, 35.64)
    nested = {"type": "MultiPolygon", "coordinates": [mapping(outer)["coordinates"]]}
    nested["coordinates"].append(mapping(inner)["coordinates"])
    hole = box(51.68, 35.64, 51.72, 35.66)  # half of it outside the shell
    crossing = Polygon(outer.exterior.coords, [hole.exterior.coords])

    def km2(name: str, geometry: object) -> float:
        return area_km2(load_aois(_write_geojson(tmp_path / f"{name}.geojson", geometry))[0])

    with pytest.warns(UserWarning, match="repaired"):
        assert km2("nested", nested) == pytest.approx(km2("outer", mapping(outer)), rel=1e-9)
    with pytest.warns(UserWarning, match="repaired"):
        got = km2("crossing", mapping(crossing))
    assert got == pytest.approx(km2("cut", mapping(outer.difference(hole))), rel=1e-9)


def test_an_aoi_whose_parts_are_far_apart_is_refused(tmp_path: Path) -> None:
    """Gridded in the zone of its centroid, a part 60° away would be warped beyond use."""
    here, far = box(51.60, 35.60, 51.62, 35.62), box(-45.0, -10.0, -44.98, -9.98)
    apart = {"type": "MultiPolygon", "coordinates": [mapping(here)["coordinates"]]}
    apart["coordinates"].append(mapping(far)["coordinates"])
    with pytest.raises(AOIError, match=r"reaches \d+° of longitude .* as its own feature"):
        load_aois(_write_geojson(tmp_path / "apart.geojson", apart, id="apart"))
    near = {"type": "MultiPolygon", "coordinates": [mapping(here)["coordinates"]]}
    near["coordinates"].append(mapping(box(52.6, 35.6, 52.62, 35.62))["coordinates"])
    (aoi,) = load_aois(_write_geojson(tmp_path / "near.geojson", near, id="near"))
    assert grid_for(aoi).crs == "EPSG:32639"


def test_an_aoi_across_a_zone_edge_is_told(tmp_path: Path) -> None:
    """Its grid and ids follow the centroid's zone: a redraw moving that across renames all (the
    run's headline warns with this, in the CLI, report and run.json alike)."""
    across = _write_geojson(tmp_path / "across.geojson", mapping(box(53.9, 35.6, 54.05, 35.7)))
    (aoi,) = load_aois(across)
    assert zone_edge_crossed(aoi) == "UTM zone 39 at 54° E"
    assert grid_for(aoi).crs == "EPSG:32639"
    inside = _write_geojson(tmp_path / "inside.geojson", mapping(box(53.8, 35.6, 53.95, 35.7)))
    (aoi,) = load_aois(inside)
    assert zone_edge_crossed(aoi) is None


def test_degrees_under_a_projected_crs_name_the_crs(tmp_path: Path) -> None:
    """It said the AOI (0 m²) held no pixel centre: draw a larger polygon."""
    path = _write_geojson(tmp_path / "utm.geojson", mapping(box(51.6, 35.6, 51.7, 35.7)))
    fc = json.loads(path.read_text())
    fc["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32639"}}
    path.write_text(json.dumps(fc))
    with pytest.raises(AOIError, match=r"declares EPSG:32639 \(metres\) but its coordinates"):
        load_aois(path)
