"""A before/after pair, and short series: the run compares what there is and says how.

The catalog is the bundled Khojir sample cut down to a few of its scenes; the truth is read only
here, after the run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
from click.testing import Result

from changedet.lab.score import load_features, match

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_tiles" / "khojir"


def cut_catalog(folder: Path, keep: list[str]) -> Path:
    """A copy of the Khojir sample catalog holding only the scenes `keep`; its config file."""
    shutil.copy(SAMPLE / "catalog.json", folder / "catalog.json")
    collection = json.loads((SAMPLE / "sentinel-2-l2a" / "collection.json").read_text())
    collection["links"] = [
        link
        for link in collection["links"]
        if link["rel"] != "item" or any(k in link["href"] for k in keep)
    ]
    (folder / "sentinel-2-l2a").mkdir()
    (folder / "sentinel-2-l2a" / "collection.json").write_text(json.dumps(collection))
    for scene in keep:
        shutil.copytree(SAMPLE / "sentinel-2-l2a" / scene, folder / "sentinel-2-l2a" / scene)
    config = folder / "pair.toml"
    config.write_text(
        f'extends = "{REPO / "configs" / "demo-khojir.toml"}"\n'
        f'[catalog]\nurl = "{folder / "catalog.json"}"\n'
    )
    return config


def run(cli: Callable[..., Result], tmp_path: Path, keep: list[str]) -> tuple[Result, Path]:
    config = cut_catalog(tmp_path, keep)
    out = tmp_path / "out"
    result = cli(
        "run",
        str(REPO / "aoi" / "khojir.geojson"),
        "--config",
        str(config),
        "--out",
        str(out),
        "--quiet",
    )
    return result, out / "khojir"


def test_two_clear_scenes_are_compared(cli: Callable[..., Result], tmp_path: Path) -> None:
    result, folder = run(cli, tmp_path, ["S2A_39SWV_20230712_0_L2A", "S2B_39SWV_20240512_0_L2A"])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((folder / "run.json").read_text())
    comparison = manifest["comparison"]
    assert comparison["mode"] == "pair"
    assert comparison["baseline"] == ["2023-07"]
    assert comparison["clear_periods"] == ["2023-07", "2024-05"]
    assert comparison["min_persistence"] == 1 and comparison["persistence_checked"] is False
    report = (folder / "report.html").read_text()
    assert "two-date comparison: 2024-05 against 2023-07" in report
    # Said where the analyst reads the counts, not only in the report's limits.
    warning = (
        "changedet: warning: AOI 'khojir': two-date comparison: 2024-05 against 2023-07; with "
        "one later observation persistence cannot be checked"
    )
    assert warning in result.stderr
    assert 'id="comparison-warning"' in report
    # One later period cannot tell a structure from a transient: not called confirmed, and the
    # count's low end leaves them out (it claimed n-n).
    assert "new structure(s) (persistence not checked)" in result.stdout.splitlines()[0]
    low, high = manifest["headline"]["new_structures_range"]
    assert high == manifest["headline"]["new_structures"]
    assert manifest["headline"]["new_structures"] > 0 and low == 0
    assert (folder / "counts.csv").read_text().splitlines()[-1].split(",")[6] == "0"

    # Buildings that appeared between the two dates are found, and nothing else much.
    truth = [
        f
        for f in load_features(SAMPLE / "truth.geojson", "building")
        if date(2023, 7, 12) < date.fromisoformat(f["properties"]["appeared"]) <= date(2024, 5, 12)
    ]
    found = [
        f
        for f in load_features(folder / "structures.geojson")
        if f["properties"]["confirmed"] and f["properties"]["kind"] == "building"
    ]
    scored = match(truth, found, "EPSG:32639")
    assert len(truth) >= 25
    assert scored.recall >= 0.8, scored
    assert scored.false_share <= 0.2, scored


def test_a_short_series_shrinks_the_baseline_and_says_so(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    keep = ["S2A_39SWV_20230712_0_L2A", "S2A_39SWV_20230910_0_L2A", "S2B_39SWV_20240512_0_L2A"]
    result, folder = run(cli, tmp_path, keep)
    assert result.exit_code == 0, result.stderr
    comparison = json.loads((folder / "run.json").read_text())["comparison"]
    assert comparison["mode"] == "short"
    assert comparison["baseline"] == ["2023-07"]  # configured: 2; two later periods remain
    assert comparison["min_persistence"] == 2
    assert "two-date" not in result.stderr and "short series" not in result.stderr  # as asked


@pytest.mark.parametrize(
    "keep",
    [
        ["S2A_39SWV_20230712_0_L2A"],
        ["S2B_39SWV_20231104_0_L2A", "S2B_39SWV_20231124_0_L2A"],  # two dates, one month
    ],
)
def test_fewer_than_two_clear_periods_are_refused_in_one_line(
    cli: Callable[..., Result], tmp_path: Path, keep: list[str]
) -> None:
    result, folder = run(cli, tmp_path, keep)
    assert result.exit_code != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "comparison needs two" in lines[0], result.stderr
    assert not (folder / "run.json").exists()
