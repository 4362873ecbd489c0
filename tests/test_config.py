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


def test_the_real_watch_list_loads_with_earth_search_and_both_aois(repo: Path) -> None:
    """configs/monitor.toml, which the README's cron line and the systemd unit run."""
    from changedet.monitor.watchlist import load_watchlist

    watch = load_watchlist(repo / "configs" / "monitor.toml")
    assert [w.aoi.id for w in watch.aois] == ["khojir", "modarres"]
    assert all(w.config.catalog.url == Config().catalog.url and w.end is None for w in watch.aois)
    assert watch.state == (repo / "monitor" / "state.sqlite").resolve()


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[change]\nz_treshold = 2.5\n")
    with pytest.raises(ConfigError, match="did you mean 'z_threshold'"):
        load_config(path)
    path.write_text("[chnage]\nz_threshold = 2.5\n")
    with pytest.raises(ConfigError, match="did you mean 'change'"):
        load_config(path)
    path.write_text('extend = "default.toml"\n')  # taken before the sections, and named
    with pytest.raises(ConfigError, match="did you mean 'extends'"):
        load_config(path)


def test_a_watch_list_given_to_run_points_to_monitor_run(repo: Path) -> None:
    with pytest.raises(ConfigError, match=r"belongs to a watch-list.*changedet monitor run"):
        load_config(repo / "configs" / "monitor.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[change]\nz_threshold = 'high'\n", "must be a number"),
        ("[time]\nstart = '2023-02-30'\n", "not a valid date"),
        ("[time]\nstart = 2024-01-01\nend = 2023-01-01\n", "before start"),
        ("[catalog]\nprovider = 'nasa'\n", "asset_keys"),
        ("[read]\nbands = 'red'\n", "must be a list"),
        ("this is = = not toml", "not valid TOML"),
        # CLI audit: each ran, and crashed, ran for minutes or found nothing
        ("[mask]\npersistent_cloud_fraction = 0.0\n", "persistent_cloud_fraction"),
        ("[change]\nlevel_block_px = 1\n", "levels away the buildings"),
        ("[track]\ngrowth_rim_px = 100\n", "growth_rim_px"),
        ("[time]\nend = 9999-12-31\n", "past what periods can count to"),
        ("[catalog.asset_keys.earth-search]\nblue = ''\n", "have no asset key"),
        (
            "[catalog.asset_keys.earth-search]\n"
            + "".join(f"{b} = '{b}'\n" for b in ("blue", "green", "red", "nir", "swir22", "scl"))
            + "swir16 = 'swir22'\n",
            "maps several bands",
        ),
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


def test_a_copied_config_names_its_extends_line(tmp_path: Path, repo: Path) -> None:
    """A demo config copied elsewhere keeps `extends = "default.toml"`: the error names the copy
    that says so and where that resolved, not a default.toml the user never passed."""
    copy = tmp_path / "mine" / "my-aoi.toml"
    copy.parent.mkdir()
    copy.write_text((repo / "configs" / "demo-khojir.toml").read_text())
    with pytest.raises(ConfigError) as info:
        load_config(copy)
    message = str(info.value)
    assert f"'{copy}' says extends = \"default.toml\"" in message
    assert f"resolves to '{copy.parent / 'default.toml'}'" in message
    assert "--config" not in message and "\n" not in message
    (copy.parent / "default.toml").mkdir()  # a folder of that name: not "does not exist"
    with pytest.raises(ConfigError, match="and is a folder, not a config file"):
        load_config(copy)


def test_fingerprint_tracks_effective_values() -> None:
    a, b = load_config(), load_config()
    assert a.fingerprint() == b.fingerprint()
    c = load_config(overrides={"change.z_threshold": 9.0})
    assert c.fingerprint() != a.fingerprint()


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/config.toml")


