"""Libraries are imported on the main thread, never first on a pool's thread.

Python's import lock lets a thread see a module another thread has half imported when the two
import modules that import each other (scipy.spatial and scipy.spatial.distance): a monitoring
run that only refreshed its outputs failed now and then with "cannot import name 'euclidean'
from partially initialized module", its k-means importing scipy.cluster on the pool while the
ledger imported skimage.morphology. A spy on the import system records every module first
imported off the main thread during real runs; none may be a library's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SPY = """
import json, sys, threading
off_main = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if threading.current_thread() is not threading.main_thread():
            off_main.append(name)
        return None
sys.meta_path.insert(0, Spy())
from changedet.cli import main
try:
    main(sys.argv[1:], prog_name="changedet")
finally:
    loaded = sorted({name for name in off_main if name in sys.modules})
    print("OFF-MAIN " + json.dumps(loaded), file=sys.stderr)
"""


def _imported_off_main(cwd: Path, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SPY, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("OFF-MAIN ")]
    names: list[str] = json.loads(line.removeprefix("OFF-MAIN "))
    return [n for n in names if not n.startswith("changedet")]


def test_a_run_imports_no_library_on_a_pool_thread(tmp_path: Path) -> None:
    config = REPO / "configs" / "demo-khojir.toml"
    aoi = REPO / "aoi" / "khojir.geojson"
    out = tmp_path / "out"
    args = ("run", str(aoi), "--config", str(config), "--out", str(out), "--quiet")
    assert _imported_off_main(tmp_path, *args) == []
    assert (out / "khojir" / "report.html").is_file()  # the chips and figures were drawn


def test_a_monitoring_run_from_its_period_cache_imports_no_library_on_a_pool_thread(
    tmp_path: Path,
) -> None:
    """The run that failed: every period taken from the cache (its outputs gone), so the ledger
    is built while the pool still computes the overall change."""
    for folder in ("configs", "aoi", "sample_tiles"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    watch = ("monitor", "run", "--config", "configs/monitor-demo.toml", "--quiet")
    assert _imported_off_main(tmp_path, *watch, "--now", "2024-03-01") == []
    shutil.rmtree(tmp_path / "monitor-demo" / "out" / "khojir")
    assert _imported_off_main(tmp_path, *watch, "--now", "2024-03-01") == []
    assert (tmp_path / "monitor-demo" / "out" / "khojir" / "report.html").is_file()
