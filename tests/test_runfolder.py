"""The life of out/<aoi>/ across runs: the analyst's files survive a rerun, the previous run stays
one folder away, and the leftovers of killed runs go, but only stale ones of the same AOI.

Kills are real: a child process writes outputs and SIGKILLs itself halfway, or holds a run's
temporary folder open while this process runs the same AOI beside it.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from changedet.config import OutputConfig
from changedet.errors import OutputError
from changedet.models import RunResult
from changedet.outputs.runfolder import PREVIOUS, remove_stale, run_folder
from changedet.outputs.write import write_run_outputs

FAST = OutputConfig(report=False, chips=False, imagery=False)


@pytest.fixture(scope="module")
def run_result(make_run_result: Callable[..., RunResult]) -> RunResult:
    return make_run_result()


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_a_plain_run_moves_the_monitors_alerts_away_with_the_run_they_belonged_to(
    run_result: RunResult, tmp_path: Path
) -> None:
    """A plain `changedet run` into a folder the monitor wrote left the monitor's alerts.geojson
    beside the new results, as if the analyst's; a monitor run, which keeps it, still keeps it."""
    out = tmp_path / "khojir-test"
    alerts = '{"type": "FeatureCollection", "features": []}\n'
    # The monitor: its run keeps alerts.geojson, written beside the outputs after the swap.
    write_run_outputs(run_result, out, config=FAST, companions=("alerts.geojson",))
    (out / "alerts.geojson").write_text(alerts)
    assert json.loads((out / "run.json").read_text())["companions"] == ["alerts.geojson"]
    write_run_outputs(run_result, out, config=FAST, companions=("alerts.geojson",))
    assert (out / "alerts.geojson").read_text() == alerts  # kept in place
    assert not (out / PREVIOUS / "alerts.geojson").exists()
    # A plain run: the alerts go to previous/ with the monitor's run.
    write_run_outputs(run_result, out, config=FAST)
    assert not (out / "alerts.geojson").exists()
    assert (out / PREVIOUS / "alerts.geojson").read_text() == alerts
    assert json.loads((out / "run.json").read_text())["companions"] == []
    # And the next run drops them with that run.
    write_run_outputs(run_result, out, config=FAST)
    assert not (out / "alerts.geojson").exists()
    assert not (out / PREVIOUS / "alerts.geojson").exists()


def test_what_a_killed_write_of_ours_left_is_not_kept_as_the_analysts(
    run_result: RunResult, tmp_path: Path
) -> None:
    """A monitor run killed while it wrote alerts.geojson beside its outputs left its temporary
    file, which every later run carried over as a file of the analyst's, for good."""
    out = tmp_path / "khojir-test"
    write_run_outputs(run_result, out, config=FAST, companions=("alerts.geojson",))
    (out / ".alerts.geojson.x7_k2q9a.part").write_text('{"type": "Feat')  # the kill's
    (out / ".run.json.0a1b2c3d.part").write_text("{")  # an output's, as fsio names it
    (out / ".notes.txt.abcdefgh.part").write_text("mine")  # a name of no file of ours
    (out / ".alerts.geojson.draft").write_text("mine too")
    write_run_outputs(run_result, out, config=FAST, companions=("alerts.geojson",))
    hidden = {p.name for p in out.rglob(".*")}
    assert hidden == {".notes.txt.abcdefgh.part", ".alerts.geojson.draft"}


