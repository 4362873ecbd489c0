"""changedet: find new structures and earthworks in Sentinel-2 time series over an AOI.

The public API is small on purpose:

    from changedet import load_config, load_aois, run_aoi
    config = load_config("configs/demo-khojir.toml")
    for aoi in load_aois("aoi/khojir.geojson", config.aoi):
        print(run_aoi(aoi, config, out_root=Path("out")).describe())

plus the data objects that travel between the stages (`changedet.models`) and the root of every
error changedet raises on purpose (`ChangedetError`, with an `exit_code`). Everything else is
reachable through the stage packages (`catalog`, `read`, `core`, `outputs`), see ARCHITECTURE.md.
Names are loaded on first use, so `import changedet` stays light.
"""

from __future__ import annotations

import time
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

# When this process loaded changedet: a file changed after it is code this process does not
# run (`compute.code_identity`, asked of Dask workers).
IMPORTED_AT = time.time()

try:
    __version__ = version("changedet")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_MODELS = (
    "AOI",
    "Berm",
    "ChangeMap",
    "ChangeObject",
    "Composite",
    "Grid",
    "Period",
    "PeriodCount",
    "RunResult",
    "Scene",
    "Stack",
    "Structure",
)
_WHERE: dict[str, str] = {
    "load_config": "changedet.config",
    "Config": "changedet.config",
    "load_aois": "changedet.aoi",
    "run_aoi": "changedet.pipeline",
    "RunSummary": "changedet.pipeline",
    "ChangedetError": "changedet.errors",
    **{name: "changedet.models" for name in _MODELS},
}

__all__ = [
    "AOI",
    "Berm",
    "ChangeMap",
    "ChangeObject",
    "ChangedetError",
    "Composite",
    "Config",
    "Grid",
    "Period",
    "PeriodCount",
    "RunResult",
    "RunSummary",
    "Scene",
    "Stack",
    "Structure",
    "__version__",
    "load_aois",
    "load_config",
    "run_aoi",
]

if TYPE_CHECKING:
    from changedet.aoi import load_aois
    from changedet.config import Config, load_config
    from changedet.errors import ChangedetError
    from changedet.models import (
        AOI,
        Berm,
        ChangeMap,
        ChangeObject,
        Composite,
        Grid,
        Period,
        PeriodCount,
        RunResult,
        Scene,
        Stack,
        Structure,
    )
    from changedet.pipeline import RunSummary, run_aoi


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'changedet' has no attribute '{name}'")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
