"""`changedet eval series`, the honest yardstick: its figures add up, and a blind detector scores 0.

The CLI tests run one small city for a few months (`eval series` on all nine takes minutes) and
skip when ../shared/data is absent; the known-answer tests of the pieces need no data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import shapely
from click.testing import Result
from pyproj import Transformer

from changedet.core.track import footprint_geometry
from changedet.lab.kindtruth import MISSED, kind_confusion
from changedet.lab.score import load_features
from changedet.lab.yardstick import (
    CONTRAST_EDGES,
    false_objects,
    recall_by,
    truth_contrast,
    unchanged_ground,
)
from changedet.models import Grid, Structure

REPO = Path(__file__).resolve().parents[1]
CITY = "bercy"  # a small labelled city
GRID = Grid.from_origin("EPSG:32631", 400_000.0, 5_000_000.0, 10.0, 20, 20)


def _mask(r0: int, c0: int, h: int, w: int) -> np.ndarray:
    m = np.zeros(GRID.shape, bool)
    m[r0 : r0 + h, c0 : c0 + w] = True
    return m


def _structure(
    sid: str, mask: np.ndarray, kind: str = "other", confirmed: bool = True
) -> Structure:
    geom = footprint_geometry(mask, GRID)
    return Structure(sid, geom, geom.area, 0.9, None, None, confirmed, kind=kind)


def test_false_objects_lie_wholly_beyond_the_buffer() -> None:
    regions = _mask(5, 5, 3, 3).astype(np.int32)
    valid = np.ones(GRID.shape, bool)
    valid[:, -1] = False  # a no-data column is not ground
    unchanged = unchanged_ground(regions, valid, buffer_px=2)
    assert unchanged.sum() == 20 * 19 - 7 * 7  # the 3x3 change grown by 2 px, and the column
    masks = [
        _mask(0, 0, 2, 2),  # far away: false
        _mask(5, 9, 2, 2),  # touches the 2 px fringe: the change's own misaligned edge
        _mask(12, 12, 2, 2),  # far away but only a candidate: not counted
        _mask(15, 0, 2, 2),  # far away: false
    ]
    structures = [_structure(f"s{i}", m, confirmed=i != 2) for i, m in enumerate(masks)]
    footprints = np.zeros(GRID.shape, np.int32)
    for i, m in enumerate(masks):
        footprints[m] = i + 1
    assert false_objects(structures, footprints, unchanged) == 2
    assert false_objects(structures, footprints, unchanged_ground(regions, valid, 0)) == 3


def _feature(fid: str, kind: str, geom: Any, **props: Any) -> dict[str, Any]:
    to_wgs84 = Transformer.from_crs(GRID.crs, "EPSG:4326", always_xy=True)
    wgs84 = shapely.transform(geom, lambda xy: np.column_stack(to_wgs84.transform(*xy.T)))
    return {
        "type": "Feature",
        "properties": {"id": fid, "kind": kind, **props},
        "geometry": shapely.geometry.mapping(wgs84),
    }


def test_pieces_are_the_false_positives_on_a_change_another_structure_found() -> None:
    from changedet.lab.score import StructureMatches
    from changedet.lab.yardstick import pieces

    regions = np.zeros((6, 12), np.int32)
    regions[:, 0:6] = 1  # a large site, found
    regions[:, 8:10] = 2  # a change that was missed
    footprints = np.zeros_like(regions)
    footprints[0:4, 0:4] = 1  # matches region 1
    footprints[5, 3:6] = 2  # another piece of region 1
    footprints[0:2, 9:11] = 3  # on the missed region 2: a partial sighting, not a piece
    footprints[4:6, 10:12] = 4  # beside region 2 only
    found = StructureMatches(pairs=((0, 0),), unmatched=(1, 2, 3))
    assert pieces(found, footprints, regions) == 1
    assert pieces(StructureMatches((), (0, 1, 2, 3)), footprints, regions) == 0


def test_recall_by_bins_known_answer() -> None:
    values = np.array([0.01, 0.03, 0.05, 0.10, 0.02, 0.019])
    found = np.array([False, True, True, True, False, True])
    got = recall_by(values, found, CONTRAST_EDGES)
    # An edge belongs to the bin above it (0.02 is not "< 0.02").
    assert got == {
        "< 0.02": (1, 2),
        "0.02–0.04": (1, 2),
        "0.04–0.08": (1, 1),
        "≥ 0.08": (1, 1),
    }
    assert recall_by(np.array([5.0]), np.array([True]), (20, 50), "{:g} px") == {
        "< 20 px": (1, 1),
        "20 px–50 px": (0, 0),
        "≥ 50 px": (0, 0),
    }


def test_truth_contrast_is_the_mean_change_over_the_detection_bands() -> None:
    shape = (4, 4)
    before = np.zeros((3, *shape), dtype=np.float32)
    after = before.copy()
    regions = np.zeros(shape, dtype=np.int32)
    regions[:2, :2] = 7  # region 7: blue +0.03, red -0.06 → mean |Δ| 0.045
    after[0, :2, :2] = 0.03
    after[2, :2, :2] = -0.06
    regions[3, 3] = 9  # region 9: red unobserved, left out of its pixel's mean → blue's 0.1
    after[:, 3, 3] = (0.1, 0.0, np.nan)
    series = SimpleNamespace(
        bands=("blue", "cirrus", "red"),  # cirrus is no detection band: not counted
        before=before,
        after=after,
        regions=regions,
        truth=[SimpleNamespace(region_id=7), SimpleNamespace(region_id=9)],
    )
    before[1] = 5.0  # a change in the cirrus band would dominate were it counted
    assert truth_contrast(series) == pytest.approx([0.045, 0.1])


def test_kind_confusion_known_answer() -> None:
    house, hall = _mask(2, 2, 4, 4), _mask(12, 12, 4, 4)
    # A berm's centre line round the house (a LineString, as in the sample's truth).
    ring = shapely.LineString(footprint_geometry(_mask(1, 1, 6, 6), GRID).exterior.coords)
    truth = [
        _feature("new-1", "building", footprint_geometry(house, GRID)),
        _feature("new-2", "building", footprint_geometry(hall, GRID)),
        _feature("new-1-berm", "berm", ring, width_m=10.0),
        _feature("old-1", "existing", footprint_geometry(_mask(16, 2, 3, 3), GRID)),
    ]
    berm = _mask(0, 0, 8, 8) & ~_mask(2, 2, 4, 4)
    structures = [
        _structure("a", house, "building"),
        _structure("b", berm, "ground works"),
        _structure("c", hall, "other"),
        _structure("d", _mask(16, 12, 2, 2), "building"),  # nothing true there
        _structure("e", _mask(16, 2, 3, 3), "building", confirmed=False),  # a candidate
    ]
    c = kind_confusion("x", structures, truth, GRID.crs)
    assert c.rows["building"] == {"building": 1, "other": 1, MISSED: 0}
    assert c.rows["ground works"] == {"ground works": 1, MISSED: 0}
    assert c.unmatched == {"building": 1}
    assert c.agreement() == pytest.approx(2 / 3)
    both = c + c
    assert both.rows["building"] == {"building": 2, "other": 2, MISSED: 0}


def _eval_series(
    cli: Callable[..., Result], oscd_root: Path, out: Path, *extra: str, months: int = 8
) -> tuple[Result, dict[str, Any]]:
    result = cli(
        "eval",
        "series",
        "--root",
        str(oscd_root),
        "--cities",
        CITY,
        "--months",
        str(months),
        "--json",
        str(out),
        *extra,
    )
    assert result.exit_code == 0, result.output + str(result.exception)
    return result, json.loads(out.read_text())


@pytest.mark.oscd
def test_eval_series_figures_add_up(
    cli: Callable[..., Result], oscd_root: Path, tmp_path: Path
) -> None:
    result, data = _eval_series(
        cli,
        oscd_root,
        tmp_path / "series.json",
        "--samples",
        str(REPO / "sample_tiles"),
        "--aoi-dir",
        str(REPO / "aoi"),
    )
    (row,) = data["cities"]
    pooled = data["pooled"]
    assert row["city"] == CITY and row["truth"] > 0 and row["tp"] > 0
    assert pooled["city"] == "pooled"  # one city: its figures, under the pooled row's name
    for r in (row, pooled):
        p, rec = r["precision"], r["recall"]
        assert p == pytest.approx(r["tp"] / (r["tp"] + r["fp"]))
        assert rec == pytest.approx(r["tp"] / r["truth"])
        assert r["f1"] == pytest.approx(2 * p * rec / (p + rec))
        assert r["tp"] + r["fn"] == r["truth"]
        assert r["count_error"] == pytest.approx((r["confirmed"] - r["truth"]) / r["truth"])
        assert r["first_seen"] == pytest.approx(r["first_seen_hits"] / r["tp"])
        assert r["false_objects"] <= r["fp"] and r["unchanged_km2"] > 0
        # Pieces lie on a change, false objects 2 px away from any: disjoint parts of fp.
        assert r["pieces"] >= 0 and r["pieces"] + r["false_objects"] <= r["fp"]
        assert sum(r["matched_kinds"].values()) == r["tp"]
        assert sum(r["unmatched_kinds"].values()) == r["fp"]
        # Every true change falls in one contrast bin and one size bin; those found are the tp.
        for key in ("found_by_contrast", "found_by_size"):
            assert sum(c["truth"] for c in r[key]) == r["truth"]
            assert sum(c["found"] for c in r[key]) == r["tp"]
    for key in ("truth", "confirmed", "tp", "fp", "fn", "false_objects", "pieces", "unchanged_km2"):
        assert pooled[key] == pytest.approx(row[key])
    # The terminal tables carry the same figures.
    assert CITY in result.output and "pooled" in result.output
    assert f"{row['f1']:.2f}" in result.output and "ground works" in result.output
    # Every new truth object of each sample is either matched (with some kind) or missed.
    for sample in data["sample_kinds"]:
        truth = load_features(REPO / "sample_tiles" / sample["aoi"] / "truth.geojson")
        for true_kind, source in (("building", "building"), ("ground works", "berm")):
            n_true = sum(f["properties"]["kind"] == source for f in truth)
            assert sum(sample["truth"][true_kind].values()) == n_true
        assert 0.0 <= sample["agreement"] <= 1.0


@pytest.mark.oscd
def test_a_blind_detector_scores_zero(
    cli: Callable[..., Result], oscd_root: Path, tmp_path: Path
) -> None:
    blind = tmp_path / "blind.toml"
    blind.write_text("[change]\nz_threshold = 1e9\nstructure_z_threshold = 1e9\n")
    _result, data = _eval_series(
        cli, oscd_root, tmp_path / "blind.json", "--config", str(blind), months=6
    )
    pooled = data["pooled"]
    assert pooled["truth"] > 0
    assert (pooled["tp"], pooled["recall"], pooled["f1"]) == (0, 0.0, 0.0)
    assert pooled["count_error"] == pytest.approx(-1.0) and pooled["false_objects"] == 0


def test_eval_series_refuses_a_missing_root(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli("eval", "series", "--root", str(tmp_path / "nowhere"))
    assert result.exit_code != 0
    assert "not a folder" in result.output + (result.stderr or "")


def _oscd_tree(root: Path, cities: dict[str, bool]) -> Path:
    """The folder layout of an OSCD download: city → has a label."""
    from changedet.lab.oscd import IMAGES_DIR, LABELS_DIR

    for city, labelled in cities.items():
        for dates in ("imgs_1", "imgs_2"):
            (root / IMAGES_DIR / city / dates).mkdir(parents=True)
        if labelled:
            label = root / LABELS_DIR / city / "cm" / f"{city}-cm.tif"
            label.parent.mkdir(parents=True)
            label.write_bytes(b"")
    return root


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["eval", "series", "--cities", "lyon"], "lyon: not among the labelled OSCD cities"),
        (["eval", "series", "--cities", "beirut"], "beirut: not among the labelled OSCD cities"),
        (["synth", "oscd-series", "--city", "beirut"], "pick from pisa"),
        (["eval", "oscd", "--cities", "lyon,pisa"], "lyon: not among the OSCD cities"),
    ],
)
def test_a_city_not_in_the_download_is_a_usage_error(
    cli: Callable[..., Result], tmp_path: Path, args: list[str], needle: str
) -> None:
    """Named before any work, with the cities there are: exit 2 like every usage error."""
    root = _oscd_tree(tmp_path / "oscd", {"pisa": True, "beirut": False})
    out = ["--out", str(tmp_path / "out")] if args[1] != "series" else []
    result = cli(*args, "--root", str(root), *out)
    assert result.exit_code == 2, result.output
    assert needle in (result.stderr or result.output)
    assert not (tmp_path / "out").exists()


def test_a_root_that_is_not_an_oscd_download_is_a_usage_error(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    result = cli("eval", "series", "--root", str(tmp_path))
    assert result.exit_code == 2 and "has no 'Onera Satellite" in (result.stderr or result.output)
