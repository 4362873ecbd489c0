"""The CLI contract: one-line errors, exit codes, no tracebacks, nothing written outside --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo-khojir.toml"


def changedet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "changedet", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=300,
    )


def paris_aoi(path: Path, *, aoi_id: str) -> Path:
    """An AOI over Paris, which no bundled sample scene covers."""
    ring = [[2.30, 48.84], [2.36, 48.84], [2.36, 48.88], [2.30, 48.88], [2.30, 48.84]]
    feature = {
        "type": "Feature",
        "properties": {"id": aoi_id},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }
    path.write_text(json.dumps(feature))
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_version_and_help() -> None:
    proc = changedet("--version")
    assert proc.returncode == 0 and "changedet" in proc.stdout
    for command in (
        "run",
        "search",
        "synth",
        "eval",
        "synth sample",
        "synth oscd-series",
        "eval oscd",
    ):
        proc = changedet(*command.split(), "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout, command


def test_missing_aoi_file(tmp_path: Path) -> None:
    proc = changedet(
        "run", str(tmp_path / "nope.geojson"), "--config", str(DEMO), "--out", str(tmp_path / "o")
    )
    assert_one_line_error(proc, 1, "not found")


def test_file_that_is_not_geojson(tmp_path: Path) -> None:
    bad = tmp_path / "notes.geojson"
    bad.write_text("hello, I am not GeoJSON")
    proc = changedet("run", str(bad), "--config", str(DEMO), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, 1, "could not be read")


def test_non_polygon_aoi(tmp_path: Path) -> None:
    point = tmp_path / "point.geojson"
    point.write_text(
        json.dumps(
            {
                "type": "Feature",
                "properties": {"id": "p"},
                "geometry": {"type": "Point", "coordinates": [51.6, 35.6]},
            }
        )
    )
    proc = changedet("run", str(point), "--config", str(DEMO), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, 1, "not a polygon")


def test_unknown_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[change]\nmin_area = 100\n")
    proc = changedet(
        "run", "aoi/khojir.geojson", "--config", str(cfg), "--out", str(tmp_path / "o")
    )
    assert_one_line_error(proc, 2, "unknown key 'min_area'", "did you mean 'min_area_m2'")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--start", "2023-02-30"], "not a valid date"),
        (["--start", "2024-06-01", "--end", "2023-06-01"], "before start"),
        (["--catalog", "/no/such/catalog.json"], "does not exist"),
        (["--start", "2024-06-01", "--end", "2024-06-30"], "need at least 3"),
    ],
)
def test_bad_flags(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = changedet(
        "run", "aoi/khojir.geojson", "--config", str(DEMO), "--out", str(tmp_path / "o"), *args
    )
    assert_one_line_error(proc, 2, needle)
    assert not (tmp_path / "o").exists()


def test_aoi_no_scene_covers_fails_that_aoi_only(tmp_path: Path) -> None:
    paris = paris_aoi(tmp_path / "paris.geojson", aoi_id="paris")
    proc = changedet("search", str(paris), "--config", str(DEMO), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["scenes"] == []
    proc = changedet("run", str(paris), "--config", str(DEMO), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, 1, "paris", "no scene")
    assert not (tmp_path / "o" / "paris").exists()


def test_hostile_aoi_id_cannot_escape_out(tmp_path: Path) -> None:
    evil = paris_aoi(tmp_path / "evil.geojson", aoi_id="../../escaped")
    out = tmp_path / "deep" / "out"
    changedet("run", str(evil), "--config", str(DEMO), "--out", str(out))
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()
    leaked = [
        p
        for p in tmp_path.rglob("*")
        if out not in p.parents
        and p != out
        and p.parent != tmp_path
        and p.parent != tmp_path / "deep"
    ]
    assert leaked == []


def test_one_failing_aoi_does_not_stop_the_others(tmp_path: Path) -> None:
    paris = paris_aoi(tmp_path / "paris.geojson", aoi_id="paris")
    out = tmp_path / "o"
    missing = tmp_path / "missing.geojson"
    proc = changedet(
        "run",
        str(paris),
        str(missing),
        "aoi/khojir.geojson",
        "--config",
        str(DEMO),
        "--out",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "paris" in proc.stderr
    assert "missing.geojson' not found" in proc.stderr
    assert (out / "khojir" / "structures.geojson").is_file()
    assert not (out / "paris").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_search_probe_reports_aoi_clear_sky_and_reasons() -> None:
    proc = changedet("search", "aoi/khojir.geojson", "--config", str(DEMO), "--probe", "--json")
    assert proc.returncode == 0, proc.stderr
    (report,) = json.loads(proc.stdout)
    scenes = {s["id"]: s for s in report["scenes"]}
    assert len(scenes) >= 13
    assert all(0.0 <= s["aoi_clear_fraction"] <= 1.0 for s in scenes.values())
    cloudy = [s for s in scenes.values() if not s["used"]]
    assert cloudy and all("cloudy inside AOI" in s["reason"] for s in cloudy)
    assert all(s["aoi_clear_fraction"] < 0.2 for s in cloudy)
    # The reprocessed duplicate is listed as dropped, with the id it lost to.
    assert any(
        "duplicate of" in d["reason"] and d["id"].endswith("_0_L2A") for d in report["dropped"]
    )
    proc = changedet("search", "aoi/khojir.geojson", "--config", str(DEMO))
    assert proc.returncode == 0 and "S2A_39SWV_20230612_0_L2A" in proc.stdout