# Values of the right type that make no sense: each is refused at load time with one line naming
# the key. Before, negative/zero/NaN thresholds ran (NaN: 0 change pixels but 34 structures),
# n_classes = 0 and inf crashed mid-run, bands and baseline_periods failed only after reading.
BAD_VALUES = [
    ("[change]\nz_threshold = -1.0\n", "change.z_threshold"),
    ("[change]\nz_threshold = 0.0\n", "change.z_threshold"),
    ("[change]\nz_threshold = nan\n", "change.z_threshold"),
    ("[change]\nmin_excess = nan\n", "change.min_excess"),
    ("[change]\nrim_share = 1.0\n", "change.rim_share"),
    ("[change]\nrim_share = -0.1\n", "change.rim_share"),
    ("[track]\nsame_change = 1.5\n", "track.same_change"),
    ("[change]\ntolerance_px = -1\n", "change.tolerance_px"),
    ("[change]\ntolerance_fraction = 1.5\n", "change.tolerance_fraction"),
    # the opt-in narrowing, set where it would silently change nothing
    ("[change]\ntolerance_match = true\n", "tolerance_match = true changes nothing"),
    ("[change]\ntolerance_px = 0\ntolerance_fraction = 0.5\n", "tolerance_px = 0 turns off"),
    ("[change]\nz_low = 12.0\n", "change.z_low"),
    ("[change]\nstructure_z_low = 9.0\n", "change.structure_z_low"),
    ("[change]\nstructure_z_low = 0.0\n", "change.structure_z_low"),
    ("[change]\nn_classes = 0\n", "change.n_classes"),
    ("[change]\nmin_area_m2 = inf\n", "change.min_area_m2"),
    ("[change]\nmin_area_m2 = -5.0\n", "change.min_area_m2"),
    (
        "[kinds]\nroof_flattening = 0.01\nsoil_flattening = 0.5\n",
        "kinds.soil_flattening = 0.5 is not below",
    ),
    ("[read]\nbands = []\n", "read.bands is empty"),
    ("[read]\nbands = ['red', 'ultraviolet']\n", "unknown band"),
    ("[read]\nbands = ['red', 'red']\n", "more than once"),
    ("[read]\nbands = ['red', 'scl']\n", "'scl'"),
    ("[read]\nbands = ['coastal']\n", "lacks ['blue', 'green', 'red', 'nir', 'swir16']"),
    ("[read]\nbands = ['blue', 'green', 'red', 'nir']\n", "lacks ['swir16']: true colour"),
    ("[read]\nresampling = 'bicubic'\n", "read.resampling"),
    ("[read]\nmax_workers = 0\n", "read.max_workers"),
    ("[read]\ncache_max_gb = 0.0\n", "read.cache_max_gb"),
    (
        "[read]\ncache_max_gb = 1e300\n",
        "read.cache_max_gb = 1e+300 is out of range; use a value above 0 and at most 1e+06",
    ),
    ("[read]\ntimeout_s = 1e300\n", "read.timeout_s"),
    ("[read]\nmin_aoi_coverage = 1.5\n", "read.min_aoi_coverage"),
    ("[time]\nbaseline_periods = 0\n", "time.baseline_periods"),
    ("[time]\nperiod = 'fortnight'\n", "time.period"),
    ("[time]\nbaseline_min_clear = -0.1\n", "time.baseline_min_clear"),
    ("[catalog]\npage_size = 20000\n", "catalog.page_size"),
    ("[catalog]\npage_size = 0\n", "catalog.page_size"),
    ("[catalog]\nmax_cloud_cover = 120.0\n", "catalog.max_cloud_cover"),
    ("[catalog]\ntimeout_s = 0.0\n", "catalog.timeout_s"),
    ("[catalog]\nurl = 'ftp://example.org/stac'\n", "scheme 'ftp'"),
    ("[catalog]\nurl = 'no/such/catalog.json'\n", "does not exist"),
    ("[catalog]\nurl = '.'\n", "is a folder without catalog.json"),
    ("[compute]\ncluster = 'scheduler-host'\n", "compute.cluster 'scheduler-host' is not a Dask"),
    ("[compute]\ncluster = 'tcp://scheduler-host'\n", "write it as tcp://HOST:PORT"),
    ("[compute]\ncluster = 'tcp://127.0.0.1:99999'\n", "is not a Dask scheduler address"),
    ("[catalog]\nallowed_folders = ['no/such/folder']\n", "allowed_folders"),
    ("[catalog]\ncollection = ' '\n", "catalog.collection is empty"),
    ("[mask]\nscl_invalid = [3, 12]\n", "mask.scl_invalid"),
    ("[mask]\npersistent_cloud_fraction = nan\n", "mask.persistent_cloud_fraction"),
    ("[track]\nmin_persistence = 0\n", "track.min_persistence"),
    ("[track]\nmatch_iou = 0.0\n", "track.match_iou"),
    ("[berms]\nring_outer_m = 5.0\n", "ring_outer_m"),
    ("[berms]\nsectors = 0\n", "berms.sectors"),
    ("[output]\nmax_chips = -1\n", "output.max_chips"),
    ("[output]\ncoverage_warning = 1.5\n", "output.coverage_warning"),
    ("[aoi]\nmax_area_km2 = 0.0\n", "aoi.max_area_km2"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_VALUES)
def test_values_out_of_range_are_refused_at_load(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("config: ")


def test_edge_values_that_make_sense_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[catalog]\nmax_cloud_cover = 100.0\npage_size = 10000\nretries = 0\n"
        "[change]\nmin_area_m2 = 0.0\nn_classes = 1\nz_low = 6.0\n"
        "[read]\nbands = ['blue', 'green', 'red', 'nir', 'swir16']\nmin_aoi_clear_fraction = 0.0\n"
        "retries = 0\n"
        "[track]\nmatch_iou = 1.0\n[output]\nmax_chips = 0\n"
    )
    cfg = load_config(path)
    assert cfg.catalog.page_size == 10000 and cfg.read.bands[-1] == "swir16"


def test_allowed_folders_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "tiles").mkdir()
    path = tmp_path / "c.toml"
    path.write_text("[catalog]\nallowed_folders = ['tiles']\n")
    assert load_config(path).catalog.allowed_folders == (str(tmp_path / "tiles"),)


@pytest.mark.parametrize("key", ['structures = "any"', "roof_z_threshold = 6.0"])
def test_removed_keys_say_what_replaced_them(tmp_path: Path, key: str) -> None:
    path = tmp_path / "old.toml"
    path.write_text(f"[change]\n{key}\n")
    with pytest.raises(ConfigError, match=r"was removed: .*delete the line"):
        load_config(path)


def test_a_bom_an_editor_put_first_is_read(tmp_path: Path) -> None:
    """It gave "not valid TOML (Invalid statement at line 1, column 1)"."""
    path = tmp_path / "c.toml"
    path.write_text("\ufeff[change]\nz_threshold = 5.0\n", encoding="utf-8")
    assert load_config(path).change.z_threshold == 5.0