def test_alerts_of_a_run_json_without_companions_are_the_monitors(
    run_result: RunResult, tmp_path: Path
) -> None:
    """Folders the monitor wrote before run.json listed its companions: alerts.geojson as the
    monitor writes it beside a run of changedet is the monitor's; any other file of that name,
    or one beside no run.json, is the analyst's and stays."""
    out = tmp_path / "khojir-test"
    write_run_outputs(run_result, out, config=FAST)
    manifest = json.loads((out / "run.json").read_text())
    manifest.pop("companions", None)
    (out / "run.json").write_text(json.dumps(manifest))
    alert = {"type": "Feature", "properties": {"key": "k1", "structure_id": "39N-1-2"}}
    monitors = json.dumps({"type": "FeatureCollection", "features": [alert]})
    (out / "alerts.geojson").write_text(monitors)
    write_run_outputs(run_result, out, config=FAST)
    assert (out / PREVIOUS / "alerts.geojson").read_text() == monitors
    assert not (out / "alerts.geojson").exists()
    for own in (  # the analyst's own, beside that run: not the monitor's shape, an empty layer
        '{"type": "FeatureCollection", "features": [{}]}',
        '{"type": "FeatureCollection", "name": "alerts", "features": []}',
    ):
        (out / "run.json").write_text(json.dumps(manifest))
        (out / "alerts.geojson").write_text(own)
        for _ in range(2):
            write_run_outputs(run_result, out, config=FAST)
        assert (out / "alerts.geojson").read_text() == own
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "alerts.geojson").write_text("mine")
    write_run_outputs(run_result, mine, config=FAST)
    assert (mine / "alerts.geojson").read_text() == "mine"


def test_a_rerun_keeps_foreign_files_and_the_previous_run(
    run_result: RunResult, tmp_path: Path
) -> None:
    out = tmp_path / "khojir-test"
    write_run_outputs(run_result, out, config=FAST)
    first = (out / "structures.geojson").read_text()
    first_files = _files(out)
    # The analyst's own files: beside the outputs, inside a folder of ours, a folder of theirs.
    (out / "notes.txt").write_text("checked s-0002 on Google Earth")
    (out / "my_project.qgz").write_bytes(b"not ours")
    (out / "chips").mkdir(exist_ok=True)
    (out / "chips" / "annotated.png").write_bytes(b"png")
    (out / "exports" / "empty").mkdir(parents=True)
    smaller = RunResult(**{**run_result.__dict__, "structures": run_result.structures[:1]})
    written = write_run_outputs(smaller, out, config=FAST)

    assert (out / "notes.txt").read_text() == "checked s-0002 on Google Earth"
    assert (out / "my_project.qgz").read_bytes() == b"not ours"
    assert (out / "chips" / "annotated.png").read_bytes() == b"png"
    assert (out / "exports" / "empty").is_dir()
    # The previous run, whole, one folder away; the new one in place.
    assert (out / PREVIOUS / "structures.geojson").read_text() == first
    assert _files(out / PREVIOUS) == first_files
    assert len(json.loads((out / "structures.geojson").read_text())["features"]) == 1
    # What the run reports as written is its own files, nothing of the analyst's.
    assert {p.relative_to(out).as_posix() for p in written} == set(
        json.loads((out / "run.json").read_text())["files"]
    )
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())

    # A third run: previous/ now holds the second run; the analyst's files are still there.
    (out / PREVIOUS / "my_comparison.txt").write_text("run 1 vs run 2")
    write_run_outputs(run_result, out, config=FAST)
    assert len(json.loads((out / PREVIOUS / "structures.geojson").read_text())["features"]) == 1
    assert (out / PREVIOUS / "my_comparison.txt").read_text() == "run 1 vs run 2"
    assert (out / "notes.txt").is_file() and (out / "chips" / "annotated.png").is_file()
    assert not (out / PREVIOUS / PREVIOUS).exists()


def test_a_foreign_file_named_like_an_output_moves_to_previous(
    run_result: RunResult, tmp_path: Path
) -> None:
    """A folder changedet never wrote (no run.json): all of it is the analyst's. A file whose
    name a new output takes is kept under previous/, never overwritten."""
    out = tmp_path / "khojir-test"
    out.mkdir()
    (out / "counts.csv").write_text("my own counts")
    (out / "readme.md").write_text("mine")
    write_run_outputs(run_result, out, config=FAST)
    assert (out / PREVIOUS / "counts.csv").read_text() == "my own counts"
    assert (out / "readme.md").read_text() == "mine"
    assert (out / "counts.csv").read_text().startswith("period,")


