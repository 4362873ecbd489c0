"""Config loading: defaults match the shipped file, unknown keys rejected, overrides, fingerprint."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from changedet.config import Config, load_config
from changedet.errors import ConfigError


def test_shipped_default_equals_builtin_defaults(repo: Path) -> None:
    assert load_config(repo / "configs" / "default.toml") == Config()


def test_demo_configs_point_at_bundled_catalogs(repo: Path) -> None:
    for name in ("khojir", "modarres"):
        cfg = load_config(repo / "configs" / f"demo-{name}.toml")
        assert Path(cfg.catalog.url) == (repo / "sample_tiles" / name / "catalog.json").resolve()
        assert cfg.read.cache_dir == ""


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[change]\nz_treshold = 2.5\n")
    with pytest.raises(ConfigError, match="did you mean 'z_threshold'"):
        load_config(path)
    path.write_text("[chnage]\nz_threshold = 2.5\n")
    with pytest.raises(ConfigError, match="did you mean 'change'"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[change]\nz_threshold = 'high'\n", "must be a number"),
        ("[time]\nstart = '2023-02-30'\n", "not a valid date"),
        ("[time]\nstart = 2024-01-01\nend = 2023-01-01\n", "before start"),
        ("[catalog]\nprovider = 'nasa'\n", "asset_keys"),
        ("[read]\nbands = 'red'\n", "must be a list"),
        ("this is = = not toml", "not valid TOML"),
    ],
)
def test_bad_values_give_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_extends_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text("[change]\nz_threshold = 4.0\nmin_area_m2 = 800.0\n")
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[change]\nz_threshold = 5.0\n')
    cfg = load_config(tmp_path / "child.toml", {"time.start": date(2023, 1, 1)})
    assert cfg.change.z_threshold == 5.0 and cfg.change.min_area_m2 == 800.0
    assert cfg.time.start == date(2023, 1, 1)


def test_extends_loop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.toml")


def test_fingerprint_tracks_effective_values() -> None:
    a, b = load_config(), load_config()
    assert a.fingerprint() == b.fingerprint()
    c = load_config(overrides={"change.z_threshold": 9.0})
    assert c.fingerprint() != a.fingerprint()


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/config.toml")
