"""Shared fixtures. Tests needing ../shared/data skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHANGEDET_SHARED_DATA", REPO.parent / "shared" / "data"))
OSCD_ROOT = SHARED_DATA / "oscd"
OSCD_IMAGES = OSCD_ROOT / "Onera Satellite Change Detection dataset - Images"
OSCD_LABELS = OSCD_ROOT / "Onera Satellite Change Detection dataset - Train Labels"
STAC_SAMPLES = SHARED_DATA / "stac-samples"


@pytest.fixture(scope="session")
def oscd_root() -> Path:
    if not OSCD_IMAGES.is_dir():
        pytest.skip(f"OSCD data not found under {OSCD_ROOT}")
    return OSCD_ROOT


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
