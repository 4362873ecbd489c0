"""The monitor on a Dask LocalCluster (two worker processes on loopback): each AOI's pipeline
runs on a worker, this process plans, commits and alerts. The ledger, alerts and outputs equal a
run here; a catalog that grows is taken incrementally through the shared period cache; an AOI
whose reads fail stays alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from monitorkit import Scenario, ledger_outcome, make_scenario, monitor_cli, until

from changedet.monitor.run import run_watchlist
from changedet.monitor.watchlist import load_watchlist

pytest.importorskip("distributed")

BOXES = {"k1": (150, 100, 200, 150), "k2": (130, 140, 180, 190)}
NOW = datetime(2024, 7, 1, tzinfo=UTC)
PRODUCTS = ("structures.geojson", "berms.geojson", "counts.csv", "structures.csv")


def _scenario(root: Path) -> Scenario:
    scenario = make_scenario(root, boxes=BOXES)
    scenario.overrides["output.geopackage"] = False
    return scenario


def _products(scenario: Scenario, aoi: str) -> dict[str, bytes]:
    return {name: (scenario.out / aoi / name).read_bytes() for name in PRODUCTS}


def _cli_run(scenario: Scenario, cluster: str) -> str:
    done = monitor_cli(
        "monitor", "run", "--config", str(scenario.watchlist(aois=("k1", "k2"))),
        "--now", NOW.isoformat(), "--quiet", "--cluster", cluster,
        cwd=scenario.root, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_cluster_run_reaches_the_ledger_and_outputs_of_a_run_here(
    tmp_path: Path, dask_cluster: str
) -> None:
    here, there = _scenario(tmp_path / "here"), _scenario(tmp_path / "there")
    for step in ("2024-01-15", "2024-07-01"):  # a first run, then an incremental one
        for scenario in (here, there):
            scenario.publish(until(step))
        report = run_watchlist(load_watchlist(here.watchlist(aois=("k1", "k2"))), now=NOW)
        assert [(c.aoi_id, c.outcome) for c in report.checks] == [
            ("k1", "updated"),
            ("k2", "updated"),
        ]
        out = _cli_run(there, dask_cluster)
        assert "k1: updated" in out and "k2: updated" in out
        assert ledger_outcome(there.state) == ledger_outcome(here.state)
        for aoi in ("k1", "k2"):
            assert _products(there, aoi) == _products(here, aoi)
    # The second run took the known dates from the period cache the workers share with it.
    assert "kept" in out and ", 0 kept" not in out.split("k2: updated")[1]
    # Nothing new: the cluster is not even asked; nothing changes.
    before = ledger_outcome(there.state)
    again = _cli_run(there, dask_cluster)
    assert "k1: unchanged" in again and "k2: unchanged" in again
    assert ledger_outcome(there.state) == before


def test_an_aoi_that_fails_on_a_worker_leaves_the_others_alone(
    tmp_path: Path, dask_cluster: str
) -> None:
    scenario = _scenario(tmp_path / "s")
    scenario.publish(until("2024-03-01"))
    # k2's output folder is taken by a file: its pipeline runs on a worker, then cannot write.
    scenario.out.mkdir(parents=True)
    (scenario.out / "k2").write_text("not a folder")
    watch = load_watchlist(scenario.watchlist(aois=("k1", "k2")))
    report = run_watchlist(watch.with_cluster(dask_cluster), now=NOW)
    outcomes = {c.aoi_id: c for c in report.checks}
    assert [c.aoi_id for c in report.checks] == ["k1", "k2"]  # the watch-list's order
    assert outcomes["k1"].outcome == "updated"
    assert outcomes["k2"].outcome == "failed", outcomes["k2"].message
    assert "not a folder" in outcomes["k2"].message and "\n" not in outcomes["k2"].message
    assert report.failed == 1
    assert (scenario.out / "k1" / "structures.geojson").is_file()
    assert (scenario.out / "k2").read_text() == "not a folder"
    # k2's failure committed nothing of it: the next run (here) does all its work.
    summary = ledger_outcome(scenario.state)
    assert {row[0] for row in summary["periods"]} == {"k1"}
    (scenario.out / "k2").unlink()
    again = run_watchlist(watch, now=NOW)
    assert [(c.aoi_id, c.outcome) for c in again.checks] == [("k1", "unchanged"), ("k2", "updated")]
