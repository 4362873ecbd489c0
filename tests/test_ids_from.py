"""`changedet run --ids-from EARLIER_OUT`: an earlier run's structures keep their ids."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from changedet.core.ledger import ID_CELL_M
from changedet.errors import UsageError
from changedet.outputs.earlier import earlier_structures

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo-khojir.toml")
KHOJIR = str(REPO / "aoi" / "khojir.geojson")


def _features(out: Path) -> list[dict[str, Any]]:
    features: list[dict[str, Any]] = json.loads(
        (out / "khojir" / "structures.geojson").read_text()
    )["features"]
    return features


def _neighbour(structure_id: str) -> str:
    """The id of the cell east of a structure's: what an earlier run would have named it had
    its footprint then reached further into that cell."""
    zone, easting, northing = structure_id.split("-")[:3]
    return f"{zone}-{int(easting) + ID_CELL_M}-{northing}"


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo run, as an earlier run left it."""
    from click.testing import CliRunner

    from changedet.cli import main

    out = tmp_path_factory.mktemp("earlier")
    result = CliRunner().invoke(main, ["run", KHOJIR, "--config", DEMO, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_an_earlier_runs_ids_are_kept_even_where_place_alone_names_it_otherwise(
    cli: Callable[..., Result], earlier: Path, tmp_path: Path
) -> None:
    # The earlier run named one confirmed building after the neighbouring cell (its footprint
    # then crossed the border); place alone names it by its own cell today.
    features = _features(earlier)
    chosen = next(f for f in features if f["properties"]["confirmed"])
    place_id = chosen["properties"]["id"]
    renamed = _neighbour(place_id)
    assert renamed not in {f["properties"]["id"] for f in features}
    edited = tmp_path / "edited"
    (edited / "khojir").mkdir(parents=True)
    chosen["properties"]["id"] = renamed
    (edited / "khojir" / "structures.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": features})
    )

    result = cli(
        "run", KHOJIR, "--config", DEMO, "--out", str(tmp_path / "o"), "--ids-from", str(edited)
    )
    assert result.exit_code == 0, result.stderr
    now = _features(tmp_path / "o")
    ids = [f["properties"]["id"] for f in now]
    assert renamed in ids and place_id not in ids
    # Every other structure keeps the earlier run's id, which here is its place id.
    assert sorted(ids) == sorted(f["properties"]["id"] for f in features)
    run = json.loads((tmp_path / "o" / "khojir" / "run.json").read_text())
    assert run["known_ids"] == {"known": len(features), "kept": len(features)}


