"""AOIs on a Dask LocalCluster (two worker processes on loopback): the files a local run writes,
and one AOI whose reads fail does not stop the other."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from changedet.aoi import load_aois
from changedet.compute import run_aois
from changedet.config import Config, load_config

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
PRODUCTS = ("structures.geojson", "berms.geojson", "counts.csv", "structures.csv")


def _catalog(root: Path, *, broken: str | None = None) -> Path:
    """Both sample sites in one item collection; every COG of site `broken` cut short."""
    features = []
    for site in ("khojir", "modarres"):
        shutil.copytree(REPO / "sample_tiles" / site, root / site)
        items = json.loads((root / site / "items.json").read_text())
        for item in items["features"]:
            for asset in item["assets"].values():
                href = (root / site / asset["href"]).resolve()
                asset["href"] = str(href)
                if site == broken and href.suffix == ".tif":
                    href.write_bytes(href.read_bytes()[:2000])
            features.append(item)
    path = root / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _config(catalog: Path, cluster: str = "") -> Config:
    config = load_config(REPO / "configs" / "demo-khojir.toml", {"catalog.url": str(catalog)})
    return replace(config, compute=replace(config.compute, cluster=cluster))


def _products(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in PRODUCTS if (folder / name).is_file()}


def test_a_cluster_writes_what_a_local_run_writes_and_a_failing_aoi_stays_alone(
    tmp_path: Path, dask_cluster: str
) -> None:
    aois = {
        a.id: a
        for site in ("khojir", "modarres")
        for a in load_aois(REPO / "aoi" / f"{site}.geojson")
    }
    good = _catalog(tmp_path / "good")
    local = list(run_aois([aois["khojir"]], _config(good), out_root=tmp_path / "local"))
    assert [o.ok for o in local] == [True]

    broken = _catalog(tmp_path / "broken", broken="modarres")
    seen: list[str] = []
    outcomes = {
        o.aoi_id: o
        for o in run_aois(
            [aois["modarres"], aois["khojir"]],
            _config(broken, dask_cluster),
            out_root=tmp_path / "cluster",
            progress=lambda stage, done, total: seen.append(stage),
        )
    }
    assert outcomes["khojir"].ok and not outcomes["modarres"].ok
    assert "read" in (outcomes["modarres"].error or "")
    assert not (tmp_path / "cluster" / "modarres").exists()
    expected = _products(tmp_path / "local" / "khojir")
    assert "structures.geojson" in expected
    assert _products(tmp_path / "cluster" / "khojir") == expected
    # progress came back from the workers, per AOI, and the AOIs were counted
    assert "AOIs" in seen and any(s.startswith("khojir: ") for s in seen)
