"""Headless QGIS for the tests: the system Python with `python3-qgis` (apt), run on a script
that prints one `RESULT <json>` line. Tests skip without it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

SYSTEM_PYTHON = Path("/usr/bin/python3")


def has_qgis() -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    probe = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True, timeout=60, check=False
    )
    return probe.returncode == 0


def skip_without_qgis() -> None:
    if not has_qgis():
        pytest.skip("QGIS Python API not installed (apt-get install -y python3-qgis)")


def qgis_result(script: str, args: list[str], tmp: Path, *, timeout: int) -> Any:
    """Run `script` (its text) in headless QGIS with `args`; what its `RESULT` line says."""
    path = tmp / "qgis_script.py"
    path.write_text(script)
    xdg = tmp / "xdg"
    xdg.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(xdg)}
    env.pop("PYTHONPATH", None)  # the venv's packages must not leak into the system Python
    proc = subprocess.run(
        [str(SYSTEM_PYTHON), str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"QGIS failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])