def test_ids_from_the_out_folder_itself_reads_the_earlier_run_before_replacing_it(
    cli: Callable[..., Result], earlier: Path, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "o"
    shutil.copytree(earlier, out)
    before = sorted(f["properties"]["id"] for f in _features(out))
    result = cli("run", KHOJIR, "--config", DEMO, "--out", str(out), "--ids-from", str(out))
    assert result.exit_code == 0, result.stderr
    assert sorted(f["properties"]["id"] for f in _features(out)) == before
    assert (out / "khojir" / "previous" / "structures.geojson").is_file()


def test_an_aoi_the_earlier_run_did_not_have_is_warned_about_and_named_by_place(
    cli: Callable[..., Result], earlier: Path, tmp_path: Path
) -> None:
    assert earlier_structures(earlier, "modarres") is None
    known = earlier_structures(earlier, "khojir")
    assert known is not None and len(known) == len(_features(earlier))
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "o"
    result = cli("run", KHOJIR, "--config", DEMO, "--out", str(out), "--ids-from", str(empty))
    assert result.exit_code == 0, result.stderr
    assert "has no structures of AOI 'khojir'; its ids come from place alone" in result.stderr
    assert sorted(f["properties"]["id"] for f in _features(out)) == sorted(known)
    assert "known_ids" not in json.loads((out / "khojir" / "run.json").read_text())


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "not a changedet structures file"),
        ('{"type": "FeatureCollection"}', "no 'features' member"),
        (
            '{"features": [{"properties": {"id": ""}, "geometry": '
            '{"type": "Point", "coordinates": [0, 0]}}]}',
            "without an id",
        ),
        (
            '{"features": [{"properties": {"id": "39N-1-2"}, "geometry": '
            '{"type": "Point", "coordinates": [0, 0]}}]}',
            "has no area",
        ),
        (
            '{"features": [{"properties": {"id": "39N-1-2"}, "geometry": '
            '{"type": "Foo", "coordinates": [0, 0]}}]}',
            "Unknown geometry type",
        ),
        (  # said "('NoneType' object has no attribute 'get')", naming no feature
            '{"features": [{"properties": {"id": "39N-1-2"}, "geometry": null}]}',
            r"structures.geojson, feature 1 \(id 39N-1-2\), is not a changedet structures "
            r"file \(structure 39N-1-2 has no geometry\)",
        ),
        (  # an id with a newline broke the one line, and cut the reason short
            '{"features": [{"properties": {"id": "s-1\\nfake line"}, "geometry": null}]}',
            r"feature 1 \(id s-1\\nfake line\), is not a changedet structures file \(structure "
            r"s-1\\nfake line has no geometry\); pass",
        ),
    ],
)
def test_a_file_that_is_not_an_earlier_runs_structures_is_refused(
    cli: Callable[..., Result], tmp_path: Path, text: str, needle: str
) -> None:
    (tmp_path / "bad" / "khojir").mkdir(parents=True)
    path = tmp_path / "bad" / "khojir" / "structures.geojson"
    path.write_text(text)
    with pytest.raises(UsageError, match=needle):
        earlier_structures(tmp_path / "bad", "khojir")
    out = tmp_path / "o"
    result = cli(
        "run", KHOJIR, "--config", DEMO, "--out", str(out), "--ids-from", str(tmp_path / "bad")
    )
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(path) in errors[0] and "--out folder" in errors[0]
    assert not out.exists()  # refused before anything was searched, read or written


def test_a_missing_ids_from_folder_is_a_usage_error(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    out = tmp_path / "o"
    result = cli(
        "run", KHOJIR, "--config", DEMO, "--out", str(out), "--ids-from", str(tmp_path / "nope")
    )
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "--ids-from" in result.stderr and "not a folder" in result.stderr
    assert not out.exists()


def test_ids_from_a_wider_outline_brings_in_no_structure_the_narrower_one_lacks(
    cli: Callable[..., Result], earlier: Path, tmp_path: Path
) -> None:
    """A polygon tightened later, run with `--ids-from` the wider run: a structure the edge now
    cuts west of its centre is not the AOI's, with or without the earlier run (it was kept, its
    centre published outside the polygon, because its known footprint touched the polygon)."""
    import shapely
    from shapely.geometry import box, mapping, shape

    from changedet.core.clip import centre_point

    aoi = json.loads(Path(KHOJIR).read_text())
    polygon = shape(aoi["features"][0]["geometry"])
    confirmed = [shape(f["geometry"]) for f in _features(earlier) if f["properties"]["confirmed"]]
    cut = max(confirmed, key=lambda g: g.bounds[2] - centre_point(g).x)  # reaches furthest east
    edge = (centre_point(cut).x + cut.bounds[2]) / 2  # its centre west of the edge, part east
    aoi["features"][0]["geometry"] = mapping(polygon.intersection(box(edge, -90, 180, 90)))
    narrow = tmp_path / "narrow.geojson"
    narrow.write_text(json.dumps(aoi))

    def confirmed_points(*extra: str) -> list[Any]:
        out = tmp_path / f"o{len(extra)}"
        result = cli("run", str(narrow), "--config", DEMO, "--out", str(out), *extra)
        assert result.exit_code == 0, result.stderr
        found = [f for f in _features(out) if f["properties"]["confirmed"]]
        return [shapely.Point(f["properties"]["lon"], f["properties"]["lat"]) for f in found]

    alone, carried = confirmed_points(), confirmed_points("--ids-from", str(earlier))
    assert len(carried) == len(alone) > 0
    assert all(shape(aoi["features"][0]["geometry"]).contains(p) for p in carried)
