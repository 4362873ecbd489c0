"""The public API of `import changedet` is small, exact and cheap to import."""

from __future__ import annotations

import subprocess
import sys

import changedet

EXPECTED = {
    "__version__",
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
    "load_aois",
    "load_config",
    "run_aoi",
}


def test_public_names_are_pinned() -> None:
    assert set(changedet.__all__) == EXPECTED
    assert set(changedet._WHERE) | {"__version__"} == EXPECTED  # every name has a home


def test_every_public_name_resolves_to_its_module_object() -> None:
    from changedet import aoi, config, errors, models, pipeline

    assert changedet.load_config is config.load_config
    assert changedet.load_aois is aoi.load_aois
    assert changedet.run_aoi is pipeline.run_aoi
    assert changedet.ChangedetError is errors.ChangedetError
    assert changedet.Structure is models.Structure
    for name in EXPECTED - {"__version__"}:
        assert getattr(changedet, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        changedet.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("an unknown attribute resolved")


def test_import_is_light() -> None:
    code = "import sys, changedet; print(sorted(m for m in ('numpy', 'rasterio', 'shapely') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
