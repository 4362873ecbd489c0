"""The monitoring job: watch-list, scene planning, ledger decisions (pure), and in-process runs
over a growing local catalog: reprocessing, reviews, outputs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from monitorkit import (
    DEMO_CONFIG,
    REPROCESSED,
    SAMPLE,
    Scenario,
    box_polygon,
    ledger_dump,
    ledger_outcome,
    make_scenario,
    monitor_cli,
    until,
)

from changedet.config import load_config
from changedet.errors import ConfigError, UsageError
from changedet.models import Scene, SkippedScene
from changedet.monitor.alerts import describe_alert
from changedet.monitor.decide import alert_key, ledger_changes
from changedet.monitor.run import run_watchlist
from changedet.monitor.scenes import plan_scenes, scene_record, search_start
from changedet.monitor.state import SCHEMA_VERSION, SceneRow, State, StructureRow, memo_folder
from changedet.monitor.watchlist import load_watchlist

END = datetime(2024, 7, 1, tzinfo=UTC)
GROWN_FIRST, GROWN_SECOND = "2024-02-01", "2024-02-15"


# --- watch-list -----------------------------------------------------------------------------------


def test_watchlist_refuses_a_misspelt_key_with_a_suggestion(tmp_path: Path) -> None:
    scenario = make_scenario(tmp_path)
    path = scenario.watchlist(extra="lookback_dys = 3")
    with pytest.raises(ConfigError, match="did you mean 'lookback_days'"):
        load_watchlist(path)
    path.write_text(path.read_text().replace("lookback_dys = 3", "").replace("start =", "strat ="))
    with pytest.raises(ConfigError, match="did you mean 'start'"):
        load_watchlist(path)
    # A misspelt key among an entry's overrides names that entry, not only the config key.
    scenario.overrides["change.z_treshold"] = 3.0
    with pytest.raises(ConfigError, match=r"watch-list: \[\[watch\]\] #1: .*'z_treshold'"):
        load_watchlist(scenario.watchlist())


def test_watchlist_refuses_what_it_would_set_aside_or_misread(tmp_path: Path) -> None:
    """An override of time.start or time.end was accepted, then replaced by the watch's own
    start and end without a word; a TOML date-time for a date ended as an unexpected TypeError."""
    scenario = make_scenario(tmp_path)
    scenario.overrides["time.start"] = "2023-09-01"
    with pytest.raises(ConfigError, match=r"#1 overrides 'time.start'; give the watch's start"):
        load_watchlist(scenario.watchlist())
    del scenario.overrides["time.start"]
    path = scenario.watchlist()
    path.write_text(
        path.read_text().replace('start = "2023-06-01"', "start = 2023-06-01T00:00:00Z")
    )
    with pytest.raises(ConfigError, match=r"#1 start: .* is a date-time; use a date YYYY-MM-DD"):
        load_watchlist(path)
    path.write_text(
        path.read_text().replace("start = 2023-06-01T00:00:00Z", 'start = "2024-07-15"')
    )
    with pytest.raises(ConfigError, match=r"#1 end 2024-06-30 is before start 2024-07-15; set an"):
        load_watchlist(path)
    config = tmp_path / "c.toml"
    config.write_text("[time]\nend = 2024-06-30T12:00:00\n")
    with pytest.raises(ConfigError, match=r"time.end must be a date YYYY-MM-DD"):
        load_config(config)


def test_watchlist_gives_each_aoi_its_config_start_end_and_overrides(tmp_path: Path) -> None:
    scenario = make_scenario(tmp_path)
    watch = load_watchlist(scenario.watchlist(extra='[webhook]\nurl = "http://127.0.0.1:9/x"'))
    (watched,) = watch.aois
    assert watched.aoi.id == "k1"
    assert str(watched.config.time.start) == "2023-06-01"
    assert str(watched.end) == "2024-06-30"
    assert watched.config.catalog.url == str(scenario.catalog)
    assert watched.config.output.report is False  # from [watch.overrides]
    assert watch.state == scenario.state and watch.webhook is not None
    assert watch.smtp is None and watch.keep_composites and watch.keep_dates
    lean = load_watchlist(scenario.watchlist(extra="keep_composites = false\nkeep_dates = false"))
    assert not lean.keep_composites and not lean.keep_dates
    with pytest.raises(ConfigError, match="keep_composites must be bool"):
        load_watchlist(scenario.watchlist(extra='keep_composites = "no"'))
    assert watch.with_state(tmp_path / "other.db").state == tmp_path / "other.db"
    assert watch.cluster == "" and watch.with_cluster(None) is watch
    on = load_watchlist(scenario.watchlist(extra='cluster = "tcp://127.0.0.1:8786"'))
    assert on.cluster == "tcp://127.0.0.1:8786"
    assert watch.with_cluster("tcp://10.0.0.5:8786").cluster == "tcp://10.0.0.5:8786"
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        load_watchlist(scenario.watchlist(extra='cluster = "10.0.0.5:8786"'))


def test_watchlist_refuses_a_bad_webhook_and_a_repeated_aoi(tmp_path: Path) -> None:
    scenario = make_scenario(tmp_path)
    with pytest.raises(ConfigError, match="http"):
        load_watchlist(scenario.watchlist(extra='[webhook]\nurl = "ftp://x"'))
    with pytest.raises(ConfigError, match="watched twice"):
        load_watchlist(scenario.watchlist(aois=("k1", "k1")))
    # Accepted, it failed every run later ("unexpected UnicodeEncodeError").
    accented = '[webhook]\nurl = "http://127.0.0.1:8099/hóok?token=é"'
    with pytest.raises(ConfigError) as bad:
        load_watchlist(scenario.watchlist(extra=accented))
    assert str(bad.value) == (
        "watch-list: [webhook] url 'http://127.0.0.1:8099/hóok?token=é' has characters a URL "
        "cannot carry; percent-encode them: url = 'http://127.0.0.1:8099/h%C3%B3ok?token=%C3%A9'"
    )
    # A host is not percent-encoded (that resolves nowhere) but written in punycode.
    idn = '[webhook]\nurl = "https://Bücher.example/hook"'
    with pytest.raises(ConfigError, match=r"url = 'https://xn--bcher-kva\.example/hook'$"):
        load_watchlist(scenario.watchlist(extra=idn))
    # A channel down must not hold the job for hours: bounded retries and backoff.
    with pytest.raises(ConfigError, match=r"\[webhook\] retries must be within 0..10"):
        load_watchlist(scenario.watchlist(extra='[webhook]\nurl = "http://x"\nretries = 100000'))
    with pytest.raises(ConfigError, match=r"backoff_s must be within 0..60 s"):
        load_watchlist(scenario.watchlist(extra='[webhook]\nurl = "http://x"\nbackoff_s = 600'))
    path = scenario.watchlist()
    path.write_text(path.read_text().replace('start = "2023-06-01"', 'start = "2023-13-01"'))
    with pytest.raises(ConfigError, match=r"^watch-list: \[\[watch\]\] #1 start: '2023-13-01'"):
        load_watchlist(path)
    smtp = '[smtp]\nhost = "localhost"\nfrom = "a@b"\nto = ["c@d"]\nport = 99999'
    with pytest.raises(ConfigError, match=r"\[smtp\] port must be within 0..65535"):
        load_watchlist(scenario.watchlist(extra=smtp))


def test_watch_overrides_may_be_written_as_a_table_per_section(tmp_path: Path) -> None:
    """[watch.overrides.change] z_threshold = 12 is change.z_threshold (it gave "unknown key ''")."""
    scenario = make_scenario(tmp_path)
    path = scenario.watchlist()
    path.write_text(path.read_text() + "\n[watch.overrides.change]\nz_threshold = 12.0\n")
    (watched,) = load_watchlist(path).aois
    assert watched.config.change.z_threshold == 12.0
    scenario.overrides["change.z_threshold"] = 9.0  # and once more, dotted: which one?
    path = scenario.watchlist()
    path.write_text(path.read_text() + "\n[watch.overrides.change]\nz_threshold = 12.0\n")
    with pytest.raises(ConfigError, match=r"override 'change.z_threshold' is given twice"):
        load_watchlist(path)


def test_a_state_path_at_a_file_that_is_no_database_is_a_usage_error(tmp_path: Path) -> None:
    scenario = make_scenario(tmp_path)
    scenario.state.parent.mkdir(parents=True, exist_ok=True)
    scenario.state.write_text("notes, not a database\n")
    path = scenario.watchlist()
    done = monitor_cli("monitor", "status", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "file is not a database" in line and "point the watch-list's state" in line
    assert scenario.state.read_text() == "notes, not a database\n"


def test_a_state_file_where_runs_replace_folders_is_a_config_error(tmp_path: Path) -> None:
    """`state` = `out` (or inside an AOI's output folder) computed, then failed with exit 1."""
    scenario = make_scenario(tmp_path)
    text = scenario.watchlist().read_text()
    for state in (scenario.out, scenario.out / "k1" / "state.sqlite"):
        path = tmp_path / "clash.toml"
        path.write_text(text.replace(f'state = "{scenario.state}"', f'state = "{state}"'))
        with pytest.raises(ConfigError, match=r"state '.*' (is the out folder|lies in AOI 'k1')"):
            load_watchlist(path)
    # --state is held to the same rule (it ran with the database inside out/k1), resolved:
    # through a symlink it is in, through ".." it is not
    watch = load_watchlist(scenario.watchlist())
    with pytest.raises(ConfigError, match=r"--state '.*' lies in AOI 'k1'"):
        watch.with_state(scenario.out / "k1" / "st.sqlite")
    (scenario.out / "k1").mkdir(parents=True)
    (tmp_path / "link").symlink_to(scenario.out / "k1")
    with pytest.raises(ConfigError, match=r"lies in AOI 'k1'"):
        watch.with_state(tmp_path / "link" / "st.sqlite")
    beside = watch.with_state(scenario.out / "k1" / ".." / "st.sqlite").state
    assert beside == (scenario.out / "st.sqlite").resolve()
    # where the monitor computes is the watch-list's to say, not a watch's (it was ignored)
    scenario.overrides["compute.cluster"] = "tcp://127.0.0.1:1"
    with pytest.raises(ConfigError, match=r"overrides 'compute.cluster'; where the monitor"):
        load_watchlist(scenario.watchlist())
    del scenario.overrides["compute.cluster"]
    path.write_text("[compute]\nworkers = 2\n" + text)
    with pytest.raises(ConfigError, match=r"\[compute\] belongs to a run config"):
        load_watchlist(path)
    # a run config given as the watch-list says what it is ("unknown key 'extends'")
    with pytest.raises(ConfigError, match=r"is a run config, not a watch-list"):
        load_watchlist(DEMO_CONFIG)
    # and a BOM an editor put first is no TOML error
    path.write_text("\ufeff" + text, encoding="utf-8")
    assert [w.aoi.id for w in load_watchlist(path).aois] == ["k1"]
    # nor is a timeout of 0, which failed every delivery as "cannot reach the server", taken
    path.write_text(text + '\n[webhook]\nurl = "http://127.0.0.1:9/x"\ntimeout_s = 0\n')
    with pytest.raises(ConfigError, match=r"\[webhook\] timeout_s must be above 0"):
        load_watchlist(path)


def test_a_state_database_with_damaged_pages_is_refused_in_one_line(tmp_path: Path) -> None:
    """Pages overwritten mid-file: a run with nothing new exited 0 on it, and status said
    "unexpected DatabaseError … report it"."""
    import os

    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    _run(scenario)
    size = scenario.state.stat().st_size
    assert size > 12 * 4096
    with scenario.state.open("r+b") as f:
        f.seek(5 * 4096)
        f.write(os.urandom(3 * 4096))
    done = monitor_cli("monitor", "run", "--config", str(scenario.watchlist()), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "cannot be used" in line and "restore it from a backup" in line, line
    # status and review read no more than they need: a damaged page met there is one line too
    import sqlite3

    from changedet.errors import machine_trouble

    said = machine_trouble(sqlite3.DatabaseError("database disk image is malformed"))
    assert said is not None and said.startswith("the monitor's state database is damaged")


def test_a_now_in_the_future_is_refused_before_it_holds_every_later_run_back(
    tmp_path: Path,
) -> None:
    """--now 2030-01-01 (a typo) ran, and every plain run after it was refused as "before the
    clock of an earlier run" until 2030."""
    scenario = make_scenario(tmp_path)
    done = monitor_cli(
        "monitor", "run", "--config", str(scenario.watchlist()), "--now", "2099-01-01",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "--now 2099-01-01 00:00 is in the future" in line
    assert not scenario.state.exists()


def test_another_programs_sqlite_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """`review` and `monitor status` wrote changedet's tables into it and turned on WAL."""
    import sqlite3

    scenario = make_scenario(tmp_path)
    scenario.state.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(scenario.state) as db:
        db.execute("CREATE TABLE foo (x)")
    before = scenario.state.read_bytes()
    watchlist = str(scenario.watchlist())
    for args in (
        ("monitor", "status", "--config", watchlist),
        ("review", "khojir", "X", "--as", "confirmed", "--state", str(scenario.state)),
    ):
        done = monitor_cli(*args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert "is another program's SQLite file" in line
    assert scenario.state.read_bytes() == before
    assert not scenario.state.with_name(scenario.state.name + "-wal").exists()


# --- planning scenes (pure) -------------------------------------------------------------------------


def _scene(scene_id: str, day: int, *, baseline: str = "05.09", updated: str = "u1") -> Scene:
    return Scene(
        id=scene_id,
        datetime=datetime(2024, 1, day, 7, tzinfo=UTC),
        collection="sentinel-2-l2a",
        tile="39SWV",
        assets={},
        platform="sentinel-2a",
        processing_baseline=baseline,
        updated=updated,
    )


def _stored(scene: Scene, outcome: str = "used") -> SceneRow:
    return SceneRow(
        scene.id,
        scene.datetime.isoformat(),
        scene.processing_baseline,
        scene.updated,
        0.9,
        outcome,
        None,
        scene_record(scene),
    )


def test_plan_sees_new_scenes_and_nothing_after_now() -> None:
    a, b, c = _scene("a_0", 5), _scene("b_0", 10), _scene("c_0", 20)
    stored = {"a_0": _stored(a)}
    plan = plan_scenes(stored, [a, b, c], [], now=datetime(2024, 1, 15, tzinfo=UTC))
    assert [s.id for s in plan.scenes] == ["a_0", "b_0"]
    assert plan.new == ("b_0",)
    again = plan_scenes({**stored, "b_0": _stored(b)}, [b], [], now=END)  # a from the state
    assert [s.id for s in again.scenes] == ["a_0", "b_0"] and again.new == ()


def test_plan_leaves_out_what_the_catalog_withdrew_or_the_search_now_rejects() -> None:
    a, b, c = _scene("a_0", 5), _scene("b_0", 10), _scene("c_0", 20)
    stored = {s.id: _stored(s) for s in (a, b, c)}
    days = (date(2024, 1, 8), date(2024, 1, 31))  # b and c's days searched again

    def left(found: list[Scene], dropped: list[SkippedScene], **kw: object) -> list[tuple]:
        plan = plan_scenes(stored, found, dropped, now=END, **kw)  # type: ignore[arg-type]
        return [(d.scene_id, d.reason) for d in plan.left]

    assert left([b, c], [], searched=days) == []
    assert left([c], [], searched=days) == [("b_0", "withdrawn from the catalog")]
    assert left([c], [], searched=None) == []  # a search that could not read every item
    cloudy = SkippedScene("b_0", "scene cloud cover 78.2% > 50%")  # an edited cloud filter
    assert left([c], [cloudy], searched=days) == [("b_0", cloudy.reason)]
    assert left([b, c], [], span=(date(2024, 1, 8), END.date())) == [
        ("a_0", "outside the watch's start and end")
    ]


def test_plan_replaces_a_stored_scene_by_its_reprocessed_version() -> None:
    old = _scene("x_0", 28, updated="2024-01-29")
    new = _scene("x_1", 28, updated="2024-03-02")
    plan = plan_scenes({"x_0": _stored(old)}, [new], [], now=END)
    assert [s.id for s in plan.scenes] == ["x_1"] and plan.new == ("x_1",)
    assert [d.scene_id for d in plan.replaced] == ["x_0"]
    # Reprocessed in place (same id, newer baseline): new again.
    same_id = _scene("x_0", 28, baseline="05.10", updated="2024-01-29")
    assert plan_scenes({"x_0": _stored(old)}, [same_id], [], now=END).new == ("x_0",)


def test_plan_records_dropped_scenes_once() -> None:
    dropped = [SkippedScene("cloudy_0", "cloud cover 95 % > 80 %")]
    plan = plan_scenes({}, [], dropped, now=END)
    assert plan.dropped == tuple(dropped) and plan.new == ()
    seen = {"cloudy_0": SceneRow("cloudy_0", None, None, None, None, "dropped", "x", None)}
    assert plan_scenes(seen, [], dropped, now=END).dropped == ()


def test_plan_reads_again_a_scene_that_could_not_be_read() -> None:
    a, b, c = _scene("a_0", 5), _scene("b_0", 10), _scene("c_0", 20)
    stored = {
        "a_0": _stored(a),
        "b_0": _stored(b, "unreadable"),
        "c_0": _stored(c, "skipped"),
    }
    plan = plan_scenes(stored, [], [], now=END)  # the search found nothing new
    assert [s.id for s in plan.scenes] == ["a_0", "b_0", "c_0"]
    assert plan.new == () and plan.retried == ("b_0",) and plan.work
    assert not plan_scenes({**stored, "b_0": _stored(b)}, [], [], now=END).work


def test_search_starts_at_the_last_acquisition_minus_the_lookback() -> None:
    start = datetime(2023, 6, 1).date()
    assert search_start(start, {}, 30) == start
    stored = {"a": _stored(_scene("a", 20))}
    assert str(search_start(start, stored, 30)) == "2023-12-21"
    assert search_start(datetime(2024, 1, 10).date(), stored, 30) == datetime(2024, 1, 10).date()


# --- ledger decisions (pure) ----------------------------------------------------------------------


def _row(
    sid: str, status: str, *, bermed: bool | None = None, review: str | None = None
) -> StructureRow:
    return StructureRow(
        sid,
        status,
        "building",
        status != "candidate",
        bermed,
        900.0,
        0.8,
        "2023-09-01",
        "2023-10-01",
        None,
        35.6,
        51.6,
        None,
        review,
    )


def test_a_structure_alerts_when_first_confirmed_and_never_again() -> None:
    first = ledger_changes("k", {}, [_row("s1", "candidate")], set())
    assert first.alerts == () and [h.change for h in first.history] == ["candidate"]
    stored = {"s1": _row("s1", "candidate")}
    confirmed = ledger_changes("k", stored, [_row("s1", "confirmed")], set())
    assert [(a.structure_id, a.kind) for a in confirmed.alerts] == [("s1", "new")]
    assert confirmed.alerts[0].key == alert_key("k", "s1", "new")
    assert [(h.change, h.previous) for h in confirmed.history] == [("confirmed", "candidate")]
    rerun = ledger_changes(
        "k", {"s1": _row("s1", "confirmed")}, [_row("s1", "confirmed")], {("s1", "new")}
    )
    assert rerun.rows == () and rerun.history == () and rerun.alerts == ()


def test_bermed_and_vanished_alert_once_after_new() -> None:
    stored = {"s1": _row("s1", "confirmed")}
    bermed = ledger_changes("k", stored, [_row("s1", "bermed", bermed=True)], {("s1", "new")})
    assert [a.kind for a in bermed.alerts] == ["bermed"]
    gone = ledger_changes(
        "k",
        {"s1": _row("s1", "bermed", bermed=True)},
        [_row("s1", "vanished")],
        {("s1", "new"), ("s1", "bermed")},
    )
    assert [a.kind for a in gone.alerts] == ["vanished"]
    # New and bermed at first sight: one "new" alert that says so.
    at_once = ledger_changes("k", {}, [_row("s2", "bermed", bermed=True)], set())
    assert [(a.kind, a.payload["bermed"]) for a in at_once.alerts] == [("new", True)]
    # An alert from generated data says so, in its payload and its text (e-mail subject).
    assert at_once.alerts[0].payload["synthetic"] is False
    assert describe_alert(at_once.alerts[0]).startswith("[k] new confirmed")
    demo = ledger_changes("k", {}, [_row("s2", "confirmed")], set(), synthetic=True)
    assert demo.alerts[0].payload["synthetic"] is True
    assert describe_alert(demo.alerts[0]).startswith("[SYNTHETIC data] [k] new confirmed")


def test_a_false_positive_never_alerts_and_a_lost_structure_is_dropped() -> None:
    fp = ledger_changes(
        "k",
        {"s1": _row("s1", "candidate", review="false-positive")},
        [_row("s1", "confirmed", review="false-positive")],
        set(),
    )
    assert fp.alerts == () and [h.change for h in fp.history] == ["confirmed"]
    lost = ledger_changes("k", {"s1": _row("s1", "confirmed")}, [], {("s1", "new")})
    assert [(r.id, r.status) for r in lost.rows] == [("s1", "dropped")]
    assert [a.kind for a in lost.alerts] == ["withdrawn"]  # it was alerted as new
    assert [h.detail for h in lost.history] == ["no longer detected"]


def test_what_happened_while_ruled_a_false_positive_is_told_once_the_verdict_is_taken_back() -> (
    None
):
    """Alerted as new, ruled a false positive, bermed and then vanished while so ruled: the
    verdict taken back, the subscriber is told what they were not (the stored status was
    compared, and it already said bermed: the alert was lost)."""
    told_new = {("s1", "new"), ("s1", "confirmed")}
    ruled = {"s1": _row("s1", "confirmed", review="false-positive")}
    silent = ledger_changes("k", ruled, [_row("s1", "bermed", review="false-positive")], told_new)
    assert silent.alerts == ()
    stored = {"s1": _row("s1", "bermed", bermed=True, review="false-positive")}
    back = ledger_changes("k", stored, [_row("s1", "bermed", bermed=True)], told_new)
    assert [a.kind for a in back.alerts] == ["bermed"]
    told_bermed = told_new | {("s1", "bermed")}
    again = ledger_changes("k", {"s1": back.rows[0]}, [_row("s1", "bermed")], told_bermed)
    assert again.alerts == ()  # told once
    gone = {"s1": _row("s1", "vanished", review="false-positive")}
    later = ledger_changes("k", gone, [_row("s1", "vanished")], told_bermed)
    assert [a.kind for a in later.alerts] == ["vanished"]


def test_an_alerted_structure_no_longer_confirmed_is_withdrawn_once() -> None:
    """A structure alerted as new that later months show as a transient, or that is no longer
    found, raises one `withdrawn` alert saying why; one never alerted, or called a false
    positive by the analyst, raises none."""
    stored = {"s1": _row("s1", "confirmed")}
    transient = ledger_changes("k", stored, [_row("s1", "dropped")], {("s1", "new")})
    (alert,) = transient.alerts
    assert (alert.kind, alert.payload["detail"]) == (
        "withdrawn",
        "not confirmed by the months since",
    )
    assert alert.key == alert_key("k", "s1", "withdrawn")
    assert describe_alert(alert).startswith("[k] building no longer confirmed (not confirmed")
    # after an edit of the watch, the edit is why (it said "the months since": there were none)
    edited = ledger_changes("k", stored, [_row("s1", "dropped")], {("s1", "new")}, edited=True)
    assert edited.alerts[0].payload["detail"] == (
        "no longer confirmed once the watch was edited (its outline or settings)"
    )
    again = ledger_changes(
        "k", stored, [_row("s1", "candidate")], {("s1", "new"), ("s1", "withdrawn")}
    )
    assert again.alerts == ()
    lost = ledger_changes("k", stored, [], {("s1", "new")})
    assert [(a.kind, a.payload["detail"]) for a in lost.alerts] == [
        ("withdrawn", "no longer detected")
    ]
    assert ledger_changes("k", stored, [], set()).alerts == ()  # never alerted
    # Confirmed again (the scene that hid it published again, say): one `reinstated`, once.
    withdrawn = {("s1", "new"), ("s1", "withdrawn")}
    back = ledger_changes("k", {"s1": _row("s1", "dropped")}, [_row("s1", "confirmed")], withdrawn)
    assert [a.kind for a in back.alerts] == ["reinstated"]
    assert describe_alert(back.alerts[0]).startswith("[k] building confirmed again after its")
    done = {*withdrawn, ("s1", "reinstated")}
    assert ledger_changes("k", stored, [_row("s1", "confirmed")], done).alerts == ()
    # Back bermed: both said (the bermed alert could never come after)
    bermed = ledger_changes("k", {"s1": _row("s1", "candidate")}, [_row("s1", "bermed")], withdrawn)
    assert [a.kind for a in bermed.alerts] == ["reinstated", "bermed"]
    reviewed = {"s1": _row("s1", "confirmed", review="false-positive")}
    assert ledger_changes("k", reviewed, [], {("s1", "new")}).alerts == ()


def _square(lon: float, lat: float, size: float) -> str:
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size], [lon, lat]]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


@pytest.mark.parametrize(
    ("site_lon", "detail"),
    [
        (51.6, "now part of s2"),  # the site covers all of the old candidate
        (51.6003, "now part of s2"),  # ...three quarters of it
        (51.6005, "no longer detected"),  # a quarter of it
        (51.7, "no longer detected"),  # elsewhere
    ],
)
def test_a_candidate_taken_into_a_larger_site_says_which(site_lon: float, detail: str) -> None:
    """A stored structure no longer found whose outline a structure found now mostly covers (a
    candidate grown into a site) is dropped with a history entry naming that structure."""
    candidate = replace(_row("s1", "candidate"), geometry=_square(51.6002, 35.6002, 0.0004))
    site = replace(_row("s2", "confirmed"), geometry=_square(site_lon, 35.6, 0.0008))
    changes = ledger_changes("k", {"s1": candidate}, [site], set())
    assert [
        (h.structure_id, h.change, h.detail) for h in changes.history if h.structure_id == "s1"
    ] == [("s1", "dropped", detail)]


# --- state ----------------------------------------------------------------------------------------


def test_state_is_wal_migrated_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with State(path) as state:
        assert state.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert state.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert state.integrity() == "ok"
    with State(path):  # reopening migrates nothing
        pass
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(UsageError, match="newer"):
        State(path)


# --- runs over a growing catalog (in-process) -----------------------------------------------------


def _run(scenario: Scenario, now: datetime = END, **kwargs: object):  # type: ignore[no-untyped-def]
    return run_watchlist(load_watchlist(scenario.watchlist()), now=now, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """A scenario run twice: first up to January 2024 with only the first version of the
    2024-01-28 datatake, then after its reprocessed version and one more scene were published
    (within the lookback). State and outputs stay for the tests below to read."""
    scenario = make_scenario(tmp_path_factory.mktemp("grown"))
    scenario.publish(lambda item: until(GROWN_FIRST)(item) and item["id"] != REPROCESSED)
    first = _run(scenario)
    assert [c.outcome for c in first.checks] == ["updated"]
    scenario.publish(until(GROWN_SECOND))
    second = _run(scenario)
    (check,) = second.checks
    assert check.outcome == "updated"
    assert sorted(check.new_scenes) == sorted([REPROCESSED, "S2B_39SWV_20240212_0_L2A"])
    assert check.replaced == (REPROCESSED.replace("_1_", "_0_"),)
    # Only the periods the new scenes touched were computed again; the rest came from the cache.
    assert first.checks[0].periods_reused == 0
    assert check.periods_reused >= 2 and check.periods_computed >= 1
    # ... and so were the composites: the baseline's and the untouched periods' were kept.
    assert first.checks[0].composites_reused == 0 and first.checks[0].composites_computed > 0
    assert check.composites_reused >= 3 and check.composites_computed >= 1
    # ... and the dates it had read: only the new scenes' dates were read (`read.kept`).
    assert first.checks[0].dates_kept == 0 and check.summary is not None
    assert check.summary.n_scenes - 2 <= check.dates_kept < check.summary.n_scenes
    # ... and the baseline's picture, drawn from what did not change, could be taken again
    # (`outputs.drawn`; the kit's runs draw no chips nor imagery).
    drawn = json.loads((scenario.out / "k1" / "run.json").read_text())["drawn"]
    earlier = json.loads((scenario.out / "k1" / "previous" / "run.json").read_text())["drawn"]
    assert drawn["before.png"] == earlier["before.png"]
    return scenario


def test_an_incremental_run_lists_the_scenes_earlier_searches_left_out(tmp_path: Path) -> None:
    """run.json of a run that searched only its last weeks listed only what that search
    dropped: a scene the first run's cloud filter left out vanished from the record."""
    scenario = make_scenario(tmp_path)
    scenario.overrides["catalog.max_cloud_cover"] = 50.0
    cloudy = "S2B_39SWV_20231104_0_L2A"  # scene cloud 59 %

    def run(until_day: str, now: datetime) -> dict[str, str]:
        scenario.publish(until(until_day))
        path = scenario.watchlist()
        path.write_text(path.read_text().replace("lookback_days = 20", "lookback_days = 5"))
        (check,) = run_watchlist(load_watchlist(path), now=now).checks
        assert check.outcome == "updated", check.message
        skipped = json.loads((scenario.out / "k1" / "run.json").read_text())["scenes"]["skipped"]
        return {s["id"]: s["reason"] for s in skipped}

    first = run("2023-12-01", datetime(2023, 12, 5, tzinfo=UTC))
    assert "cloud" in first[cloudy]
    second = run("2024-01-01", datetime(2024, 1, 5, tzinfo=UTC))
    assert second[cloudy] == first[cloudy]
    with State(scenario.state) as state:
        assert search_start(date(2023, 6, 1), state.scenes("k1"), 5) > date(2023, 11, 4)


def test_a_reprocessed_scene_replaces_its_older_version_without_double_counting(
    grown: Scenario, tmp_path: Path
) -> None:
    with State(grown.state) as state:
        scenes = state.scenes("k1")
        periods = state.periods("k1")
    older = REPROCESSED.replace("_1_", "_0_")
    assert scenes[older].outcome == "replaced" and REPROCESSED in (scenes[older].reason or "")
    assert scenes[REPROCESSED].outcome in ("used", "skipped")
    january = periods["2024-01"][2]
    assert older not in january
    # The same ledger as one run that only ever saw the reprocessed version (and kept no
    # composites: the period cache holds the change and the shifts only).
    fresh = make_scenario(tmp_path / "fresh")
    fresh.publish(until(GROWN_SECOND))
    lean = "keep_composites = false\nkeep_dates = false"
    run_watchlist(load_watchlist(fresh.watchlist(extra=lean)), now=END)
    grown_ledger, fresh_ledger = ledger_outcome(grown.state), ledger_outcome(fresh.state)
    assert grown_ledger["structures"] == fresh_ledger["structures"]
    assert grown_ledger["periods"] == fresh_ledger["periods"]
    cached = {p.name.split("-")[0] for p in memo_folder(fresh.state, "k1").iterdir()}
    kept = {p.name.split("-")[0] for p in memo_folder(grown.state, "k1").iterdir()}
    assert {"composite", "date", "shift"} <= kept
    assert "composite" not in cached and "date" not in cached and "shift" in cached


def test_a_run_with_nothing_new_changes_nothing_and_leaves_the_files(grown: Scenario) -> None:
    before = ledger_dump(grown.state)
    files = {p: p.stat().st_mtime_ns for p in (grown.out / "k1").rglob("*") if p.is_file()}
    report = _run(grown)
    assert [(c.outcome, c.alerts) for c in report.checks] == [("unchanged", ())]
    assert ledger_dump(grown.state) == before
    assert {p: p.stat().st_mtime_ns for p in (grown.out / "k1").rglob("*") if p.is_file()} == files


def test_outputs_another_ledger_wrote_into_the_folder_are_written_again(tmp_path: Path) -> None:
    """A second state sharing the watch-list's `out` (`--state`) overwrote this ledger's files:
    its next run, nothing new, writes its own again (it said "unchanged" and kept the others)."""
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    _run(scenario)
    run_json = scenario.out / "k1" / "run.json"
    mine = json.loads(run_json.read_text())["dates"]
    scenario.publish(until("2023-12-20"))  # the other ledger has seen fewer scenes
    other = replace(load_watchlist(scenario.watchlist()), state=tmp_path / "other.sqlite")
    run_watchlist(other, now=END)
    assert json.loads(run_json.read_text())["dates"] != mine
    scenario.publish(until(GROWN_FIRST))
    again = _run(scenario)
    assert [(c.outcome, c.new_scenes) for c in again.checks] == [("updated", ())]
    assert json.loads(run_json.read_text())["dates"] == mine
    assert [c.outcome for c in _run(scenario).checks] == ["unchanged"]


def test_a_clock_before_an_earlier_runs_is_refused_and_changes_nothing(grown: Scenario) -> None:
    """Scenes published in between would count as unpublished: dropped from the ledger,
    their structures withdrawn, and nothing would bring them back."""
    before = ledger_dump(grown.state)
    with pytest.raises(UsageError, match=r"before the clock of an earlier run .* --now"):
        _run(grown, now=datetime(2024, 3, 1, tzinfo=UTC))
    assert ledger_dump(grown.state) == before


def _series(scenario: Scenario) -> tuple[list[str], list[tuple[object, ...]]]:
    """The outputs' dates and the ledger's structures but those it keeps as dropped (history);
    by what they are, not their ids (a ledger never gives a dropped structure's id again)."""
    dates = json.loads((scenario.out / "k1" / "run.json").read_text())["dates"]
    with State(scenario.state) as state:
        rows = state.structures("k1").values()
    return dates, sorted(
        (r.status, r.confirmed, r.area_m2, r.first_seen_start, r.first_seen_end)
        for r in rows
        if r.status != "dropped"
    )


def _fresh(
    root: Path, keep: Callable[[dict], bool], edits: Sequence[tuple[str, str]] = ()
) -> Scenario:
    """A new state given one catalog in one run of the watch-list with `edits` (what an
    edited one must come to)."""
    fresh = make_scenario(root)
    fresh.publish(keep)
    path = fresh.watchlist()
    text = path.read_text()
    for old, new in edits:
        text = text.replace(old, new)
    path.write_text(text)
    run_watchlist(load_watchlist(path), now=END)
    return fresh


def test_a_scene_withdrawn_from_the_catalog_leaves_the_series(tmp_path: Path) -> None:
    """Inside the days the run searches again, a stored scene the catalog no longer returns is
    left out and the AOI computed without it, as a fresh run would (it was kept for good)."""
    scenario = make_scenario(tmp_path / "s")
    scenario.publish(until(GROWN_FIRST))
    _run(scenario)
    gone = "S2A_39SWV_20240118_0_L2A"
    keep = lambda item: until(GROWN_FIRST)(item) and item["id"] != gone  # noqa: E731
    scenario.publish(keep)
    (check,) = _run(scenario).checks
    assert check.outcome == "updated" and [(d.scene_id, d.reason) for d in check.left] == [
        (gone, "withdrawn from the catalog")
    ]
    assert _series(scenario) == _series(_fresh(tmp_path / "fresh", keep))
    assert [c.outcome for c in _run(scenario).checks] == ["unchanged"]


def test_an_edited_watch_is_computed_again(tmp_path: Path) -> None:
    """A start moved later leaves its earlier scenes out, one moved back searches from it, a
    setting changed is computed with, and an end moved back leaves the later scenes out: each
    run gives what a fresh run of the edited watch-list gives (each said "unchanged" and kept
    the old series; the last failed on a search ending before it started)."""
    scenario = make_scenario(tmp_path / "s")
    scenario.publish(until(GROWN_FIRST))
    _run(scenario)
    path = scenario.watchlist()
    edits: list[tuple[str, str]] = []
    for old, new in (
        ('start = "2023-06-01"', 'start = "2023-09-01"'),
        ('start = "2023-09-01"', 'start = "2023-07-01"'),
        ('"read.context_m" = 200.0', '"read.context_m" = 200.0\n"track.min_persistence" = 3'),
        ('end = "2024-06-30"', 'end = "2023-12-31"'),  # before the days searched last
    ):
        assert old in path.read_text(), old
        path.write_text(path.read_text().replace(old, new))
        edits.append((old, new))
        (check,) = run_watchlist(load_watchlist(path), now=END).checks
        assert check.outcome == "updated", (new, check)
        if len(edits) == 1:  # in the baseline now: retired as such, not withdrawn
            assert not [a for a in check.alerts if a.kind == "withdrawn"]
            with State(scenario.state) as state:
                history = state.table_rows("structure_history", "k1")
            assert any(h[5] and "in the baseline now" in h[5] for h in history)
        fresh = _fresh(tmp_path / f"fresh{len(edits)}", until(GROWN_FIRST), edits)
        assert _series(scenario) == _series(fresh), new


def test_structures_an_aoi_drawn_smaller_leaves_out_are_retired_not_withdrawn(
    tmp_path: Path,
) -> None:
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    first = _run(scenario)
    assert any(a.kind == "new" for a in first.checks[0].alerts)
    aoi = json.loads((tmp_path / "k1.geojson").read_text())
    aoi["features"][0]["geometry"]["coordinates"] = [box_polygon((130, 100, 165, 135))]
    (tmp_path / "k1.geojson").write_text(json.dumps(aoi))
    (check,) = _run(scenario).checks
    assert check.outcome == "updated" and not check.new_scenes
    assert check.message == "the watch changed (its AOI outline or settings): computed again"
    with State(scenario.state) as state:
        history = state.table_rows("structure_history", "k1")
    retired = [h for h in history if h[5] == "outside the AOI (its outline was edited)"]
    assert retired and not [a for a in check.alerts if a.kind == "withdrawn"]


def test_an_outline_drawn_smaller_and_back_alerts_no_status_already_told(
    tmp_path: Path,
) -> None:
    """Structures alerted new while bermed, left out by a smaller outline and back with the
    old one, were alerted "bermed" again: their ground did not change."""
    scenario = make_scenario(tmp_path)
    scenario.publish()
    (first,) = _run(scenario).checks
    assert any(a.kind == "new" and a.payload["status"] == "bermed" for a in first.alerts)
    drawn = (tmp_path / "k1.geojson").read_text()
    aoi = json.loads(drawn)
    aoi["features"][0]["geometry"]["coordinates"] = [box_polygon((130, 100, 165, 135))]
    (tmp_path / "k1.geojson").write_text(json.dumps(aoi))
    _run(scenario)
    (tmp_path / "k1.geojson").write_text(drawn)
    (back,) = _run(scenario).checks
    assert back.outcome == "updated"
    # only one withdrawn meanwhile is told again, reinstated with its status (as designed)
    reinstated = {a.structure_id for a in back.alerts if a.kind == "reinstated"}
    told = [a for a in back.alerts if a.kind in ("bermed", "vanished")]
    assert all(a.structure_id in reinstated for a in told), back.alerts
    assert len(told) < sum(1 for a in first.alerts if a.payload["status"] == "bermed")


def test_the_status_a_structures_latest_alert_told_counts_as_told(tmp_path: Path) -> None:
    """new (bermed), withdrawn, reinstated as merely confirmed: bermed again is news. Only the
    latest alert's status counts as told (any alert's did, so that "bermed" went unsaid)."""
    import json as _json

    from changedet.monitor.decide import ledger_changes

    with State(tmp_path / "s.sqlite") as state:
        state.db.execute(
            "INSERT INTO runs (id, started, now) VALUES (1, '2024-01-01', '2024-01-01')"
        )
        for seq, (kind, status) in enumerate(
            [("new", "bermed"), ("withdrawn", "dropped"), ("reinstated", "confirmed")]
        ):
            state.db.execute(
                "INSERT INTO alerts VALUES (?, ?, 'k', 's1', ?, 1, ?)",
                (f"a{seq}", seq, kind, _json.dumps({"status": status})),
            )
        told = state.alerted("k")
    assert ("s1", "bermed") not in told
    back = ledger_changes("k", {"s1": _row("s1", "confirmed")}, [_row("s1", "bermed")], told)
    assert [a.kind for a in back.alerts] == ["bermed"]


def test_a_run_with_no_edit_retires_nothing_silently(tmp_path: Path) -> None:
    """A watch starting in July has a one-month baseline until a second clear month comes: the
    baseline grows by itself, and what it takes in is withdrawn with an alert, not retired as
    if the watch had been edited (only an edit leaves a structure out without its ground
    changing)."""
    scenario = make_scenario(tmp_path)
    path = scenario.watchlist()
    path.write_text(path.read_text().replace('start = "2023-06-01"', 'start = "2023-07-01"'))
    for cut in ("2023-09-15", "2023-10-25", "2023-11-15"):
        scenario.publish(until(cut))
        now = datetime.fromisoformat(cut + "T12:00:00+00:00")
        run_watchlist(load_watchlist(path), now=now)
    with State(scenario.state) as state:
        history = state.table_rows("structure_history", "k1")
    assert not [h for h in history if h[5] and "the watch" in h[5]]


def test_a_state_from_before_setups_were_kept_is_computed_once(tmp_path: Path) -> None:
    """Edited before the upgrade, perhaps: its setup unknown, it is computed once from its
    start, then kept."""
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    _run(scenario)
    for kept in (None, "0f3a"):  # none, or a digest of another kind (an earlier changedet's)
        db = sqlite3.connect(scenario.state)
        with db:
            db.execute("UPDATE aois SET setup = ?", (kept,))
        db.close()
        (check,) = _run(scenario).checks
        assert check.outcome == "updated" and check.message.startswith("the watch's setup was")
        assert [c.outcome for c in _run(scenario).checks] == ["unchanged"]


def test_an_aoi_with_only_dropped_scenes_so_far_is_not_computed_every_run(tmp_path: Path) -> None:
    """Its first search finds scenes the cloud limit drops: nothing was computed, so there is
    nothing to compute again for want of a recorded setup."""
    scenario = make_scenario(tmp_path)
    scenario.overrides["catalog.max_cloud_cover"] = 0.01
    scenario.publish(until(GROWN_FIRST))
    outcomes = [c.outcome for _ in range(3) for c in _run(scenario).checks]
    assert outcomes == ["unchanged"] * 3


def test_the_day_is_the_utc_day_whatever_the_clocks_offset(tmp_path: Path) -> None:
    """One hour after a run at 08:00 UTC on 9 December, given as 23:00 on the 8th at -10:00:
    the 9 December scene is not "outside the watch's start and end"."""
    scenario = make_scenario(tmp_path)
    scenario.publish(until("2023-12-10"))
    _run(scenario, now=datetime(2023, 12, 9, 8, tzinfo=UTC))
    later = datetime(2023, 12, 8, 23, tzinfo=timezone(timedelta(hours=-10)))
    assert [(c.outcome, c.left) for c in _run(scenario, now=later).checks] == [("unchanged", ())]


def test_how_scenes_are_fetched_is_no_edit_of_the_watch(tmp_path: Path) -> None:
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    _run(scenario)
    scenario.overrides.update({"catalog.retries": 1, "read.max_workers": 2})
    assert [c.outcome for c in _run(scenario).checks] == ["unchanged"]


def _rename_aoi(root: Path, new_id: str, *, nudge_deg: float = 0.0) -> None:
    """Give the scenario's AOI another id, its outline moved east by `nudge_deg` if asked."""
    aoi = json.loads((root / "k1.geojson").read_text())
    feature = aoi["features"][0]
    feature["properties"]["id"] = new_id
    ring = feature["geometry"]["coordinates"][0]
    feature["geometry"]["coordinates"][0] = [[x + nudge_deg, y] for x, y in ring]
    (root / "k1.geojson").write_text(json.dumps(aoi))


def test_a_renamed_aoi_carries_its_ledger_over(tmp_path: Path) -> None:
    """Same outline and settings under another id: the ledger is the AOI's, not a new one. No
    structure is alerted again, ids and alerts stay, and the outputs name the new id."""
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    _run(scenario)
    with State(scenario.state) as state:
        before = {k: (r.status, r.confirmed, r.area_m2) for k, r in state.structures("k1").items()}
        alerts = [(a.structure_id, a.kind) for a in state.alerts("k1")]
    assert before and alerts
    _rename_aoi(tmp_path, "k1-renamed")
    report = _run(scenario)
    (check,) = report.checks
    assert (check.outcome, check.alerts) == ("updated", ())
    assert check.message.startswith("the ledger of 'k1' carried over")
    assert (report.renamed, report.unwatched) == ({"k1-renamed": "k1"}, {})
    with State(scenario.state) as state:
        rows = state.structures("k1-renamed")
        assert {k: (r.status, r.confirmed, r.area_m2) for k, r in rows.items()} == before
        assert [(a.structure_id, a.kind) for a in state.alerts("k1-renamed")] == alerts
        assert state.aoi("k1") is None and not state.structures("k1")
    run_json = json.loads((scenario.out / "k1-renamed" / "run.json").read_text())
    assert run_json["aoi"]["id"] == "k1-renamed"
    listed = json.loads((scenario.out / "k1-renamed" / "alerts.geojson").read_text())
    assert len(listed["features"]) == len(alerts)
    assert {f["properties"]["aoi"] for f in listed["features"]} == {"k1-renamed"}
    assert memo_folder(scenario.state, "k1-renamed").is_dir()
    assert [c.outcome for c in _run(scenario).checks] == ["unchanged"]


def test_two_new_aois_alike_do_not_guess_which_was_renamed(tmp_path: Path) -> None:
    """The renamed AOI and a copy of it (same outline and settings): the first listed took the
    ledger, and the one really renamed alerted every structure again. Neither takes it now."""
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    _run(scenario)
    aoi = json.loads((tmp_path / "k1.geojson").read_text())
    for new_id in ("k1-a", "k1-b"):
        aoi["features"][0]["properties"]["id"] = new_id
        (tmp_path / f"{new_id}.geojson").write_text(json.dumps(aoi))
    report = run_watchlist(load_watchlist(scenario.watchlist(aois=("k1-a", "k1-b"))), now=END)
    assert report.renamed == {} and set(report.unwatched) == {"k1"}
    with State(scenario.state) as state:
        assert state.structures("k1")  # kept where it was


def test_a_ledger_the_watch_list_no_longer_names_is_said(tmp_path: Path) -> None:
    """An AOI whose id was changed as its outline was edited starts a new ledger (its
    structures alerted as new again); the old one stays in the state, and run and status say so
    instead of dropping it silently."""
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    _run(scenario)
    with State(scenario.state) as state:
        kept = len(state.structures("k1"))
    _rename_aoi(tmp_path, "k1-renamed", nudge_deg=1e-5)
    path = scenario.watchlist()
    done = monitor_cli(
        "monitor", "run", "--config", str(path), "--now", END.isoformat(), "--quiet", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert f"no longer names: 'k1' ({kept} structures)" in done.stderr
    status = monitor_cli("monitor", "status", "--config", str(path), "--json", cwd=tmp_path)
    assert json.loads(status.stdout)["unwatched"] == {"k1": kept}


def test_deleted_output_files_are_written_again(tmp_path: Path) -> None:
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    _run(scenario)
    (scenario.out / "k1" / "structures.geojson").unlink()
    (check,) = _run(scenario).checks
    assert (check.outcome, check.message) == ("updated", "outputs missing: written again")
    assert (scenario.out / "k1" / "structures.geojson").is_file()


def test_alerts_geojson_lists_every_alert_of_the_aoi(grown: Scenario) -> None:
    doc = json.loads((grown.out / "k1" / "alerts.geojson").read_text())
    with State(grown.state) as state:
        keys = [a.key for a in state.alerts("k1")]
    assert keys and [f["id"] for f in doc["features"]] == keys
    first = doc["features"][0]
    assert first["geometry"]["type"] in ("Polygon", "MultiPolygon")
    assert first["properties"]["alert"] in ("new", "bermed", "vanished", "withdrawn")
    assert all(f["properties"]["synthetic"] is True for f in doc["features"])  # the sample's
    # run.json does not claim it, so a later run leaves it in place.
    assert "alerts.geojson" not in json.loads((grown.out / "k1" / "run.json").read_text())["files"]
    assert not (grown.out / "k1" / "previous" / "alerts.geojson").exists()


def _cumulative(out: Path) -> int:
    rows = list(csv.DictReader((out / "counts.csv").open()))
    return int(rows[-1]["cumulative"])


def _geojson_reviews(out: Path) -> dict[str, str | None]:
    doc = json.loads((out / "structures.geojson").read_text())
    return {f["properties"]["id"]: f["properties"]["review"] for f in doc["features"]}


def test_a_confirmed_structure_growing_out_of_the_aoi_is_not_dropped(tmp_path: Path) -> None:
    """Later months grow the outlines of structures on the box's edge until the pixel their id
    is anchored on lies outside the AOI: they stand where the ledger's structures stood inside
    it, so they stay this AOI's, not "dropped: no longer detected" (two were, before)."""
    scenario = make_scenario(tmp_path)
    scenario.overrides["track.min_persistence"] = 3
    confirmed: set[str] = set()
    for step in ("2023-12-20", "2024-02-01", "2024-04-01", "2024-07-01"):
        scenario.publish(until(step))
        _run(scenario)
        with State(scenario.state) as state:
            rows = state.structures("k1")
        dropped = {r.id for r in rows.values() if r.status == "dropped"}
        assert not dropped & confirmed, (step, dropped & confirmed)
        confirmed |= {r.id for r in rows.values() if r.confirmed}
    assert len(confirmed) >= 8


def test_a_review_survives_later_runs_and_a_false_positive_leaves_counts_and_alerts(
    tmp_path: Path,
) -> None:
    scenario = make_scenario(tmp_path)
    scenario.overrides["output.report"] = True
    # Three clear periods to confirm, so that a structure seen in two is still a candidate
    # here (one first seen on its last clear date waits for the next clear scene).
    scenario.overrides["track.min_persistence"] = 3
    scenario.publish(until("2023-12-20"))
    _run(scenario)
    with State(scenario.state) as state:
        rows = state.structures("k1")
    candidates = [r.id for r in rows.values() if r.status == "candidate"]
    confirmed = [r.id for r in rows.values() if r.status in ("confirmed", "bermed")]
    assert candidates and confirmed, rows
    out = scenario.out / "k1"
    counted = _cumulative(out)
    # The analyst rules out one confirmed structure and one candidate not yet alerted.
    fp, fp_candidate, kept = confirmed[0], candidates[0], confirmed[-1]
    for sid, verdict in (
        (fp, "false-positive"),
        (fp_candidate, "false-positive"),
        (kept, "confirmed"),
    ):
        done = monitor_cli(
            "review",
            "k1",
            sid,
            "--as",
            verdict,
            "--note",
            "checked",
            "--state",
            str(scenario.state),
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
    # Nothing new: the run only refreshes the outputs with the verdicts.
    refresh = _run(scenario)
    assert [(c.outcome, c.new_scenes, c.alerts) for c in refresh.checks] == [("updated", (), ())]
    assert _cumulative(out) == counted - 1
    for step in ("2024-02-01", "2024-04-01", "2024-07-01"):  # three later runs, new scenes each
        scenario.publish(until(step))
        report = _run(scenario)
        assert report.checks[0].outcome == "updated"
        assert not {a.structure_id for a in report.checks[0].alerts} & {fp, fp_candidate}
        reviews = _geojson_reviews(out)
        assert reviews[fp] == "false-positive" and reviews[kept] == "confirmed"
    with State(scenario.state) as state:
        assert state.verdicts("k1")[fp] == ("false-positive", "checked")
        assert state.structures("k1")[fp_candidate].review == "false-positive"
        alerted = {sid for sid, _ in state.alerted("k1")}
        history = state.table_rows("structure_history", "k1")
    assert fp_candidate not in alerted
    assert sum(1 for h in history if h[2] == fp and h[3] == "reviewed") == 1
    import pyogrio

    layer = pyogrio.read_dataframe(out / "changedet.gpkg", layer="structures")
    assert dict(zip(layer["id"], layer["review"], strict=True))[fp] == "false-positive"
    assert dict(zip(layer["id"], layer["review_note"], strict=True))[fp] == "checked"
    doc = json.loads((out / "structures.geojson").read_text())
    notes = {f["properties"]["id"]: f["properties"]["review_note"] for f in doc["features"]}
    assert notes[fp] == "checked" and notes[kept] == "checked"
    assert {n for sid, n in notes.items() if sid not in (fp, fp_candidate, kept)} == {None}
    assert "reviewed: false-positive (checked)" in (out / "report.html").read_text()
    assert 'href="alerts.geojson"' in (out / "report.html").read_text()  # the monitor's file
    assert (out / "alerts.geojson").is_file()


def _rename_in_ledger(state: Path, old: str, new: str) -> None:
    """The ledger names a structure `new`: what an earlier run would have stored had the
    footprint stood across an id cell border then."""
    db = sqlite3.connect(state)
    with db:
        for table, column in (
            ("structures", "id"),
            ("structure_history", "structure_id"),
            ("alerts", "structure_id"),
        ):
            db.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (new, old))
    db.close()


def test_a_structure_the_ledger_knows_by_another_id_keeps_it_without_a_drop_or_an_alert(
    tmp_path: Path,
) -> None:
    scenario = make_scenario(tmp_path)
    scenario.publish(until("2023-12-01"))
    _run(scenario)
    with State(scenario.state) as state:
        rows = state.structures("k1")
        alerted = state.alerted("k1")
    placed = next(r.id for r in rows.values() if r.status in ("confirmed", "bermed"))
    assert (placed, "new") in alerted
    zone, east, north = placed.split("-")[:3]
    known = f"{zone}-{int(east) + 100:06d}-{north}"  # the neighbouring cell's id
    _rename_in_ledger(scenario.state, placed, known)

    scenario.publish(until("2024-02-01"))
    report = _run(scenario)
    (check,) = report.checks
    assert check.outcome == "updated" and check.new_scenes
    assert not {a.structure_id for a in check.alerts} & {placed, known}
    with State(scenario.state) as state:
        rows = state.structures("k1")
        history = state.table_rows("structure_history", "k1")
    assert placed not in rows and rows[known].status in ("confirmed", "bermed")
    assert not [h for h in history if h[2] == known and h[3] == "dropped"]
    ids = {
        f["properties"]["id"]
        for f in json.loads((scenario.out / "k1" / "structures.geojson").read_text())["features"]
    }
    assert known in ids and placed not in ids


def test_review_of_an_unknown_structure_is_a_usage_error(grown: Scenario) -> None:
    done = monitor_cli(
        "review",
        "k1",
        "39N-000000-0000000",
        "--as",
        "unsure",
        "--state",
        str(grown.state),
        cwd=grown.root,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "has no structure" in done.stderr
    assert "its ids are the `id` column of its structures.csv" in done.stderr  # where to look


def test_review_of_a_dropped_structure_says_it_is_not_in_the_outputs(
    grown: Scenario, tmp_path: Path
) -> None:
    import sqlite3

    state = tmp_path / "state.db"
    db = sqlite3.connect(state)
    source = sqlite3.connect(grown.state)
    source.backup(db)  # a copy through SQLite: pages still in the WAL included
    source.close()
    (sid,) = db.execute("SELECT id FROM structures WHERE aoi_id = 'k1' LIMIT 1").fetchone()
    args = ("review", "k1", sid, "--as", "unsure", "--state", str(state))
    kept = monitor_cli(*args, cwd=grown.root)
    assert kept.returncode == 0 and "refreshes the outputs" in kept.stdout
    db.execute("UPDATE structures SET status = 'dropped' WHERE id = ?", (sid,))
    db.commit()
    db.close()
    dropped = monitor_cli(*args, cwd=grown.root)
    assert dropped.returncode == 0, dropped.stderr
    assert "it is dropped (not in the outputs)" in dropped.stdout


def test_status_reports_each_aoi(grown: Scenario) -> None:
    # The kit's reads are local (not cached): an entry planted in its cache folder is counted.
    planted = grown.root / "cache" / "ab" / "planted.npyc"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"x" * 1234)
    args = ("monitor", "status", "--config", str(grown.watchlist()))
    done = monitor_cli(*args, "--json", cwd=grown.root)
    planted.unlink()
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    folder = str(grown.root / "cache")
    assert doc["pixel_caches"] == [{"folder": folder, "bytes": 1234, "max_bytes": 20 * 10**9}]
    (aoi,) = doc["aois"]
    assert aoi["aoi"] == "k1" and aoi["pending_deliveries"] == 0
    assert aoi["last_scene"].startswith("2024-02-12")
    assert sum(aoi["structures"].values()) > 0
    cache = memo_folder(grown.state, "k1")
    assert aoi["period_cache_bytes"] == sum(p.stat().st_size for p in cache.iterdir()) > 0
    text = monitor_cli(*args, cwd=grown.root)
    assert f"pixel cache {folder}: 0.00 of 20 GB" in text.stdout
    assert "k1: last run" in text.stdout and "period cache" in text.stdout
    assert f"last scene {aoi['last_scene'][:10]} " in text.stdout  # to the minute, not the µs
    assert "alerts " in text.stdout and "(0 deliveries pending)" in text.stdout
    by_status = aoi["structures"]
    confirmed = sum(by_status.get(k, 0) for k in ("confirmed", "bermed", "vanished"))
    assert f"structures: {confirmed} confirmed" in text.stdout
    assert aoi["confirmed_total"] == confirmed


def test_status_counts_bermed_and_vanished_structures_as_confirmed() -> None:
    from changedet.cli import structure_counts

    by_status = {"bermed": 17, "candidate": 3, "confirmed": 36, "dropped": 2, "vanished": 1}
    assert (
        structure_counts(by_status)
        == "54 confirmed (17 bermed, 1 vanished), 3 candidate, 2 dropped"
    )
    assert structure_counts({"confirmed": 4}) == "4 confirmed"
    assert structure_counts({"candidate": 1}) == "1 candidate"
    assert structure_counts({}) == "none"


def test_the_period_cache_misses_on_damage_and_keeps_only_what_a_run_used(tmp_path: Path) -> None:
    import numpy as np

    from changedet.core.track import PeriodObservation
    from changedet.models import Period
    from changedet.monitor.memo import DiskMemo

    period = Period(datetime(2024, 1, 1).date(), datetime(2024, 2, 1).date(), "2024-01")
    observation = PeriodObservation(period, (), np.ones((2, 2), bool), ("a",))
    memo = DiskMemo(tmp_path / "memo")
    memo.put("k1", observation)
    memo.put("k2", observation)
    again = DiskMemo(tmp_path / "memo")
    got = again.get("k1")
    assert got is not None and got.scene_ids == ("a",) and got.observed.all()
    (tmp_path / "memo" / "k2.pickle").write_bytes(b"damaged")
    assert again.get("k2") is None and (again.hits, again.misses) == (1, 1)
    again.prune()  # k1 and k2 were asked for; a third entry would go
    assert sorted(p.name for p in (tmp_path / "memo").iterdir()) == ["k1.pickle", "k2.pickle"]
    DiskMemo(tmp_path / "memo").prune()
    assert list((tmp_path / "memo").iterdir()) == []


def test_tracker_states_in_the_period_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept tracker state comes back whole; one asked about is kept by the prune; one pickled
    in another layout (the unpacked masks of an earlier version) is a miss, not a failure."""
    import pickle

    import numpy as np

    from changedet.config import TrackConfig
    from changedet.core.bits import PackedMask
    from changedet.core.track import _Tracker
    from changedet.models import Grid
    from changedet.monitor.memo import DiskMemo

    grid = Grid.from_origin("EPSG:32639", 500_000.0, 3_950_000.0, 10.0, 7, 5)
    tracker = _Tracker(grid, TrackConfig(), 400.0, float("inf"))
    tracker.last_object = np.arange(35) % 3 == 0
    tracker.had_change.append(PackedMask.of(np.arange(35) % 2 == 0))
    memo = DiskMemo(tmp_path / "memo")
    memo.put_state("tracker-1", tracker)
    back = DiskMemo(tmp_path / "memo").get_state("tracker-1")
    assert isinstance(back, _Tracker)
    assert np.array_equal(back.last_object, tracker.last_object)
    assert back.last_object.dtype == bool
    assert np.array_equal(back.had_change[0].unpacked(), np.arange(35) % 2 == 0)
    assert back.owner.dtype == np.int64 and (back.owner == -1).all()

    with monkeypatch.context() as m:  # the layout before the masks were packed
        m.delattr(_Tracker, "__getstate__")
        (tmp_path / "memo" / "tracker-2.pickle").write_bytes(pickle.dumps(tracker))
    later = DiskMemo(tmp_path / "memo")
    assert later.get_state("tracker-2") is None
    assert later.has_state("tracker-1") and not later.has_state("tracker-3")
    later.prune()
    assert (tmp_path / "memo" / "tracker-1.pickle").is_file()


def test_a_kept_date_is_checked_chunk_by_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept date's CRC is taken a chunk at a time: with chunks much smaller than the entry,
    an intact entry opens and one flipped bit in a middle chunk is a miss."""
    import numpy as np

    import changedet.monitor.memo as memo_module
    from changedet.monitor.memo import DiskMemo

    monkeypatch.setattr(memo_module, "_CHUNK", 64)
    arrays = {"dn": np.arange(3000, dtype=np.uint16).reshape(50, 60)}
    memo = DiskMemo(tmp_path / "memo")
    memo.put_arrays("date-1", arrays)
    opened = memo.open_arrays("date-1")
    assert opened is not None
    os.close(opened[0])
    entry = tmp_path / "memo" / "date-1.arrays"
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    entry.write_bytes(bytes(blob))
    assert memo.open_arrays("date-1") is None


def test_kept_arrays_come_back_to_the_bit_and_damage_is_a_miss(tmp_path: Path) -> None:
    import numpy as np

    from changedet.monitor.memo import DiskMemo

    rng = np.random.default_rng(0)
    arrays = {
        "reflectance": rng.random((3, 5, 4)).astype(np.float32),
        "count": rng.integers(0, 9, (5, 4)).astype(np.uint16),
        "source_date": rng.integers(-1, 20000, (5, 4)).astype(np.int32),
    }
    DiskMemo(tmp_path / "memo").put_arrays("c1", arrays)
    DiskMemo(tmp_path / "memo").put_arrays("c2", arrays)
    memo = DiskMemo(tmp_path / "memo")
    got = memo.get_arrays("c1")
    assert got is not None and list(got) == list(arrays)
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype and not got[name].flags.writeable
        np.testing.assert_array_equal(got[name], array)
    # The arrays map the file (no copy): replacing the entry (atomically, as every write does)
    # or removing it leaves them as they were read.
    DiskMemo(tmp_path / "memo").put_arrays("c1", {n: a + 1 for n, a in arrays.items()})
    again = DiskMemo(tmp_path / "memo").get_arrays("c1")
    assert again is not None
    np.testing.assert_array_equal(again["count"], arrays["count"] + 1)
    (tmp_path / "memo" / "c1.arrays").unlink()
    DiskMemo(tmp_path / "memo").put_arrays("c1", arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(got[name], array)
    # Opened where it lies: the same arrays at the offsets given.
    opened = memo.open_arrays("c1")
    assert opened is not None
    fd, where = opened
    try:
        for name, array in arrays.items():
            at, dtype, shape = where[name]
            assert (dtype, shape) == (array.dtype, array.shape)
            raw = os.pread(fd, array.nbytes, at)
            np.testing.assert_array_equal(np.frombuffer(raw, dtype).reshape(shape), array)
    finally:
        os.close(fd)
    entry = tmp_path / "memo" / "c2.arrays"
    blob = bytearray(entry.read_bytes())
    blob[-7] ^= 0x01  # one bit of the payload
    entry.write_bytes(bytes(blob))
    assert memo.get_arrays("c2") is None and memo.open_arrays("c2") is None
    entry.write_bytes(bytes(blob[:-40]))  # truncated
    assert memo.get_arrays("c2") is None and memo.open_arrays("c2") is None
    assert memo.get_arrays("absent") is None and memo.open_arrays("absent") is None
    assert (sum(memo.array_hits.values()), sum(memo.array_misses.values())) == (2, 6)
    # Composites not kept (`keep_composites = false`): never written, never found; shifts are.
    lean = DiskMemo(tmp_path / "lean", skip=frozenset({"composite"}))
    lean.put_arrays("composite-1", arrays)
    lean.put_arrays("shift-1", {"shift": np.zeros(2)})
    assert lean.get_arrays("composite-1") is None and lean.get_arrays("shift-1") is not None
    assert [p.name for p in (tmp_path / "lean").iterdir()] == ["shift-1.arrays"]
    assert lean.has_arrays("shift-1") and not lean.has_arrays("composite-1")
    assert memo.has_arrays("c1") and not memo.has_arrays("absent")


def test_only_the_state_module_talks_to_sqlite() -> None:
    """The monitor's database has one owner; the other sqlite3 user writes the GeoPackage's
    style table (a GeoPackage is an SQLite file)."""
    import ast

    package = Path(__file__).resolve().parents[1] / "changedet"
    users = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "sqlite3" or n.startswith("sqlite3.") for n in names):
                users.add(path.relative_to(package).as_posix())
    assert users == {"monitor/state.py", "outputs/styles.py"}


def test_an_aoi_whose_assets_cannot_be_read_fails_rather_than_waits(tmp_path: Path) -> None:
    """Truncated COGs (or signed URLs that expired) do not get better by waiting: the AOI is
    `failed`, the run exits 1 for cron, nothing is committed, and the next run tries again."""
    scenario = make_scenario(tmp_path / "s")
    scenario.publish(until("2024-01-15"))
    broken = tmp_path / "broken"
    items = json.loads(scenario.catalog.read_text())
    for item in items["features"]:
        for asset in item["assets"].values():
            source = Path(asset["href"])
            target = broken / source.parent.name / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes()[:2000])
            asset["href"] = str(target)
    scenario.catalog.write_text(json.dumps(items))
    path = scenario.watchlist()
    path.write_text(path.read_text().replace(str(SAMPLE), str(broken)))
    done = monitor_cli("monitor", "run", "--config", str(path), "--quiet", cwd=scenario.root)
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("changedet: error")]
    assert "AOI 'k1'" in line and "no scene of 8 could be read" in line and "hrefs" in line
    assert ledger_outcome(scenario.state)["periods"] == []
    assert ledger_outcome(scenario.state)["structures"] == []
    again = monitor_cli("monitor", "run", "--config", str(path), "--quiet", cwd=scenario.root)
    assert again.returncode == 1 and "no scene of 8 could be read" in again.stderr


def test_a_scene_that_cannot_be_read_is_left_out_and_the_analyst_told(tmp_path: Path) -> None:
    """One corrupt scene among good ones: the AOI is updated without it (exit 0), and the run
    says which scene was left out, not only run.json."""
    scenario = make_scenario(tmp_path / "s")
    scenario.publish(until("2024-01-15"))
    copy = tmp_path / "copy"  # the sample's files, one of them cut short
    shutil.copytree(SAMPLE, copy)
    text = scenario.catalog.read_text().replace(str(SAMPLE), str(copy))
    item = json.loads(text)["features"][3]
    cut = Path(item["assets"]["swir16"]["href"])
    whole = cut.read_bytes()
    cut.write_bytes(whole[:2000])
    scenario.catalog.write_text(text)
    path = scenario.watchlist()
    path.write_text(path.read_text().replace(str(SAMPLE), str(copy)))
    done = monitor_cli("monitor", "run", "--config", str(path), "--quiet", cwd=scenario.root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "k1: updated: 8 new scene(s)" in done.stdout
    warnings = [ln for ln in done.stderr.splitlines() if ln.startswith("changedet: warning")]
    assert any(
        f"1 scene of AOI 'k1' could not be read and was left out ({item['id']}: unreadable "
        "asset: swir16:" in line
        for line in warnings
    ), done.stderr
    outcome = {row[1]: row[6] for row in ledger_outcome(scenario.state)["scenes"]}
    assert outcome[item["id"]] == "unreadable"
    status = monitor_cli("monitor", "status", "--config", str(path), cwd=scenario.root)
    assert "used, 1 unreadable, read again each run)" in status.stdout, status.stdout
    # Still broken: the next run, with nothing new, reads it again and says so again.
    still = monitor_cli("monitor", "run", "--config", str(path), "--quiet", cwd=scenario.root)
    assert "k1: updated: 0 new scene(s), 1 unreadable last time read again" in still.stdout
    assert "1 scene of AOI 'k1' could not be read" in still.stderr
    # Mended (a network error over, a link renewed): read again and used, with nothing new.
    cut.write_bytes(whole)
    again = monitor_cli("monitor", "run", "--config", str(path), "--quiet", cwd=scenario.root)
    assert again.returncode == 0 and "could not be read" not in again.stderr, again.stderr
    assert "1 unreadable last time read again" in again.stdout
    outcome = {row[1]: row[6] for row in ledger_outcome(scenario.state)["scenes"]}
    assert outcome[item["id"]] == "used"
    # Then nothing is left to do.
    idle = monitor_cli("monitor", "run", "--config", str(path), "--quiet", cwd=scenario.root)
    assert "k1: unchanged: nothing new" in idle.stdout


def test_a_full_disk_fails_the_aoi_with_what_to_do() -> None:
    import errno

    from changedet.monitor.run import _failed

    check = _failed("k1", OSError(errno.ENOSPC, "No space left on device"))
    assert check.outcome == "failed" and check.message.startswith("a disk is full (No space left")
    assert "set TMPDIR" in check.message
    other = _failed("k1", ValueError("boom"))
    assert other.message == (  # a bug stays one to report
        "unexpected ValueError: boom (rerun with --debug for details and report it)"
    )


def test_an_interrupt_a_library_wrapped_ends_the_monitoring_run(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One AOI's error fails that AOI and the watch-list goes on; a SIGTERM a library wrapped
    (a RuntimeError from it) was taken for such an error."""
    import changedet.monitor.run as monitor_run
    from changedet.cli import _Terminated

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            raise _Terminated()
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__") from exc

    monkeypatch.setattr(monitor_run, "run_aoi", wrapped)
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    monkeypatch.chdir(tmp_path)
    done = cli("monitor", "run", "--config", str(scenario.watchlist()), "--quiet")
    assert done.exit_code == 143 and "terminated (SIGTERM)" in done.stderr, done.stderr


def test_monitor_run_debug_shows_a_failed_aois_traceback(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AOI's unexpected failure was one line even with --debug, and did not say --debug
    would tell more: a failure that comes and goes could not be reported."""
    import changedet.monitor.run as monitor_run

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("boom")

    monkeypatch.setattr(monitor_run, "run_aoi", broken)
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    watch = str(scenario.watchlist())
    monkeypatch.chdir(tmp_path)
    plain = cli("monitor", "run", "--config", watch, "--quiet")
    assert plain.exit_code == 1 and "Traceback" not in plain.stderr
    said = "changedet: error: AOI 'k1': unexpected ValueError: boom (rerun with --debug"
    assert said in plain.stderr
    debug = cli("monitor", "run", "--config", watch, "--quiet", "--debug")
    assert debug.exit_code == 1 and said in debug.stderr
    trace = debug.stderr.split(said)[0]
    assert "Traceback (most recent call last)" in trace and "in broken" in trace


def test_a_state_emptied_to_zero_bytes_is_refused_while_outputs_stand(tmp_path: Path) -> None:
    """SQLite takes an empty file for a new database: the ledger's history would be lost and
    every structure alerted as new again. One line, exit 1, and nothing touched; a 0-byte file
    with no outputs yet (a first run killed at its start) just starts the ledger."""
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    _run(scenario)
    run_json = (scenario.out / "k1" / "run.json").read_bytes()
    scenario.state.write_bytes(b"")
    for wal in scenario.state.parent.glob(scenario.state.name + "-*"):
        wal.unlink()
    path = scenario.watchlist()
    done = monitor_cli(
        "monitor", "run", "--config", str(path), "--now", END.isoformat(), "--quiet", cwd=tmp_path
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "is empty (0 bytes)" in line and "(k1)" in line and "restore" in line
    assert scenario.state.stat().st_size == 0
    assert (scenario.out / "k1" / "run.json").read_bytes() == run_json
    # Nor do status and review write a new schema into it (the run would then take it as is).
    status = monitor_cli("monitor", "status", "--config", str(path), cwd=tmp_path)
    assert status.returncode == 1 and "is empty (0 bytes)" in status.stderr
    review = monitor_cli(
        "review", "k1", "39N-1-1", "--as", "confirmed", "--config", str(path), cwd=tmp_path
    )
    assert review.returncode == 1 and "is empty (0 bytes)" in review.stderr
    assert scenario.state.stat().st_size == 0

    shutil.rmtree(scenario.out / "k1")
    (check,) = _run(scenario).checks
    assert check.outcome == "updated" and check.alerts


def test_an_out_that_cannot_take_files_is_said_before_any_search(tmp_path: Path) -> None:
    """It was found after the whole pipeline ran for every AOI, with a hint to pass --out,
    which monitor run does not have."""
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    scenario.out.parent.mkdir(parents=True, exist_ok=True)
    scenario.out.write_text("a file where the outputs' folder belongs")
    path = scenario.watchlist()
    done = monitor_cli(
        "monitor", "run", "--config", str(path), "--now", END.isoformat(), "--quiet", cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "the watch-list's out" in line and "is a file, not a folder" in line
    assert "--out" not in line
    assert not scenario.state.exists()  # nothing searched, nothing recorded


def test_an_interrupt_while_delivering_says_the_alerts_wait_for_the_next_run(
    tmp_path: Path,
) -> None:
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    down = '[webhook]\nurl = "http://127.0.0.1:9/hook"\nretries = 1\nbackoff_s = 0.01'

    def interrupt(seconds: float) -> None:  # the retry's wait: Ctrl-C comes there
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        run_watchlist(load_watchlist(scenario.watchlist(extra=down)), now=END, sleep=interrupt)
    assert info.value.__notes__ == [
        "every AOI was checked; alerts not delivered yet go out with the next run"
    ]
    with State(scenario.state) as state:
        assert state.pending()  # kept, for the next run
        runs = state.db.execute("SELECT finished IS NOT NULL, outcome FROM runs").fetchall()
    assert runs == [(1, "interrupted")]  # it committed its AOIs: its clock holds


def test_a_run_stopped_before_any_aoi_leaves_no_run_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduler that never answers (exit 2) left an unfinished run whose clock then refused
    every later run at an earlier --now."""
    import socket

    from changedet import compute

    monkeypatch.setattr(compute, "CONNECT_S", 1.0)
    scenario = make_scenario(tmp_path)
    scenario.publish(until(GROWN_FIRST))
    watch = load_watchlist(scenario.watchlist())
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(UsageError, match="Dask scheduler"):
            run_watchlist(watch.with_cluster(address), now=END)
    with State(scenario.state) as state:
        assert state.latest_now() is None
        assert state.db.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)
    report = run_watchlist(watch, now=END - timedelta(days=30))  # not refused as going back
    assert [c.outcome for c in report.checks] == ["updated"]
    # A run whose check was committed, then failed before it was recorded, keeps its clock:
    # rows of the ledger name it.
    with State(scenario.state) as state:
        run_id = state.begin_run(END)
        with state.transaction() as db:
            db.execute(
                "INSERT INTO structure_history (aoi_id, structure_id, change, run_id, at) "
                "VALUES ('k1', 's', 'new', ?, 'now')",
                (run_id,),
            )
        state.abandon_run(run_id, interrupted=False)
        assert state.latest_now() == END


def test_a_full_disk_under_the_state_is_said_and_commits_nothing(tmp_path: Path) -> None:
    """SQLite's 'database or disk is full' came out as 'unexpected OperationalError ... report
    it'. A page limit gives SQLITE_FULL as a full disk does."""
    from changedet.errors import OutputError

    with State(tmp_path / "s.sqlite") as state:
        before = state.latest_now()
        pages = state.db.execute("PRAGMA page_count").fetchone()[0]
        state.db.execute(f"PRAGMA max_page_count = {pages}")
        full = pytest.raises(OutputError, match=r"state database .* is full .* free space there")
        with full, state.transaction() as db:
            db.execute("CREATE TABLE filler (x TEXT)")
            for _ in range(50):
                db.execute("INSERT INTO filler VALUES (?)", ("x" * 4000,))
        assert state.latest_now() == before
        assert not state.db.execute(
            "SELECT name FROM sqlite_master WHERE name = 'filler'"
        ).fetchall()


def test_a_receiver_that_answers_late_is_not_called_unreachable() -> None:
    """It may have taken the alert: the line says a repeat may come, and what to raise."""
    import urllib.error

    from changedet.monitor.alerts import _why

    for late in (TimeoutError("timed out"), urllib.error.URLError(TimeoutError("timed out"))):
        said = _why(late, 10.0)
        assert said.startswith("no answer within timeout_s = 10 s"), said
        assert "twice" in said and "cannot reach" not in said
    refused = _why(ConnectionRefusedError(111, "Connection refused"), 10.0)
    assert refused == "cannot reach the server (connection refused)"


def test_a_review_made_while_a_run_computes_is_kept_and_alerts_no_false_positive(
    tmp_path: Path,
) -> None:
    """The run took the verdicts when it planned: a structure called a false positive while it
    computed was alerted `new` and delivered, and its verdict overwritten with NULL."""
    from changedet.pipeline import PipelineIO

    scenario = make_scenario(tmp_path)
    scenario.overrides["track.min_persistence"] = 3
    scenario.publish(until("2023-12-20"))
    _run(scenario)
    with State(scenario.state) as state:
        candidates = [r.id for r in state.structures("k1").values() if r.status == "candidate"]
    assert candidates
    base = PipelineIO.default()

    def write(*args: object, **kwargs: object) -> object:
        with State(scenario.state) as other:  # the analyst, while the run computes
            for sid in candidates:
                other.add_review("k1", sid, "false-positive", "road works")
        return base.write(*args, **kwargs)  # type: ignore[arg-type]

    scenario.publish()
    report = _run(scenario, io=replace(base, write=write))
    assert not {a.structure_id for a in report.checks[0].alerts} & set(candidates)
    with State(scenario.state) as state:
        rows = state.structures("k1")
        assert {a.structure_id for a in state.alerts("k1")}.isdisjoint(candidates)
        assert all(d.alert.structure_id not in candidates for d in state.pending())
    assert any(rows[sid].confirmed for sid in candidates)  # it would have been alerted
    assert {rows[sid].review for sid in candidates} == {"false-positive"}
    assert {rows[sid].review_note for sid in candidates} == {"road works"}


def test_a_structure_confirmed_after_it_vanished_is_told_new_then_vanished() -> None:
    """Runs spaced out (a month apart) saw it first confirmed and already vanished: it got a
    `new` alert only, never `vanished`, where monthly runs would have told both."""
    stored = {"s1": _row("s1", "candidate")}
    late = ledger_changes("k", stored, [_row("s1", "vanished", bermed=True)], set())
    assert [a.kind for a in late.alerts] == ["new", "vanished"]
    told = {("s1", a.kind) for a in late.alerts}
    again = ledger_changes("k", {"s1": late.rows[0]}, [_row("s1", "vanished")], told)
    assert again.alerts == ()
    # The `new` text says it is bermed, as the payload does.
    assert "new confirmed building, ringed by a berm: s1" in describe_alert(late.alerts[0])
    plain = ledger_changes("k", stored, [_row("s1", "confirmed", bermed=False)], set())
    assert "new confirmed building: s1" in describe_alert(plain.alerts[0])


def test_alerts_of_a_young_watch_say_persistence_was_not_checked(tmp_path: Path) -> None:
    """Two clear periods: confirmed on one, persistence not checked (run.json says so), yet
    its alerts read as confirmed `new` with nothing saying so."""
    scenario = make_scenario(tmp_path)
    scenario.publish(until("2023-11-01"))
    path = scenario.watchlist()
    path.write_text(path.read_text().replace('start = "2023-06-01"', 'start = "2023-09-01"'))
    young = run_watchlist(load_watchlist(path), now=END).checks[0]
    run_json = json.loads((scenario.out / "k1" / "run.json").read_text())
    assert run_json["comparison"]["persistence_checked"] is False
    assert young.alerts
    for alert in young.alerts:
        assert alert.payload["persistence_checked"] is False
        assert describe_alert(alert).endswith(
            "; persistence not checked yet (too few clear periods))"
        )
    scenario.publish()
    grown_up = run_watchlist(load_watchlist(path), now=END).checks[0]
    assert grown_up.alerts
    assert all(a.payload["persistence_checked"] is True for a in grown_up.alerts)
    assert not any("persistence" in describe_alert(a) for a in grown_up.alerts)


def test_a_run_whose_delivery_failed_is_recorded_so(tmp_path: Path) -> None:
    """It exits 1, yet `runs.outcome` said `ok`."""
    from loopback import free_port

    scenario = make_scenario(tmp_path)
    scenario.publish(until("2024-01-01"))
    extra = f'[webhook]\nurl = "http://127.0.0.1:{free_port()}/hook"\nretries = 0\n'
    report = run_watchlist(load_watchlist(scenario.watchlist(extra=extra)), now=END)
    assert report.failed == 0 and report.deliveries.errors
    with State(scenario.state) as state:
        (run,) = state.table_rows("runs")
    assert "undelivered" in run


def test_a_catalog_whose_every_item_is_unreadable_fails_the_aoi_as_run_does(
    tmp_path: Path,
) -> None:
    """`changedet run` says the catalog holds no readable item; the monitor said "unchanged:
    nothing new", exit 0, and no warning."""
    scenario = make_scenario(tmp_path)
    folder = tmp_path / "broken-catalog"
    folder.mkdir()
    links = []
    for i in range(3):
        (folder / f"item{i}.json").write_text("{ not json")
        links.append({"rel": "item", "href": f"./item{i}.json", "type": "application/json"})
    catalog = folder / "catalog.json"
    catalog.write_text(
        json.dumps(
            {
                "type": "Catalog",
                "stac_version": "1.0.0",
                "id": "c",
                "description": "d",
                "links": links,
            }
        )
    )
    path = scenario.watchlist(catalog=str(catalog))
    done = monitor_cli("monitor", "run", "--config", str(path), "--quiet", cwd=scenario.root)
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("changedet: error")]
    assert "AOI 'k1'" in line and "holds no STAC items (3 document(s) in it could" in line, line
    assert "a watch's catalog" in line


def test_a_state_on_a_read_only_filesystem_says_where_to_point_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 1 and "cannot create the lock file ...: Read-only file system" said no fix."""
    import errno

    from changedet.monitor import lock

    real_open = os.open

    def read_only(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".lock"):  # a file system mounted read-only refuses to create
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lock.os, "open", read_only)
    with pytest.raises(ConfigError) as refused, lock.hold_lock(tmp_path / "state.sqlite"):
        pass
    assert refused.value.exit_code == 2
    assert str(refused.value) == (
        f"cannot create the lock file '{tmp_path / 'state.sqlite.lock'}': Read-only file "
        "system; point the watch-list's state (or --state) at a folder this job can write"
    )
