"""The CLI contract: one-line errors, exit codes, no tracebacks, nothing written outside --out.

Behaviour is driven in-process through click's CliRunner; a few tests start a real process, for
what only a process shows (the installed script, `python -m changedet`, the exit status).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from click.testing import Result
from shapely.geometry import box, mapping

from changedet import __version__
from changedet.aoi import grid_for, load_aois, reproject_geometry
from changedet.lab.fakes import scenes_for_stack
from changedet.models import AOI, Stack
from changedet.outputs.headline import km2
from changedet.outputs.runfolder import PREVIOUS
from changedet.outputs.write import write_run_outputs
from changedet.pipeline import PipelineIO

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo-khojir.toml"
KHOJIR = str(REPO / "aoi" / "khojir.geojson")


def changedet_process(*args: str, script: bool = False) -> subprocess.CompletedProcess[str]:
    """A real process: the installed `changedet` script, or `python -m changedet`."""
    command = (
        [str(Path(sys.executable).parent / "changedet")]
        if script
        else [sys.executable, "-m", "changedet"]
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "NO_COLOR": "1"}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )


def write_aoi(path: Path, aoi: AOI) -> Path:
    feature = {"type": "Feature", "properties": {"id": aoi.id}, "geometry": mapping(aoi.geometry)}
    path.write_text(json.dumps(feature))
    return path


@pytest.fixture
def paris(make_aoi: Callable[..., AOI]) -> Callable[[Path, str], Path]:
    """An AOI file over Paris, which no bundled sample scene covers."""
    return lambda path, aoi_id: write_aoi(path, make_aoi(2.33, 48.86, size_m=3000.0, aoi_id=aoi_id))


def assert_one_line_error(stderr: str, exit_code: int, code: int, *needles: str) -> None:
    assert exit_code == code, (exit_code, stderr)
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


# --- real processes ------------------------------------------------------------------------------


def test_installed_script_answers_version() -> None:
    proc = changedet_process("--version", script=True)
    assert proc.returncode == 0 and f"changedet, version {__version__}" in proc.stdout


def test_python_m_changedet_runs_the_cli() -> None:
    proc = changedet_process("--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout and "run" in proc.stdout


def test_a_config_error_exits_2_from_a_real_process(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[change]\nmin_area = 100\n")
    proc = changedet_process("run", KHOJIR, "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc.stderr, proc.returncode, 2, "unknown key 'min_area'")
    assert not (tmp_path / "o").exists()


# --- behaviour, in-process ----------------------------------------------------------------------


def test_version_and_help(cli: Callable[..., Result]) -> None:
    result = cli("--version")
    assert result.exit_code == 0 and f"changedet, version {__version__}" in result.stdout
    for command in (
        "run",
        "search",
        "synth",
        "eval",
        "synth sample",
        "synth oscd-series",
        "eval oscd",
        "eval series",
    ):
        result = cli(*command.split(), "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout, command


def test_missing_aoi_file(cli: Callable[..., Result], tmp_path: Path) -> None:
    result = cli(
        "run", str(tmp_path / "nope.geojson"), "--config", str(DEMO), "--out", str(tmp_path / "o")
    )
    assert_one_line_error(result.stderr, result.exit_code, 1, "not found")


def test_file_that_is_not_geojson(cli: Callable[..., Result], tmp_path: Path) -> None:
    bad = tmp_path / "notes.geojson"
    bad.write_text("hello, I am not GeoJSON")
    result = cli("run", str(bad), "--config", str(DEMO), "--out", str(tmp_path / "o"))
    assert_one_line_error(result.stderr, result.exit_code, 1, "could not be read")


def test_non_polygon_aoi(cli: Callable[..., Result], tmp_path: Path) -> None:
    point = tmp_path / "point.geojson"
    point.write_text(
        json.dumps(
            {
                "type": "Feature",
                "properties": {"id": "p"},
                "geometry": {"type": "Point", "coordinates": [51.6, 35.6]},
            }
        )
    )
    result = cli("run", str(point), "--config", str(DEMO), "--out", str(tmp_path / "o"))
    assert_one_line_error(result.stderr, result.exit_code, 1, "not a polygon")


def test_unknown_config_key(cli: Callable[..., Result], tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[change]\nmin_area = 100\n")
    result = cli("run", KHOJIR, "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert_one_line_error(
        result.stderr, result.exit_code, 2, "unknown key 'min_area'", "did you mean 'min_area_m2'"
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--start", "2023-02-30"], "not a valid date"),
        (["--start", "2024-06-01", "--end", "2023-06-01"], "before start"),
        (["--catalog", "/no/such/catalog.json"], "does not exist"),
        # a folder that holds no catalog document (here the AOI folder): refused before searching
        (["--catalog", str(REPO / "aoi")], "without catalog.json"),
        (["--cluster", "10.0.0.5"], "--cluster '10.0.0.5' is not a Dask scheduler address"),
        (["--start", "2024-06-01", "--end", "2024-06-30"], "comparison needs two"),
    ],
)
def test_bad_flags(
    cli: Callable[..., Result], tmp_path: Path, args: list[str], needle: str
) -> None:
    result = cli("run", KHOJIR, "--config", str(DEMO), "--out", str(tmp_path / "o"), *args)
    assert_one_line_error(result.stderr, result.exit_code, 2, needle)
    assert not (tmp_path / "o").exists()


def test_aoi_no_scene_covers_fails_that_aoi_only(
    cli: Callable[..., Result], tmp_path: Path, paris: Callable[[Path, str], Path]
) -> None:
    aoi = paris(tmp_path / "paris.geojson", "paris")
    result = cli("search", str(aoi), "--config", str(DEMO), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["scenes"] == []
    # For people: a sentence with what to try, not an empty table.
    result = cli("search", str(aoi), "--config", str(DEMO))
    assert result.exit_code == 0 and "┏" not in result.stdout
    assert "AOI paris: no scene from" in result.stdout and "widen the dates" in result.stdout
    result = cli("run", str(aoi), "--config", str(DEMO), "--out", str(tmp_path / "o"))
    assert_one_line_error(result.stderr, result.exit_code, 1, "paris", "no scene")
    assert not (tmp_path / "o" / "paris").exists()


def test_hostile_aoi_id_cannot_escape_out(
    cli: Callable[..., Result], tmp_path: Path, paris: Callable[[Path, str], Path]
) -> None:
    evil = paris(tmp_path / "evil.geojson", "../../escaped")
    out = tmp_path / "deep" / "out"
    result = cli("run", str(evil), "--config", str(DEMO), "--out", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()
    leaked = [
        p
        for p in tmp_path.rglob("*")
        if out not in p.parents
        and p != out
        and p.parent != tmp_path
        and p.parent != tmp_path / "deep"
    ]
    assert leaked == []


def test_one_failing_aoi_does_not_stop_the_others(
    cli: Callable[..., Result],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    paris: Callable[[Path, str], Path],
    make_aoi: Callable[..., AOI],
    make_stack: Callable[..., Stack],
    fake_io: Callable[..., PipelineIO],
) -> None:
    # The good AOI is served from memory (the real run on the sample tiles is test_demo's);
    # its outputs are written by the real writer.
    good = write_aoi(tmp_path / "good.geojson", make_aoi(aoi_id="good"))
    (aoi,) = load_aois(good)
    dates = [date(2023, m, d) for m in range(1, 8) for d in (3, 18)]
    stack = make_stack(grid_for(aoi), dates=dates, squares=[(date(2023, 4, 1), (20, 20, 6, 6))])
    io = replace(fake_io(stack), write=write_run_outputs)
    monkeypatch.setattr(PipelineIO, "default", staticmethod(lambda: io))
    config = tmp_path / "c.toml"
    config.write_text('[time]\nstart = "2023-01-01"\nend = "2023-07-31"\n')
    out = tmp_path / "o"
    result = cli(
        "run",
        str(paris(tmp_path / "paris.geojson", "paris")),
        str(tmp_path / "missing.geojson"),
        str(good),
        "--config",
        str(config),
        "--out",
        str(out),
        "--quiet",
    )
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr and "AOI 'paris'" in result.stderr
    assert "missing.geojson' not found" in result.stderr
    assert result.stdout.startswith("good: ") and "[SYNTHETIC data]" in result.stdout
    assert (out / "good" / "structures.geojson").is_file()
    assert not (out / "paris").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_an_aoi_half_outside_the_data_is_warned_about(
    cli: Callable[..., Result],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_aoi: Callable[..., AOI],
    make_stack: Callable[..., Stack],
    fake_io: Callable[..., PipelineIO],
) -> None:
    """The scenes cover only the western half of the AOI (the grid is cropped to them): the
    summary says how much was analysed, stderr warns, and so do run.json and the report."""
    aoi_path = write_aoi(tmp_path / "half.geojson", make_aoi(aoi_id="half", size_m=1200.0))
    (aoi,) = load_aois(aoi_path)
    grid = grid_for(aoi)
    dates = [date(2023, m, d) for m in range(1, 8) for d in (3, 18)]
    stack = make_stack(grid, dates=dates, squares=[(date(2023, 4, 1), (20, 20, 6, 6))])
    x0, y0, x1, y1 = grid.bounds
    west = reproject_geometry(box(x0, y0, (x0 + x1) / 2, y1), grid.crs, "EPSG:4326")
    scenes = tuple(replace(s, footprint=west) for s in scenes_for_stack(stack))
    io = replace(fake_io(stack, scenes=scenes), write=write_run_outputs)
    monkeypatch.setattr(PipelineIO, "default", staticmethod(lambda: io))
    config = tmp_path / "c.toml"
    config.write_text('[time]\nstart = "2023-01-01"\nend = "2023-07-31"\n')
    out = tmp_path / "o"
    result = cli("run", str(aoi_path), "--config", str(config), "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "half" / "run.json").read_text())
    cov = manifest["coverage"]
    assert 0.4 < cov["analysed_share"] < 0.6 and cov["partial"] is True
    assert cov["aoi_km2"] == pytest.approx(1.44, rel=0.01)  # the AOI's own area, not the grid's
    share = f"{100 * cov['analysed_share']:.1f} %"
    assert f"changedet: warning: only {share} of AOI 'half' could be analysed" in result.stderr
    assert f"Analysed {km2(cov['analysed_km2'])} of the 1.4 km² AOI ({share})" in result.stdout
    report = (out / "half" / "report.html").read_text(encoding="utf-8")
    assert 'id="coverage-warning"' in report and f"Only {share} of AOI" in report


def test_search_probe_reports_aoi_clear_sky_and_reasons(cli: Callable[..., Result]) -> None:
    result = cli("search", KHOJIR, "--config", str(DEMO), "--probe", "--json")
    assert result.exit_code == 0, result.stderr
    (report,) = json.loads(result.stdout)
    scenes = {s["id"]: s for s in report["scenes"]}
    assert len(scenes) >= 13
    assert all(0.0 <= s["aoi_clear_fraction"] <= 1.0 for s in scenes.values())
    cloudy = [s for s in scenes.values() if not s["used"]]
    assert cloudy and all("cloudy around the AOI" in s["reason"] for s in cloudy)
    assert all(s["aoi_clear_fraction"] < 0.2 for s in cloudy)
    # The reprocessed duplicate is listed as dropped, with the id it lost to.
    assert any(
        "duplicate of" in d["reason"] and d["id"].endswith("_0_L2A") for d in report["dropped"]
    )
    result = cli("search", KHOJIR, "--config", str(DEMO), "--probe")
    assert result.exit_code == 0 and "S2A_39SWV_20230612_0_L2A" in result.stdout
    assert "[changedet] probe:" in result.stderr  # progress, which --quiet silences
    quiet = cli("search", KHOJIR, "--config", str(DEMO), "--probe", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == result.stdout
    used = sum(s["used"] for s in scenes.values())
    listed = len(scenes) + sum(d["id"] not in scenes for d in report["dropped"])  # + duplicates
    assert listed > len(scenes)
    assert f"AOI khojir: {listed} scene(s) from " in result.stdout  # every row of the table
    assert f": {used} used, {listed - used} dropped" in result.stdout and used < len(scenes)
    # without --probe the clouds around the AOI were not looked at: said, as a run uses fewer
    result = cli("search", KHOJIR, "--config", str(DEMO))
    assert "used (not yet checked for cloud around the AOI: --probe does)" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("run", KHOJIR, "--config", "a.toml", "--config", "b.toml"),
        ("run", KHOJIR, "--out=o1", "--out", "o2"),
        ("monitor", "status", "--config", "a.toml", "--config=b.toml"),
        ("synth", "sample", "--out", "o1", "--out", "o2"),  # the lab's commands too
    ],
)
def test_an_option_given_twice_is_refused(
    cli: Callable[..., Result], tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Click keeps the last of two: the first file was dropped without a word."""
    result = cli(*args)
    name = "--config" if "--config" in args else "--out"
    assert_one_line_error(result.stderr, result.exit_code, 2, f"{name} is given twice")


