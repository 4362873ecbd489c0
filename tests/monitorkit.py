"""A small, fast monitoring scenario for the monitor tests: a 0.49 km² box of the bundled
SYNTHETIC Khojir sample (8 new structures appear in it between 2023-08 and 2024-02), a catalog
that is published item by item, a watch-list with quick outputs, and helpers to read the state.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyproj import Transformer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_tiles" / "khojir"
DEMO_CONFIG = REPO / "configs" / "demo-khojir.toml"
# The sample's stored window (10 m px; top-left corner in EPSG:32639) and the test box in it.
WINDOW_X0, WINDOW_Y0 = 559_380.0, 3_943_320.0
BOX = (130, 100, 200, 170)  # col0, row0, col1, row1
REPROCESSED = "S2A_39SWV_20240128_1_L2A"  # the sample's reprocessed datatake (…_0_L2A is older)
LEDGER = ("scenes", "periods", "structures", "structure_history", "alerts")
FAST = {  # what the tests do not look at: skipped to keep a run around a second
    "output.cogs": False,
    "output.imagery": False,
    "output.chips": False,
    "output.report": False,
    "read.context_m": 200.0,  # the default 2 km would take in the whole sample window
}


def box_polygon(box: Sequence[int] = BOX) -> list[list[float]]:
    t = Transformer.from_crs("EPSG:32639", "EPSG:4326", always_xy=True)
    c0, r0, c1, r1 = box
    x0, x1 = WINDOW_X0 + c0 * 10, WINDOW_X0 + c1 * 10
    y0, y1 = WINDOW_Y0 - r0 * 10, WINDOW_Y0 - r1 * 10
    return [list(t.transform(x, y)) for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]


def sample_items(base: str) -> list[dict[str, Any]]:
    """Every item of the Khojir sample, hrefs made absolute against `base`, in date order."""
    from changedet.lab.sample import rebase_items

    items = json.loads((SAMPLE / "items.json").read_text())
    features = rebase_items(items, base)["features"]
    return sorted(features, key=lambda f: (f["properties"]["datetime"], f["id"]))


def acquired(item: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))


@dataclass
class Scenario:
    root: Path
    items: list[dict[str, Any]]  # hrefs absolute (local paths)
    overrides: dict[str, Any] = field(default_factory=lambda: dict(FAST))

    @property
    def state(self) -> Path:
        return self.root / "state.sqlite"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def catalog(self) -> Path:
        return self.root / "items.json"

    def publish(self, keep: Callable[[dict[str, Any]], bool] = lambda item: True) -> list[str]:
        """Write items.json with the items `keep` accepts; returns their ids."""
        chosen = [item for item in self.items if keep(item)]
        self.catalog.write_text(json.dumps({"type": "FeatureCollection", "features": chosen}))
        return [item["id"] for item in chosen]

    def watchlist(
        self,
        *,
        catalog: str | None = None,
        name: str = "watch.toml",
        extra: str = "",
        aois: Sequence[str] = ("k1",),
    ) -> Path:
        overrides = {
            **self.overrides,
            "catalog.allowed_folders": [str(SAMPLE)],
            "read.cache_dir": str(self.root / "cache"),
        }
        lines = [
            f'state = "{self.state}"',
            f'out = "{self.out}"',
            "lookback_days = 20",
            extra,
        ]
        for aoi in aois:
            lines += [
                "[[watch]]",
                f'aoi = "{self.root / (aoi + ".geojson")}"',
                f'config = "{DEMO_CONFIG}"',
                'start = "2023-06-01"',
                'end = "2024-06-30"',
                f'catalog = "{catalog or self.catalog}"',
                "[watch.overrides]",
                *(f'"{k}" = {json.dumps(v)}' for k, v in overrides.items()),
            ]
        path = self.root / name
        path.write_text("\n".join(lines) + "\n")
        return path


def make_scenario(
    root: Path, *, base: str | None = None, boxes: dict[str, Sequence[int]] | None = None
) -> Scenario:
    """The scenario under `root`; `base` is where item hrefs point (default: the sample
    folder itself); `boxes`: AOI id → box (default: {"k1": BOX})."""
    root.mkdir(parents=True, exist_ok=True)
    for aoi_id, box in (boxes or {"k1": BOX}).items():
        feature = {
            "type": "Feature",
            "properties": {"id": aoi_id, "name": f"test box {aoi_id}"},
            "geometry": {"type": "Polygon", "coordinates": [box_polygon(box)]},
        }
        (root / f"{aoi_id}.geojson").write_text(
            json.dumps({"type": "FeatureCollection", "features": [feature]})
        )
    scenario = Scenario(root, sample_items(base or str(SAMPLE)))
    scenario.publish(lambda item: False)  # nothing published yet
    return scenario


def until(when: str) -> Callable[[dict[str, Any]], bool]:
    """Items acquired before `when` (ISO date)."""
    limit = datetime.fromisoformat(when).replace(tzinfo=UTC)
    return lambda item: acquired(item) < limit


def ledger_dump(state: Path, tables: Sequence[str] = LEDGER) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the ledger tables, in a fixed order (read-only connection)."""
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        return {t: list(db.execute(f"SELECT * FROM {t} ORDER BY 1, 2")) for t in tables}
    finally:
        db.close()


def ledger_outcome(state: Path) -> dict[str, Any]:
    """What a run's outcome should be whatever runs, kills and retries led to it: structures,
    alert keys, scenes and periods without run ids or times."""
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        return {
            "structures": list(db.execute("SELECT * FROM structures ORDER BY aoi_id, id")),
            "alerts": list(
                db.execute(
                    "SELECT key, aoi_id, structure_id, kind, payload FROM alerts ORDER BY key"
                )
            ),
            "scenes": list(
                db.execute(
                    "SELECT aoi_id, scene_id, acquired, processing_baseline, updated, "
                    "clear_fraction, outcome, reason, record FROM scenes ORDER BY 1, 2"
                )
            ),
            "periods": list(
                db.execute(
                    'SELECT aoi_id, label, start, "end", scene_ids FROM periods ORDER BY 1, 2'
                )
            ),
        }
    finally:
        db.close()


def integrity(state: Path) -> str:
    db = sqlite3.connect(state)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def monitor_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "changedet", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