def test_a_failed_run_changes_nothing(run_result: RunResult, tmp_path: Path) -> None:
    out = tmp_path / "khojir-test"
    write_run_outputs(run_result, out, config=FAST)
    (out / "notes.txt").write_text("mine")
    before = {p: (out / p).read_bytes() for p in _files(out)}
    with pytest.raises(RuntimeError), run_folder(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("disk on fire")
    assert {p: (out / p).read_bytes() for p in _files(out)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["khojir-test"]


def test_a_refused_swap_keeps_the_earlier_outputs_and_leaves_no_folder_behind(
    run_result: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier OUT/<aoi_id> that cannot be moved aside (read-only, for a user who is not its
    owner) fails the swap: the earlier outputs stand and no empty `.old` folder stays."""
    import changedet.outputs.runfolder as runfolder

    out = tmp_path / "khojir-test"
    write_run_outputs(run_result, out, config=FAST)
    before = {p: (out / p).read_bytes() for p in _files(out)}
    rename = os.rename

    def refuse_moving_aside(src: object, dst: object) -> None:
        if Path(str(src)) == out:
            raise PermissionError(13, "Permission denied", str(src))
        rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(runfolder.os, "rename", refuse_moving_aside)
    with pytest.raises(PermissionError), run_folder(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert {p: (out / p).read_bytes() for p in _files(out)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["khojir-test"]


# ---------------------------------------------------------------------------------------------
# Leftovers of killed runs

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from changedet.outputs.runfolder import run_folder

    with run_folder(Path(sys.argv[1])) as tmp:
        (tmp / "busy.txt").write_text("writing")
        print(tmp, flush=True)
        time.sleep(600)
    """
)

KILL_MIDWAY = textwrap.dedent(
    """
    import os, pickle, signal, sys
    from pathlib import Path
    from changedet.config import OutputConfig
    from changedet.outputs.write import write_run_outputs

    result = pickle.loads(Path(sys.argv[1]).read_bytes())

    def progress(stage, done, total):
        if stage == "outputs" and done == 3:  # vectors, GeoPackage and rasters are on disk
            os.kill(os.getpid(), signal.SIGKILL)

    write_run_outputs(result, Path(sys.argv[2]), config=OutputConfig(report=False, chips=False),
                      progress=progress)
    """
)


def _parts(root: Path, aoi: str) -> list[Path]:
    return sorted(root.glob(f".{aoi}.*.part"))


def test_a_kill_during_the_write_leaves_a_part_folder_the_next_run_removes(
    run_result: RunResult, tmp_path: Path
) -> None:
    out = tmp_path / "khojir-test"
    write_run_outputs(run_result, out, config=FAST)
    before = {p: (out / p).read_bytes() for p in _files(out)}
    pickled = tmp_path / "result.pickle"
    pickled.write_bytes(pickle.dumps(run_result))
    proc = subprocess.run(
        [sys.executable, "-c", KILL_MIDWAY, str(pickled), str(out)],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    (left,) = _parts(tmp_path, "khojir-test")  # what the issue saw: a hidden half-written folder
    assert (left / "changedet.gpkg").is_file() and not (left / "run.json").exists()
    assert {p: (out / p).read_bytes() for p in _files(out)} == before  # outputs untouched
    write_run_outputs(run_result, out, config=FAST)
    assert _parts(tmp_path, "khojir-test") == []
    assert not any(tmp_path.glob(".khojir-test.*"))


def test_only_stale_part_folders_of_the_same_aoi_are_removed(
    run_result: RunResult, tmp_path: Path
) -> None:
    out = tmp_path / "khojir-test"
    stale = tmp_path / ".khojir-test.abcd1234.part"
    other = tmp_path / ".modarres.abcd1234.part"  # another AOI's leftover: not ours to judge
    lookalike = tmp_path / ".khojir-test-2.abcd1234.part"  # an AOI whose id starts like ours
    for folder in (stale, other, lookalike):
        folder.mkdir()
        (folder / "half.gpkg").write_bytes(b"x")
    live = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert live.stdout is not None
        held = Path(live.stdout.readline().strip())
        assert held.parent == tmp_path and held.name.endswith(".part")
        write_run_outputs(run_result, out, config=FAST)  # runs beside the live one
        assert held.is_dir() and (held / "busy.txt").is_file()  # a live run is left alone
        assert not stale.exists()
        assert other.is_dir() and lookalike.is_dir()
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait(timeout=30)
    # Killed, its folder is stale now: the next run of the AOI removes it.
    write_run_outputs(run_result, out, config=FAST)
    assert not held.exists()
    assert other.is_dir() and lookalike.is_dir()


def test_a_swap_killed_between_its_renames_is_undone(run_result: RunResult, tmp_path: Path) -> None:
    out = tmp_path / "khojir-test"
    write_run_outputs(run_result, out, config=FAST)
    (out / "notes.txt").write_text("mine")
    files = _files(out)
    # The state a kill leaves between "folder moved aside" and "new folder moved in".
    aside = tmp_path / ".khojir-test.zz99zz99.old"
    aside.mkdir()
    os.rename(out, aside / "folder")
    removed = remove_stale(tmp_path, "khojir-test")
    assert _files(out) == files and (out / "notes.txt").read_text() == "mine"
    assert removed == [aside] and not aside.exists()


def test_concurrent_runs_of_one_aoi_both_finish(run_result: RunResult, tmp_path: Path) -> None:
    """Two processes writing the same AOI at once: both swaps land, one after the other, and
    the analyst's file survives both."""
    out = tmp_path / "khojir-test"
    write_run_outputs(run_result, out, config=FAST)
    (out / "notes.txt").write_text("mine")
    pickled = tmp_path / "result.pickle"
    pickled.write_bytes(pickle.dumps(run_result))
    script = (
        "import pickle, sys; from pathlib import Path; from changedet.config import OutputConfig;"
        " from changedet.outputs.write import write_run_outputs;"
        " write_run_outputs(pickle.loads(Path(sys.argv[1]).read_bytes()), Path(sys.argv[2]),"
        " config=OutputConfig(report=False, chips=False, imagery=False))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(pickled), str(out)]) for _ in range(2)
    ]
    deadline = time.monotonic() + 300
    for p in procs:
        assert p.wait(timeout=max(1, deadline - time.monotonic())) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "run.json").is_file() and (out / PREVIOUS / "run.json").is_file()
    assert not any(tmp_path.glob(".khojir-test.*"))


def test_a_clash_made_during_the_run_is_named_not_the_temporary_folder(tmp_path: Path) -> None:
    """A file named previous/ put there while the run computed: the swap said '[Errno 17] File
    exists: .../.aoi.XXXXXXXX.part/previous', an internal path, and no fix."""
    out = tmp_path / "aoi"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"files": ["a.txt"]}))
    (out / "a.txt").write_text("the previous run's")
    with pytest.raises(OutputError) as info, run_folder(out) as tmp:
        (tmp / "a.txt").write_text("this run's")
        (out / PREVIOUS).write_text("the analyst's")
    assert str(info.value) == (
        f"'{out / PREVIOUS}' is a file where changedet keeps a folder of its outputs; move it "
        "away, then rerun"
    )
    assert (out / "a.txt").read_text() == "the previous run's"
    assert [p.name for p in tmp_path.iterdir()] == ["aoi"]


def test_every_top_level_output_of_a_run_is_known_to_the_clash_check(
    run_result: RunResult, tmp_path: Path
) -> None:
    """A folder of the analyst's at an output's name is refused before the run only if
    `RUN_FILES` knows that name."""
    from changedet.outputs.runfolder import RUN_FILES, RUN_FOLDERS

    out = tmp_path / "aoi"
    write_run_outputs(run_result, out, config=OutputConfig())
    write_run_outputs(run_result, out, config=OutputConfig(geopackage=False))
    top = {p.name for p in out.iterdir()}
    assert top <= RUN_FILES | RUN_FOLDERS, top - RUN_FILES - RUN_FOLDERS