def test_a_value_that_looks_like_an_option_is_a_value(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    state = tmp_path / "none.db"
    args = ("review", "k1", "39N-1-1", "--as", "confirmed", "--note", "--state")
    result = cli(*args, "--state", str(state))
    assert "given twice" not in result.stderr
    assert_one_line_error(result.stderr, result.exit_code, 2, "does not exist")


@pytest.mark.parametrize(
    ("table", "line", "needle"),
    [
        ("change", "z_threshold = nan", "change.z_threshold"),
        ("change", "z_threshold = -3.0", "change.z_threshold"),
        ("change", "n_classes = 0", "change.n_classes"),
        ("change", "min_area_m2 = inf", "change.min_area_m2"),
        ("read", "bands = []", "read.bands"),
        ("read", "bands = ['red', 'uv']", "unknown band"),
        ("time", "baseline_periods = 0", "time.baseline_periods"),
        ("catalog", "page_size = 20000", "catalog.page_size"),
    ],
)
def test_each_bad_config_value_exits_2_before_any_search(
    cli: Callable[..., Result], tmp_path: Path, table: str, line: str, needle: str
) -> None:
    # The catalog is a closed loopback port: had the run got as far as searching, it would
    # end with "did not answer" and exit 1.
    catalog = 'url = "http://127.0.0.1:9/"\nretries = 0\n'
    text = f"[catalog]\n{catalog}" + (line if table == "catalog" else f"[{table}]\n{line}")
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    result = cli("run", KHOJIR, "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert_one_line_error(result.stderr, result.exit_code, 2, needle)
    assert "did not answer" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_two_aoi_files_with_one_id_do_not_overwrite_each_other(
    cli: Callable[..., Result],
    tmp_path: Path,
    paris: Callable[[Path, str], Path],
    make_aoi: Callable[..., AOI],
) -> None:
    first = paris(tmp_path / "a.geojson", "site")
    second = write_aoi(tmp_path / "b.geojson", make_aoi(2.40, 48.80, aoi_id="site"))
    out = tmp_path / "o"
    result = cli("run", str(first), str(second), "--config", str(DEMO), "--out", str(out))
    assert_one_line_error(result.stderr, result.exit_code, 2, "'site'", "a.geojson", "b.geojson")
    assert not out.exists()


def test_an_out_folder_that_takes_no_files_exits_2_before_computing(
    cli: Callable[..., Result], tmp_path: Path, paris: Callable[[Path, str], Path]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    aoi = paris(tmp_path / "a.geojson", "paris")
    result = cli("run", str(aoi), "--config", str(DEMO), "--out", str(blocker / "out"))
    assert_one_line_error(result.stderr, result.exit_code, 2, "--out", "not a folder")
    assert "no scene" not in result.stderr  # refused before the search


def test_a_file_where_an_aoi_writes_its_folder_and_empty_options_exit_2_before_computing(
    cli: Callable[..., Result], tmp_path: Path, paris: Callable[[Path, str], Path]
) -> None:
    """OUT/<aoi_id> a file failed after the whole run (exit 1); `--start ""` fell back to the
    config's start, unsaid."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "paris").write_text("mine")
    aoi = paris(tmp_path / "a.geojson", "paris")
    result = cli("run", str(aoi), "--config", str(DEMO), "--out", str(out))
    assert_one_line_error(result.stderr, result.exit_code, 2, "is a file where AOI 'paris'")
    assert "no scene" not in result.stderr and (out / "paris").read_text() == "mine"
    for option in ("--start", "--end", "--catalog", "--collection", "--out", "--ids-from"):
        given = ("--out", str(out)) if option != "--out" else ()
        result = cli("run", str(aoi), "--config", str(DEMO), *given, option, "")
        assert_one_line_error(result.stderr, result.exit_code, 2, f"{option} is empty")


@pytest.mark.parametrize(
    ("clashing", "said"),
    [
        ("previous", "is a file where changedet keeps a folder"),
        ("run.json/", "is a folder where changedet writes a file"),
        ("previous/run.json/", "is a folder where changedet writes a file"),
    ],
)
def test_a_file_or_folder_where_a_run_puts_its_own_exits_2_before_computing(
    clashing: str,
    said: str,
    cli: Callable[..., Result],
    tmp_path: Path,
    paris: Callable[[Path, str], Path],
) -> None:
    """A file named `previous` or a folder named `run.json` in OUT/<aoi_id> failed after the
    whole analysis, naming the run's temporary folder: '[Errno 17] File exists:
    .../.paris.8hfr6p56.part/previous'."""
    folder = tmp_path / "o" / "paris"
    (folder / PREVIOUS).mkdir(parents=True)
    (folder / PREVIOUS / "notes.txt").write_text("mine")
    if clashing.startswith(PREVIOUS):  # the previous run's run.json goes to previous/run.json
        (folder / "run.json").write_text(json.dumps({"files": ["run.json"]}))
    target = folder / clashing.rstrip("/")
    if clashing.endswith("/"):
        target.unlink(missing_ok=True)
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    else:
        shutil.rmtree(target)
        target.write_text("mine")
    aoi = paris(tmp_path / "a.geojson", "paris")
    result = cli("run", str(aoi), "--config", str(DEMO), "--out", str(tmp_path / "o"))
    assert_one_line_error(result.stderr, result.exit_code, 2, f"'{target}' {said}", "move it")
    assert "no scene" not in result.stderr  # refused before the search


def test_a_quoted_tilde_out_is_the_home_folder_as_checked(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--out '~/x' was checked in the home folder and written to ./~/x."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = cli("run", KHOJIR, "--config", str(DEMO), "--out", "~/x", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "home" / "x" / "khojir" / "run.json").is_file()
    assert not (tmp_path / "~").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_folder_exits_2_before_computing(
    cli: Callable[..., Result], tmp_path: Path, paris: Callable[[Path, str], Path]
) -> None:
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    aoi = paris(tmp_path / "a.geojson", "paris")
    result = cli("run", str(aoi), "--config", str(DEMO), "--out", str(out))
    assert_one_line_error(result.stderr, result.exit_code, 2, "not writable")


def test_ctrl_c_while_the_cli_still_imports_is_one_line() -> None:
    """Ctrl-C in a run's first half second arrived while changedet.cli imported numpy, before
    any handler: a 24-49 line traceback ending in KeyboardInterrupt. Here the interrupt is
    raised by the import of numpy itself, as the console script imports the CLI."""
    script = (
        "import sys\n"
        "class Interrupt:\n"
        "    @staticmethod\n"
        "    def find_spec(name, path=None, target=None):\n"
        "        if name == 'numpy':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt)\n"
        "from changedet.cli import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "--version"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (130, "changedet: error: interrupted\n")


def test_an_interrupted_read_only_command_says_just_interrupted(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`monitor status` writes nothing: 'outputs already finished are kept, the unfinished AOI
    wrote nothing' made no sense there. A run still says it."""

    def ctrl_c(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("changedet.cli._watchlist", ctrl_c)
    result = cli("monitor", "status", "--config", str(tmp_path / "watch.toml"))
    assert (result.exit_code, result.stderr) == (130, "changedet: error: interrupted\n")
    monkeypatch.setattr("changedet.cli._load", ctrl_c)
    result = cli("run", KHOJIR, "--out", str(tmp_path / "o"))
    assert result.exit_code == 130
    assert result.stderr.startswith("changedet: error: interrupted; outputs already finished")

    # On a cluster the AOIs running there go on: "the unfinished AOI wrote nothing" was false.
    def ctrl_c_on_cluster(*args: object, **kwargs: object) -> None:
        from changedet.errors import CLUSTER_RUNNING

        exc = KeyboardInterrupt()
        exc.add_note(f"1 {CLUSTER_RUNNING}")
        raise exc

    monkeypatch.setattr("changedet.cli._load", ctrl_c_on_cluster)
    result = cli("run", KHOJIR, "--out", str(tmp_path / "o"))
    assert result.exit_code == 130 and "wrote nothing" not in result.stderr
    assert result.stderr == (
        "changedet: error: interrupted; outputs already finished are kept, AOIs not started "
        "cancelled; 1 AOI(s) already running on the Dask workers cannot be stopped there: they "
        "may still write their outputs\n"
    )


def test_an_interrupt_a_library_wrapped_is_still_an_interrupt(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while matplotlib was being imported came out as "unexpected RuntimeError: Error
    calling __set_name__ ..." and exit 1: the class-building machinery wraps what it catches."""
    from changedet.cli import _Terminated

    def wrapped(*args: object, **kwargs: object) -> None:
        try:
            raise _Terminated()
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__ on 'QuiverKey'") from exc

    monkeypatch.setattr("changedet.cli._load", wrapped)
    result = cli("run", KHOJIR, "--out", str(tmp_path / "o"))
    assert result.exit_code == 143, result.stderr
    assert result.stderr.startswith("changedet: error: terminated (SIGTERM); outputs already")

    def unrelated(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("changedet.cli._load", unrelated)
    assert cli("run", KHOJIR, "--out", str(tmp_path / "o")).exit_code == 1
    # Within an AOI's run, where one AOI's error would only fail that AOI, it ends the run too.
    monkeypatch.undo()
    monkeypatch.setattr("changedet.compute.run_aoi", wrapped)
    result = cli("run", KHOJIR, "--config", str(DEMO), "--out", str(tmp_path / "o"))
    assert result.exit_code == 143, result.stderr


@pytest.mark.parametrize(
    ("sent", "code", "said"),
    [
        (signal.SIGINT, 130, "changedet: error: interrupted"),
        (signal.SIGTERM, 143, "changedet: error: terminated (SIGTERM); outputs already finished"),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_an_interrupted_run_exits_with_one_line_and_leaves_outputs_untouched(
    tmp_path: Path, sent: int, code: int, said: str
) -> None:
    out = tmp_path / "o"
    (out / "khojir").mkdir(parents=True)
    (out / "khojir" / "previous.txt").write_text("outputs of an earlier run")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "NO_COLOR": "1"}
    # A shell that starts the tests in the background (`bash .ci/run &`) ignores SIGINT, and its
    # children inherit that: the run gets Ctrl-C's default handling back, as at a terminal.
    proc = subprocess.Popen(
        [sys.executable, "-m", "changedet", "run", KHOJIR, "--config", str(DEMO), "--out", str(out)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    try:
        for _ in range(200):  # bounded: the progress lines of search and read come first
            line = proc.stderr.readline()
            seen.append(line)
            if not line or "[changedet] read:" in line:
                break
        assert "[changedet] read:" in seen[-1], "".join(seen)
        proc.send_signal(sent)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    stderr = "".join(seen) + rest
    assert proc.returncode == code, stderr
    assert said in stderr
    assert "Aborted!" not in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in (out / "khojir").iterdir()) == ["previous.txt"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder


def test_rasterio_array_wrapping_warning_is_silenced_and_nothing_else() -> None:
    """rasterio's MEM-dataset warning escaped into the progress lines from the read pool's
    threads; the CLI and the pipeline ignore exactly that message, from any thread."""
    import threading
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from changedet.errors import silence_library_noise

    def warn_both() -> None:
        warnings.warn(
            "Dataset has no geotransform, gcps, or rpcs. The identity matrix will be returned.",
            NotGeoreferencedWarning,
            stacklevel=1,
        )
        warnings.warn("a warning about the analyst's data", UserWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()
        thread = threading.Thread(target=warn_both)
        thread.start()
        thread.join()
    assert [str(w.message) for w in caught] == ["a warning about the analyst's data"]


def _on_a_terminal(args: list[str], *, columns: int, rows: int) -> bytes:
    """Everything a real Python process (`python ARGS...`) writes to a pseudo-terminal (stdout and
    stderr both are the terminal, as for an analyst at a shell), until it exits."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    # No PYTHONWARNINGS either: a stray warning shows on this screen as it would on the analyst's.
    quiet = ("NO_COLOR", "FORCE_COLOR", "PYTHONWARNINGS")
    env = {k: v for k, v in os.environ.items() if k not in quiet}
    env.update(TERM="xterm-256color")
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    data = bytearray()
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(master)
        proc.wait(timeout=60)
    assert proc.returncode == 0, bytes(data).decode(errors="replace")[-2000:]
    return bytes(data)


def test_on_a_terminal_the_headline_stays_on_screen_and_the_bars_go(tmp_path: Path) -> None:
    """The headline printed past the live bars was erased by their next refresh (they move the
    cursor up over their own lines). The screen a terminal shows after the demo run must hold
    the whole headline and warning, and no bar."""
    pyte = pytest.importorskip("pyte")
    out = tmp_path / "out"
    args = ["-m", "changedet", "run", KHOJIR, "--config", str(DEMO), "--out", str(out)]
    data = _on_a_terminal(args, columns=400, rows=60)
    assert b"\x1b[" in data  # rich drew live bars: this was a terminal to it
    screen = pyte.Screen(400, 60)  # wide: no line wraps
    pyte.ByteStream(screen).feed(data)
    lines = [line.rstrip() for line in screen.display if line.strip()]
    run = json.loads((out / "khojir" / "run.json").read_text())
    headline = run["headline"]
    assert lines[0].startswith(f"khojir: {run['results']['n_confirmed']} confirmed new structure")
    assert lines[1 : 1 + len(headline["text"])] == [f"  {text}" for text in headline["text"]]
    warning = f"changedet: warning: {headline['warnings'][0]}"
    assert lines[-1] == warning
    assert not any("━" in line for line in lines)


_LOG_UNDER_BARS = """
import logging, time
from changedet.cli import _Renderer
logging.basicConfig(level=logging.WARNING, format="%(message)s")
with _Renderer(quiet=False) as progress:
    for done in range(11):
        progress("read", done, 10)
        if done == 5:
            logging.getLogger("changedet.read.cache").warning("pixel cache: discarded entry x")
        time.sleep(0.05)
logging.getLogger("changedet").warning("after the bars")
"""


def test_on_a_terminal_a_log_line_under_the_live_bars_stays_on_screen() -> None:
    """A library warning logged while the bars are live (the pixel cache's) went to the stderr
    the log handler was made with, and the bars' next refresh erased it."""
    pyte = pytest.importorskip("pyte")
    data = _on_a_terminal(["-c", _LOG_UNDER_BARS], columns=120, rows=30)
    screen = pyte.Screen(120, 30)
    pyte.ByteStream(screen).feed(data)
    lines = [line.rstrip() for line in screen.display if line.strip()]
    assert lines == ["pixel cache: discarded entry x", "after the bars"]


def test_piped_progress_is_a_line_per_quarter_and_a_stage_of_unknown_size_has_started(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from changedet.cli import _Renderer

    with _Renderer(quiet=False) as progress:  # captured: not a terminal, so lines
        progress("search", 0, 0)  # the first page is not in yet
        progress("search", 17, 17)
        for done in range(9):
            progress("read", done, 8)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "[changedet] search: started",
        "[changedet] search: 17/17",
        *[f"[changedet] read: {n}/8" for n in (0, 2, 4, 6, 8)],
    ]


def test_every_command_with_progress_can_be_quiet(
    cli: Callable[..., Result], tmp_path: Path, make_aoi: Callable[..., AOI]
) -> None:
    for command in ("run", "monitor run", "synth sample", "synth oscd-series", "eval oscd", "eval series"):  # fmt: skip
        assert "--quiet" in cli(*command.split(), "--help").stdout, command
    aoi = write_aoi(tmp_path / "small.geojson", make_aoi(2.33, 48.86, size_m=600.0, aoi_id="s"))
    loud = cli("synth", "sample", "--aoi", str(aoi), "--out", str(tmp_path / "a"))
    quiet = cli("synth", "sample", "--aoi", str(aoi), "--out", str(tmp_path / "b"), "--quiet")
    assert loud.exit_code == quiet.exit_code == 0, loud.stderr + quiet.stderr
    assert "[changedet] synth s:" in loud.stderr and quiet.stderr == ""
    assert quiet.stdout.replace("/b/", "/a/") == loud.stdout  # the outcome is still said


def test_a_cluster_without_dask_installed_says_how_to_install_it(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed: ImportError
    aoi, config = REPO / "aoi" / "khojir.geojson", REPO / "configs" / "demo-khojir.toml"
    result = cli(
        "run", str(aoi), "--config", str(config), "--out", str(tmp_path), "--quiet",
        "--cluster", "tcp://127.0.0.1:1",
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "pip install 'changedet[dask]'" in result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr


@pytest.mark.parametrize("command", ["run", "search"])
def test_an_aoi_file_given_twice_is_refused_before_anything_runs(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Run twice into one folder, the second run would push the first's outputs out."""
    shutil.copy(REPO / "aoi" / "khojir.geojson", tmp_path / "k.geojson")
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs" / "demo-khojir.toml")
    out = ["--out", str(tmp_path / "out"), "--quiet"] if command == "run" else []
    result = cli(command, "k.geojson", "./k.geojson", "--config", config, *out)
    assert result.exit_code == 2, result.stderr
    assert result.stderr == (
        "changedet: error: AOI file './k.geojson' is given twice (as 'k.geojson' too); "
        "give each file once\n"
    )
    assert not (tmp_path / "out").exists()


def test_read_only_earlier_outputs_are_refused_before_the_run(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run moves OUT/<aoi_id> aside when its new outputs are ready; a folder the user may not
    change (os.access stands in for a user who is not its owner: the tests run as root) is
    refused at once, naming it, and nothing is read."""
    import changedet.cli as cli_module

    earlier = tmp_path / "khojir"
    earlier.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        cli_module.os, "access", lambda p, mode: Path(p) != earlier and real_access(p, mode)
    )
    aoi, config = REPO / "aoi" / "khojir.geojson", REPO / "configs" / "demo-khojir.toml"
    result = cli("run", str(aoi), "--config", str(config), "--out", str(tmp_path), "--quiet")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"'{earlier}' are read-only" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["khojir"]  # nothing else was written


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run"], "Missing argument 'AOI...'; see 'changedet run --help'"),
        (["run", "a.geojson", "--bogus"], "Did you mean '--out'? See 'changedet run --help'"),
        (["monitor", "run"], "Missing option '--config'; see 'changedet monitor run --help'"),
        (["review", "k", "1", "--as", "maybe"], "'maybe' is not one of"),
    ],
)
def test_click_usage_errors_are_one_line_too(
    cli: Callable[..., Result], args: list[str], says: str
) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("changedet: error: ")
    assert says in result.stderr and "Usage:" not in result.stderr + result.stdout


def test_a_usage_error_names_the_command_when_run_as_a_module(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "changedet", "review", "k", "1", "--as", "maybe"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.rstrip().endswith("; see 'changedet review --help'"), done.stderr


def test_logged_warnings_read_as_every_other_warning_and_library_lines_stay_off() -> None:
    """The pixel cache logs its warnings; on the CLI's stderr they read "changedet: warning:",
    and GDAL's and urllib3's own lines ("HTTP error code: 500 ... Retrying") do not show."""
    import logging

    from changedet.cli import _LIBRARY_LINES, _Prefixed

    def record(name: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "pixel cache: %s", ("x",), None)

    assert (
        _Prefixed().format(record("changedet.read.cache")) == "changedet: warning: pixel cache: x"
    )
    assert _Prefixed().format(record("changedet.read.cache", logging.INFO)) == "pixel cache: x"
    assert _Prefixed().format(record("distributed")) == "pixel cache: x"
    assert not _LIBRARY_LINES.filter(record("rasterio._env"))
    assert not _LIBRARY_LINES.filter(record("urllib3.connectionpool"))
    assert _LIBRARY_LINES.filter(record("changedet.read.cache"))


def test_the_search_table_shows_brackets_as_written() -> None:
    """Rich read "[catalog] allowed_folders" in a reason as markup and dropped it."""
    from types import SimpleNamespace

    from rich.console import Console

    from changedet.cli import _scene_table

    report = SimpleNamespace(aoi_id="site", source="items.json")
    reason = "asset outside the catalog's folder (list it under [catalog] allowed_folders)"
    row = ("S2A_1", "2024-01-01", "39SWV", "5.0", "-", reason)
    console = Console(record=True, width=300)
    console.print(_scene_table(report, [row], probed=True))
    assert "under [catalog] allowed_folders" in console.export_text()


def test_search_lists_the_readable_aoi_files_and_fails_the_others(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    """As `run` does: a missing AOI file fails its AOIs (exit 1); the others are searched."""
    missing = tmp_path / "nope.geojson"
    result = cli("search", str(missing), KHOJIR, "--config", str(DEMO), "--json")
    assert result.exit_code == 1
    assert [r["aoi"] for r in json.loads(result.stdout)] == ["khojir"]
    assert f"changedet: error: AOI file '{missing}' not found" in result.stderr


def test_search_warns_of_an_aoi_across_its_zone_edge(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    """The warning moved into a run's headline; search, which writes none, said nothing."""
    from shapely.geometry import box, mapping

    aoi = tmp_path / "edge.geojson"
    feature = {
        "type": "Feature",
        "properties": {"id": "edge"},
        "geometry": mapping(box(53.9, 35.6, 54.05, 35.7)),
    }
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    result = cli("search", str(aoi), "--config", str(DEMO))
    assert (
        "changedet: warning: AOI 'edge' crosses the edge of UTM zone 39 at 54° E" in result.stderr
    )


def test_run_id_runs_only_the_aois_it_names(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of many sites ran them all: --id picks some, and an id no file holds is refused
    before anything is searched, naming the ids they hold."""
    from shapely.geometry import box, mapping

    sites = tmp_path / "sites.geojson"
    features = [
        {"type": "Feature", "properties": {"id": name}, "geometry": mapping(box(x, 35.6, x + 0.01, 35.61))}
        for name, x in (("north", 51.60), ("depot", 51.62), ("south", 51.64))
    ]  # fmt: skip
    sites.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    ran: list[list[str]] = []

    def run_aois(aois: list[AOI], *args: object, **kwargs: object) -> list[object]:
        ran.append([a.id for a in aois])
        return []

    monkeypatch.setattr("changedet.compute.run_aois", run_aois)
    out = str(tmp_path / "o")
    result = cli(
        "run", str(sites), "--config", str(DEMO), "--out", out, "--id", "south", "--id", "north"
    )
    assert result.exit_code == 0, result.stderr
    assert ran == [["north", "south"]]  # the file's order
    result = cli("run", str(sites), "--config", str(DEMO), "--out", out, "--id", "nort")
    assert result.exit_code == 2 and len(ran) == 1
    assert result.stderr == (
        "changedet: error: --id nort: no AOI of the given files has this id (they hold: north, "
        "depot, south); pass one of those\n"
    )


def test_the_import_time_interrupt_hook_is_gone_once_the_cli_runs(
    cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook that makes Ctrl-C during the imports one line exits with os._exit: left in
    place, any later uncaught interrupt of the process skipped its atexit handlers."""
    import sys

    import changedet.cli as module

    monkeypatch.setattr(sys, "excepthook", module._interrupted_on_start)  # as the import leaves it
    result = cli("run", "/nonexistent.geojson", "--out", "/nonexistent-out")
    assert result.exit_code in (1, 2)
    assert sys.excepthook is sys.__excepthook__
