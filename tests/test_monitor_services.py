"""The monitoring job against real servers on 127.0.0.1: `rustac serve` with a catalog that
grows between runs (pixels over HTTP range requests), a webhook receiver that fails its first
requests and an SMTP server (aiosmtpd); and as real processes: SIGKILL at random moments, two
runs started together."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from loopback import RUSTAC, RangeServer, free_port, write_collection
from monitorkit import (
    LEDGER,
    SAMPLE,
    integrity,
    ledger_dump,
    ledger_outcome,
    make_scenario,
    monitor_cli,
    until,
)

from changedet.monitor.run import run_watchlist
from changedet.monitor.state import State
from changedet.monitor.watchlist import load_watchlist
from changedet.pipeline import PipelineIO

END = datetime(2024, 7, 1, tzinfo=UTC)


# --- a STAC API that grows: rustac restarted on one port with more items --------------------------


class GrowingStac:
    """`rustac serve` on a fixed 127.0.0.1 port, restarted with the items published so far."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self, items: list[dict[str, Any]]) -> None:
        self.stop()
        coll, feats = write_collection(self.root, items)
        self.proc = subprocess.Popen(
            [RUSTAC, "serve", str(coll), str(feats), "--addr", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/collections", timeout=1) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("rustac serve did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def _rustac_missing() -> bool:
    return not (Path(RUSTAC).exists() or __import__("shutil").which(RUSTAC))


@pytest.mark.skipif(_rustac_missing(), reason="rustac not installed (pip install rustac)")
def test_a_growing_catalog_is_processed_incrementally(tmp_path: Path) -> None:
    with RangeServer(SAMPLE) as pixels:
        scenario = make_scenario(tmp_path, base=pixels.url + "/")
        stac = GrowingStac(tmp_path / "stac")
        try:
            watch = load_watchlist(scenario.watchlist(catalog=stac.url))
            first_items = [i for i in scenario.items if until("2024-01-01")(i)]
            stac.serve(first_items)
            first = run_watchlist(watch, now=END)
            assert first.checks[0].outcome == "updated"
            assert len(first.checks[0].new_scenes) == len(first_items)
            # The catalog grows: the second run fetches pixels of the new scenes only.
            stac.serve(scenario.items)
            pixels.stats.reset()
            second = run_watchlist(watch, now=END)
            new = set(second.checks[0].new_scenes)
            assert new and not new & {i["id"] for i in first_items}
            fetched = {p.split("/")[-2] for p in pixels.stats.paths}
            assert fetched and fetched <= new
            assert second.checks[0].alerts  # structures appeared after January
            # Nothing new: a no-op, byte for byte, no alert, no pixel fetched.
            before = ledger_dump(scenario.state, LEDGER)
            pixels.stats.reset()
            third = run_watchlist(watch, now=END)
            assert [(c.outcome, c.alerts) for c in third.checks] == [("unchanged", ())]
            assert ledger_dump(scenario.state, LEDGER) == before
            assert pixels.stats.requests == 0
        finally:
            stac.stop()


def _unreadable(*args: Any, **kwargs: Any) -> Any:
    raise OSError("the disk under the pixels went away")


@pytest.mark.skipif(_rustac_missing(), reason="rustac not installed (pip install rustac)")
def test_a_search_cut_short_is_said_every_run_until_one_is_complete(tmp_path: Path) -> None:
    """The monitor rebuilt the search without where it stopped: no run said that scenes were
    missing, and later runs, searching from the newest scene, never went back for them."""
    with RangeServer(SAMPLE) as pixels:
        scenario = make_scenario(tmp_path, base=pixels.url + "/")
        stac = GrowingStac(tmp_path / "stac")
        try:
            stac.serve(scenario.items)
            scenario.overrides["catalog.max_items"] = 5
            scenario.overrides["catalog.page_size"] = 2
            watch = load_watchlist(scenario.watchlist(catalog=stac.url))
            (first,) = run_watchlist(watch, now=END).checks
            assert (
                first.search_stopped
                == "search stopped at catalog.max_items=5; raise it or narrow the dates or AOI"
            )
            assert first.summary is not None
            assert any("cut short" in w for w in first.summary.warnings)
            (second,) = run_watchlist(watch, now=END).checks  # from the start again: cut again
            assert second.search_stopped == first.search_stopped
            scenario.overrides["catalog.max_items"] = 1000  # an edit of the watch: all of it
            watch = load_watchlist(scenario.watchlist(catalog=stac.url))
            # A whole search whose scenes are never committed (the check fails) keeps the mark:
            # it was cleared at the search, and the next runs began at the newest scene.
            broken = replace(PipelineIO.default(), read=_unreadable)
            (failed,) = run_watchlist(watch, now=END, io=broken).checks
            assert failed.outcome == "failed"
            with State(scenario.state) as state:
                row = state.aoi("k1")
                assert row is not None and row["search_stopped"] == first.search_stopped
            (third,) = run_watchlist(watch, now=END).checks
            assert third.search_stopped is None and third.outcome == "updated"
            with State(scenario.state) as state:
                row = state.aoi("k1")
                assert row is not None and row["search_stopped"] is None
                assert len(state.scenes("k1")) == len(scenario.items)
        finally:
            stac.stop()


# --- webhook and e-mail ------------------------------------------------------------------------------


class Hook(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1: `answer(key, n)` is the status of its n-th request (the
    first is 1), for the alert of idempotency key `key`; a 2xx answer keeps (key, body)."""

    daemon_threads = True

    def __init__(self, answer: Callable[[str, int], int]) -> None:
        self.requests = 0
        self.accepted: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server: Hook = self.server  # type: ignore[assignment]
                key = self.headers["Idempotency-Key"]
                with server.lock:
                    server.requests += 1
                    status = answer(key, server.requests)
                    if 200 <= status < 300:
                        server.accepted.append((key, json.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@contextlib.contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _inbox(refuse: Sequence[str] = ()) -> Any:
    """An aiosmtpd handler that keeps (recipient, alert key) of each message it takes, and
    refuses the recipients in its `refuse` (a set the test may change) as unknown."""
    from aiosmtpd.handlers import Message

    class Inbox(Message):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.got: list[tuple[str, str]] = []
            self.refuse = set(refuse)

        async def handle_RCPT(
            self, server: Any, session: Any, envelope: Any, address: str, options: Any
        ) -> str:
            if address in self.refuse:
                return "550 5.1.1 no such user"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        def handle_message(self, message: Any) -> None:
            self.got.append((str(message["X-RcptTo"]), str(message["X-Changedet-Alert"])))

        @property
        def keys(self) -> list[str]:
            return [key for _, key in self.got]

    return Inbox()


def test_every_alert_is_delivered_exactly_once(tmp_path: Path) -> None:
    smtpd = pytest.importorskip("aiosmtpd.controller")

    inbox = _inbox()
    mail = smtpd.Controller(inbox, hostname="127.0.0.1", port=free_port())
    mail.start()
    receiver = Hook(lambda key, n: 503 if n <= 3 else 204)  # 503 to its first three
    waits: list[float] = []
    try:
        with serving(receiver):
            scenario = make_scenario(tmp_path)
            extra = (
                f'[webhook]\nurl = "{receiver.url}"\nretries = 1\nbackoff_s = 0.5\n'
                f'[smtp]\nhost = "127.0.0.1"\nport = {mail.port}\nfrom = "cd@test"\nto = ["a@test"]\n'
            )
            watch = load_watchlist(scenario.watchlist(extra=extra))
            scenario.publish(until("2024-01-01"))
            first = run_watchlist(watch, now=END, sleep=waits.append)
            # 2 attempts for the first alert, both refused: the webhook waits for the next run.
            assert first.deliveries.errors and receiver.accepted == []
            assert waits == [0.5]
            scenario.publish()
            second = run_watchlist(watch, now=END, sleep=waits.append)  # one more 503, then ok
            assert second.deliveries.errors == ()
            third = run_watchlist(watch, now=END, sleep=waits.append)  # nothing left to send
            assert third.deliveries.delivered == 0
        with State(scenario.state) as state:
            keys = [a.key for a in state.alerts("k1")]
            assert state.pending() == []
        assert len(keys) >= 2
        assert sorted(k for k, _ in receiver.accepted) == sorted(keys)  # each once
        assert [body["key"] for k, body in receiver.accepted] == [k for k, _ in receiver.accepted]
        # the outline as a GeoJSON object, as in alerts.geojson, not as a string of it
        assert all(
            body["geometry"]["type"] in ("Polygon", "MultiPolygon") for _, body in receiver.accepted
        )
        assert sorted(inbox.keys) == sorted(keys)
    finally:
        mail.stop()


def test_an_alert_or_a_recipient_refused_waits_alone(tmp_path: Path) -> None:
    """A webhook refusing one alert (HTTP 413) held back every later one, run after run; a mail
    server refusing one of two recipients had the alert counted delivered, lost for that one.
    Now each waits alone, named, the others go, and nothing is sent twice."""
    smtpd = pytest.importorskip("aiosmtpd.controller")
    inbox = _inbox(refuse=["b@test"])
    mail = smtpd.Controller(inbox, hostname="127.0.0.1", port=free_port())
    mail.start()
    refused: list[str] = []  # the first alert offered, refused with 413 while `choosy` holds
    choosy = [True]

    def answer(key: str, n: int) -> int:
        refused[:] = refused or [key]
        return 413 if choosy[0] and key == refused[0] else 204

    receiver = Hook(answer)
    try:
        with serving(receiver):
            scenario = make_scenario(tmp_path)
            extra = (
                f'[webhook]\nurl = "{receiver.url}"\nretries = 1\nbackoff_s = 0.01\n'
                f'[smtp]\nhost = "127.0.0.1"\nport = {mail.port}\nfrom = "cd@test"\n'
                'to = ["a@test", "b@test"]\nretries = 1\nbackoff_s = 0.01\n'
            )
            watch = load_watchlist(scenario.watchlist(extra=extra))
            scenario.publish()
            first = run_watchlist(watch, now=END, sleep=lambda s: None)
            with State(scenario.state) as state:
                keys = [a.key for a in state.alerts("k1")]
            assert len(keys) >= 2
            errors = " | ".join(first.deliveries.errors)
            assert f"webhook: alert {refused[0]} (k1 " in errors and "HTTP 413" in errors
            # A refused recipient is said once, not once per alert: its alerts all wait.
            assert (
                first.deliveries.errors.count(
                    "smtp: the server refused b@test (550 5.1.1 no such user); check [smtp] to"
                )
                == 1
                and "smtp: alert" not in errors
            )
            assert sorted(k for k, _ in receiver.accepted) == sorted(set(keys) - {refused[0]})
            assert sorted(k for to, k in inbox.got if to == "a@test") == sorted(keys)
            assert not [k for to, k in inbox.got if to == "b@test"]
            # Mended: the waiting ones go, once; nothing goes twice.
            choosy[0] = False
            inbox.refuse.clear()
            second = run_watchlist(watch, now=END, sleep=lambda s: None)
            assert second.deliveries.errors == () and second.deliveries.failed == 0
        assert sorted(k for k, _ in receiver.accepted) == sorted(keys)
        for to in ("a@test", "b@test"):
            assert sorted(k for rcpt, k in inbox.got if rcpt == to) == sorted(keys)
    finally:
        mail.stop()


def test_an_older_states_one_mail_delivery_goes_to_each_recipient_alone(tmp_path: Path) -> None:
    """A state of the version before kept one 'smtp' delivery for all recipients: sent as one
    mail, a recipient the server refused was lost without a word. Such rows become one per
    recipient first."""
    smtpd = pytest.importorskip("aiosmtpd.controller")
    scenario = make_scenario(tmp_path)
    scenario.publish()
    run_watchlist(load_watchlist(scenario.watchlist()), now=END)  # alerts, no channel yet
    with State(scenario.state) as state:  # as the version before kept them
        keys = [a.key for a in state.alerts("k1")]
        with state.transaction() as db:
            db.executemany(
                "INSERT INTO deliveries (alert_key, channel, status) VALUES (?, 'smtp', 'pending')",
                [(k,) for k in keys],
            )
    inbox = _inbox(refuse=["b@test"])
    mail = smtpd.Controller(inbox, hostname="127.0.0.1", port=free_port())
    mail.start()
    try:
        extra = (
            f'[smtp]\nhost = "127.0.0.1"\nport = {mail.port}\nfrom = "cd@test"\n'
            'to = ["a@test", "b@test"]\nretries = 0\n'
        )
        report = run_watchlist(load_watchlist(scenario.watchlist(extra=extra)), now=END)
    finally:
        mail.stop()
    assert sorted(k for to, k in inbox.got if to == "a@test") == sorted(keys)
    assert "smtp: the server refused b@test (550 5.1.1 no such user); check [smtp] to" in (
        report.deliveries.errors
    )
    with State(scenario.state) as state:
        waiting = state.pending()
    assert sorted(d.alert.key for d in waiting) == sorted(keys)
    assert {d.channel for d in waiting} == {"smtp:b@test"}


def test_a_webhook_refusing_changedet_itself_is_said_once_with_what_to_check(
    tmp_path: Path,
) -> None:
    """401 is about the channel (its URL or token), not each alert: one line, every alert
    waits, nothing posted again and again within the run."""

    locked = Hook(lambda key, n: 401)
    with serving(locked):
        scenario = make_scenario(tmp_path)
        scenario.publish()
        extra = f'[webhook]\nurl = "{locked.url}"\nretries = 2\nbackoff_s = 0.01\n'
        report = run_watchlist(load_watchlist(scenario.watchlist(extra=extra)), now=END)
    assert report.deliveries.errors == (
        "webhook: HTTP 401: the receiver refuses changedet; check [webhook] url and its token",
    )
    assert locked.requests == 1  # not retried, nor the next alerts offered
    with State(scenario.state) as state:
        assert len(state.pending()) == len(state.alerts("k1")) >= 2


def test_a_delivery_that_cannot_work_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SMTP password missing from the job's environment, a wrong one, a webhook nobody
    answers: each failure says what is wrong in words, the alerts wait, and once mended they go."""
    smtpd = pytest.importorskip("aiosmtpd.controller")
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"cd", b"right")
        return AuthResult(success=ok, handled=False)  # the server answers 235 or 535

    inbox = _inbox()
    mail = smtpd.Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=check,
        auth_require_tls=False,
        auth_exclude_mechanism=["LOGIN"],  # smtplib tries PLAIN; one answer per attempt
    )
    mail.start()
    monkeypatch.delenv("CHANGEDET_TEST_SMTP_PASSWORD", raising=False)
    try:
        scenario = make_scenario(tmp_path)
        extra = (
            f'[webhook]\nurl = "http://127.0.0.1:{free_port()}/hook"\nretries = 0\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {mail.port}\nfrom = "cd@test"\nto = ["a@test"]\n'
            'username = "cd"\npassword_env = "CHANGEDET_TEST_SMTP_PASSWORD"\nretries = 2\n'
        )
        watch = load_watchlist(scenario.watchlist(extra=extra))
        scenario.publish(until("2024-01-01"))
        waits: list[float] = []
        unset = run_watchlist(watch, now=END, sleep=waits.append).deliveries.errors
        assert sorted(unset) == [
            "smtp: the password variable CHANGEDET_TEST_SMTP_PASSWORD is not set in this job's "
            "environment; set it where the job runs (cron and systemd do not read your shell's "
            "profile)",
            "webhook: cannot reach the server (connection refused)",
        ]
        assert waits == [] and inbox.keys == []  # waiting would not set it: no retries
        monkeypatch.setenv("CHANGEDET_TEST_SMTP_PASSWORD", "wrong")
        wrong = run_watchlist(watch, now=END, sleep=waits.append).deliveries.errors
        assert "smtp: login refused (535); check username and password" in wrong
        assert waits == [] and inbox.keys == []
        monkeypatch.setenv("CHANGEDET_TEST_SMTP_PASSWORD", "right")
        run_watchlist(watch, now=END, sleep=waits.append)
        with State(scenario.state) as state:
            keys = sorted(a.key for a in state.alerts("k1"))
            assert [d.channel for d in state.pending()] == ["webhook"] * len(keys)
        assert keys and sorted(inbox.keys) == keys
    finally:
        mail.stop()


class Moved(ThreadingHTTPServer):
    """A webhook on 127.0.0.1 whose /hook answers 302 to /landing (http to https, say): a
    client that follows it sends a GET without the alert to /landing, which answers 200."""

    daemon_threads = True

    def __init__(self) -> None:
        self.posted: list[str] = []
        self.got: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, location: str | None = None) -> None:
                self.send_response(code)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server: Moved = self.server  # type: ignore[assignment]
                if self.path == "/hook":
                    self._answer(302, "/landing")
                else:
                    server.posted.append(self.headers["Idempotency-Key"])
                    self._answer(204)

            def do_GET(self) -> None:
                server: Moved = self.server  # type: ignore[assignment]
                server.got.append(self.path)
                self._answer(200)

        super().__init__(("127.0.0.1", 0), Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


def test_a_webhook_that_redirects_keeps_its_alerts_and_says_where_it_moved(
    tmp_path: Path,
) -> None:
    """A redirect is not a delivery: followed, the POST would become a GET without the alert
    and count as delivered. The alerts wait, the warning names the new address (no retries:
    waiting does not mend a URL), and once the URL is mended they go."""
    moved = Moved()
    with serving(moved):
        scenario = make_scenario(tmp_path)
        hook = f'[webhook]\nurl = "{moved.url("/hook")}"\nretries = 2\nbackoff_s = 0.5\n'
        scenario.publish(until("2024-01-01"))
        waits: list[float] = []
        first = run_watchlist(
            load_watchlist(scenario.watchlist(extra=hook)), now=END, sleep=waits.append
        )
        assert first.deliveries.errors == (
            f"webhook: HTTP 302: the webhook moved to {moved.url('/landing')}; set [webhook] url "
            "to it",
        )
        assert moved.got == [] and moved.posted == [] and waits == []
        with State(scenario.state) as state:
            keys = sorted(a.key for a in state.alerts("k1"))
            assert keys and len(state.pending()) == len(keys)
        # The webhook taken out of the watch-list: its alerts still wait, and the run says so
        # (not as a failed delivery: it may have been taken out on purpose).
        bare = run_watchlist(load_watchlist(scenario.watchlist()), now=END, sleep=waits.append)
        assert bare.deliveries.errors == () and bare.deliveries.unsent == (
            f"{len(keys)} alert(s) wait for the webhook, which the watch-list no longer has; "
            "add [webhook] back to send them (every alert is also in alerts.geojson)",
        )
        mended = hook.replace("/hook", "/landing")
        run_watchlist(load_watchlist(scenario.watchlist(extra=mended)), now=END, sleep=waits.append)
        assert sorted(moved.posted) == keys and moved.got == []


# --- processes: SIGKILL at random moments, two runs at once ---------------------------------------


def _start(watch: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "changedet",
            "monitor",
            "run",
            "--config",
            str(watch),
            "--now",
            END.isoformat(),
            "--quiet",
        ],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


KILLS = 21  # 7 per step


def test_sigkill_at_random_moments_leaves_a_consistent_state(tmp_path: Path) -> None:
    """Two AOIs, a catalog that grows in three steps. At each step a run is killed at random
    moments of its work (each time from the state the step started with; each kill followed by
    PRAGMA integrity_check); then a run from the last killed state must reach the ledger an
    uninterrupted run reached."""
    boxes = {"k1": (150, 100, 200, 150), "k2": (130, 140, 180, 190)}
    steps = ["2023-12-01", "2024-02-15", "2024-07-01"]
    quick = {"output.geopackage": False}
    reference = make_scenario(tmp_path / "reference", boxes=boxes)
    reference.overrides.update(quick)
    ref_watch = reference.watchlist(aois=("k1", "k2"))
    crashed = make_scenario(tmp_path / "crashed", boxes=boxes)
    crashed.overrides.update(quick)
    watch = crashed.watchlist(aois=("k1", "k2"))
    snapshot = tmp_path / "snapshot"
    rng = random.Random(12)
    killed = 0
    for step in steps:
        reference.publish(until(step))
        t0 = time.monotonic()
        done = monitor_cli(*_RUN, str(ref_watch), cwd=reference.root)
        duration = time.monotonic() - t0  # what the killed runs are doing: the same work
        assert done.returncode == 0, done.stderr
        expected = ledger_outcome(reference.state)
        crashed.publish(until(step))
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(crashed.root, snapshot)
        for kill in range(KILLS // len(steps)):
            if kill:  # each kill interrupts the whole step's work, at another moment
                shutil.rmtree(crashed.root)
                shutil.copytree(snapshot, crashed.root)
            proc = _start(watch, crashed.root)
            time.sleep(rng.uniform(0.2, 0.95 * duration))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
            proc.communicate(timeout=60)
            if crashed.state.exists():
                assert integrity(crashed.state) == "ok", f"after a kill at step {step}"
        done = monitor_cli(*_RUN, str(watch), cwd=crashed.root)
        assert done.returncode == 0, done.stderr
        got = ledger_outcome(crashed.state)
        for table in ("structures", "alerts", "periods", "scenes"):
            assert got[table] == expected[table], (step, table)
    assert killed >= KILLS - 3  # a run may now and then finish before its moment comes
    # Outputs are whole: no half-written folder left, the last run's files complete.
    assert not [p for p in crashed.out.iterdir() if p.name.endswith((".part", ".old"))]
    for aoi in boxes:
        assert json.loads((crashed.out / aoi / "run.json").read_text())["files"]


_RUN = ("monitor", "run", "--now", END.isoformat(), "--quiet", "--config")


def test_two_runs_started_together_one_proceeds_the_other_refuses(tmp_path: Path) -> None:
    scenario = make_scenario(tmp_path)
    scenario.publish(until("2024-01-01"))
    watch = scenario.watchlist()
    first, second = _start(watch, tmp_path), _start(watch, tmp_path)
    results = [(p.wait(timeout=120), *p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, _, err in results if code == 1)
    assert refused.count("\n") == 1 and "another monitor run" in refused
    assert "Traceback" not in refused


# --- the outbox alone: a ledger written by hand, delivered to real receivers -------------------------


def _outbox(path: Path, channels: Sequence[str], kinds: Sequence[str] = ("new",)) -> State:
    """A state holding one confirmed structure "s1" of AOI "k1" and its alerts of `kinds`,
    waiting on `channels`."""
    from changedet.monitor.decide import ledger_changes
    from changedet.monitor.state import CheckRecord, StructureRow

    row = StructureRow(
        "s1", "confirmed", "building", True, False, 900.0, 0.8, "2023-09-01", "2023-10-01",
        None, 35.6, 51.6, None,
    )  # fmt: skip
    changes = ledger_changes("k1", {}, [row], set())
    alerts = [
        replace(changes.alerts[0], key=f"{kind}-key", kind=kind) for kind in kinds
    ]  # several kinds of one structure, as the runs of months would raise
    state = State(path)
    run_id = state.begin_run(END)
    state.commit_check(
        run_id,
        CheckRecord(
            "k1", "k1", str(path.parent), structures=[row], alerts=alerts, channels=channels
        ),
    )
    return state


def test_a_false_positive_reviewed_while_alerts_go_out_is_not_sent_nor_revived(
    tmp_path: Path,
) -> None:
    """The deliveries were listed once, at the start: an alert reviewed out meanwhile was still
    sent, and a failed one came back from 'cancelled' to 'pending' for the next run."""
    from changedet.monitor.alerts import deliver_pending
    from changedet.monitor.watchlist import WebhookConfig

    path = tmp_path / "s.sqlite"

    def answer(key: str, n: int) -> int:
        if n == 1:  # the analyst rules the structure out while its first alert goes out
            with State(path) as other:
                other.add_review("k1", "s1", "false-positive", "during the run")
            return 503  # and that request fails: its delivery stays cancelled
        return 204

    receiver = Hook(answer)
    with serving(receiver), _outbox(path, ["webhook"], ("new", "bermed")) as state:
        hook = WebhookConfig(url=receiver.url, retries=0, backoff_s=0.0, timeout_s=5.0)
        report = deliver_pending(state, webhook=hook, smtp=None, sleep=lambda s: None)
        assert receiver.requests == 1 and receiver.accepted == []  # "bermed" not sent
        assert report.delivered == 0 and state.pending() == []
        statuses = state.db.execute("SELECT status FROM deliveries ORDER BY alert_key").fetchall()
        assert statuses == [("cancelled",), ("cancelled",)]


def test_a_false_positive_taken_back_gets_its_waiting_alerts_delivered_once(
    tmp_path: Path,
) -> None:
    """A false-positive verdict cancels the structure's waiting deliveries; a later verdict
    that takes it back did not restore them: the alert was lost for good."""
    from changedet.monitor.alerts import deliver_pending
    from changedet.monitor.watchlist import WebhookConfig

    receiver = Hook(lambda key, n: 204)
    with serving(receiver), _outbox(tmp_path / "s.sqlite", ["webhook"], ("new", "bermed")) as state:
        hook = WebhookConfig(url=receiver.url, retries=0, backoff_s=0.0, timeout_s=5.0)
        # "new" went out; "bermed" waits (its receiver down, say) when the analyst rules it out.
        state.mark_delivery("new-key", "webhook", delivered=True, attempts=1, error=None)
        state.add_review("k1", "s1", "false-positive", None)
        assert state.pending() == []
        state.add_review("k1", "s1", "unsure", "looked again")
        assert [(d.alert.key, d.channel) for d in state.pending()] == [("bermed-key", "webhook")]
        report = deliver_pending(state, webhook=hook, smtp=None)
        assert (report.delivered, report.failed) == (1, 0)
        assert deliver_pending(state, webhook=hook, smtp=None).delivered == 0
    assert [key for key, _ in receiver.accepted] == ["bermed-key"]  # once; "new" not again


def test_a_message_the_mail_server_refuses_waits_alone_and_is_named(tmp_path: Path) -> None:
    """A 554 to DATA (its content rejected) was taken for the whole server: every e-mail of
    every run waited behind that one alert, and the warning did not say which."""
    smtpd = pytest.importorskip("aiosmtpd.controller")
    from changedet.monitor.alerts import deliver_pending
    from changedet.monitor.watchlist import SmtpConfig

    inbox = _inbox()
    serve = inbox.handle_DATA

    async def choosy(server: Any, session: Any, envelope: Any) -> str:
        if b"X-Changedet-Alert: new-key" in envelope.original_content:
            return "554 5.6.0 content rejected"
        return str(await serve(server, session, envelope))

    inbox.handle_DATA = choosy
    mail = smtpd.Controller(inbox, hostname="127.0.0.1", port=free_port())
    mail.start()
    try:
        smtp = SmtpConfig("127.0.0.1", "cd@test", ("a@test",), port=mail.port, retries=2)
        kinds = ("new", "bermed", "vanished")
        with _outbox(tmp_path / "s.sqlite", ["smtp:a@test"], kinds) as state:
            waits: list[float] = []
            report = deliver_pending(state, webhook=None, smtp=smtp, sleep=waits.append)
            assert (report.delivered, report.failed) == (2, 1)
            assert report.errors == (
                "smtp: alert new-key (k1 s1 new): the server refused the message "
                "(554 5.6.0 content rejected)",
            )
            assert waits == []  # asking again will not change its content
            assert [d.alert.key for d in state.pending()] == ["new-key"]
        assert inbox.keys == ["bermed-key", "vanished-key"]
    finally:
        mail.stop()


class Trickle:
    """A receiver on 127.0.0.1 that never finishes its answer: `first` at once, then
    `line` every 0.2 s (each within any per-read timeout), until stopped."""

    def __init__(self, first: bytes, line: bytes) -> None:
        import socket

        self.first, self.line = first, line
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while not self.stop.is_set():
                conn, _ = self.sock.accept()
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        with conn, contextlib.suppress(OSError):
            conn.sendall(self.first)
            while not self.stop.wait(0.2):
                conn.sendall(self.line)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_a_receiver_that_trickles_its_answer_is_given_up_after_timeout_s(tmp_path: Path) -> None:
    """urllib's and smtplib's timeouts bound each read: a receiver sending a header line every
    2 s held the run, and its lock, for ever. Each request now has a deadline of timeout_s."""
    from changedet.monitor.alerts import deliver_pending
    from changedet.monitor.watchlist import SmtpConfig, WebhookConfig

    hook = Trickle(b"HTTP/1.1 200 OK\r\n", b"X-Slow: 1\r\n")
    mail = Trickle(b"220-slow\r\n", b"220-still here\r\n")
    try:
        webhook = WebhookConfig(f"http://127.0.0.1:{hook.port}/hook", retries=1, timeout_s=1.0)
        smtp = SmtpConfig("127.0.0.1", "cd@test", ("a@test",), port=mail.port, timeout_s=1.0)
        smtp = replace(smtp, retries=0)
        with _outbox(tmp_path / "s.sqlite", ["webhook", "smtp:a@test"]) as state:
            reports: list[Any] = []
            began = time.monotonic()
            run = threading.Thread(  # a thread: before, this never returned
                target=lambda: reports.append(
                    deliver_pending(state, webhook=webhook, smtp=smtp, sleep=lambda s: None)
                ),
                daemon=True,
            )
            run.start()
            run.join(15)
            took = time.monotonic() - began
            assert reports, "the delivery did not end"
            assert len(state.pending()) == 2
        # 2 webhook attempts of 1 s; 1 e-mail of 6 exchanges, each of 1 s at most
        assert took < 10, took
        (report,) = reports
        late = "no answer within timeout_s = 1 s (a slow receiver may get the alert twice)"
        assert sorted(e.split(": ", 1)[0] for e in report.errors) == ["smtp", "webhook"]
        assert all(late in e for e in report.errors), report.errors
    finally:
        hook.close()
        mail.close()


def test_a_slow_mail_server_that_works_gets_each_alert_once(tmp_path: Path) -> None:
    """With the deadline on a thread, a server taking 0.6 s at RCPT and at DATA (recipient
    checks, content scanning) under timeout_s = 1 was given up while the send went on: three
    messages arrived for one alert, which stayed waiting to be sent again."""
    import asyncio

    from aiosmtpd.controller import Controller

    from changedet.monitor.alerts import deliver_pending
    from changedet.monitor.watchlist import SmtpConfig

    class Slow:
        def __init__(self) -> None:
            self.got: list[bytes] = []

        async def handle_RCPT(
            self, server: Any, session: Any, envelope: Any, address: str, options: Any
        ) -> str:
            await asyncio.sleep(0.6)
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            await asyncio.sleep(0.6)
            self.got.append(envelope.content)
            return "250 queued"

    slow = Slow()
    controller = Controller(slow, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        smtp = SmtpConfig("127.0.0.1", "cd@test", ("a@test",), port=controller.port, timeout_s=1.0)
        with _outbox(tmp_path / "s.sqlite", ["smtp:a@test"]) as state:
            report = deliver_pending(
                state, webhook=None, smtp=replace(smtp, retries=2), sleep=lambda s: None
            )
            assert (report.delivered, report.failed) == (1, 0) and not state.pending()
        time.sleep(1.5)  # nothing goes on sending after the run
        assert len(slow.got) == 1
    finally:
        controller.stop()


def test_a_webhook_answering_no_http_keeps_the_alert_waiting_with_a_warning(
    tmp_path: Path,
) -> None:
    """An answer that is not HTTP (BadStatusLine) escaped as "unexpected ...: report it"."""
    from changedet.monitor.alerts import deliver_pending
    from changedet.monitor.watchlist import WebhookConfig

    garbage = Trickle(b"garbage\r\n\r\n", b"")
    try:
        webhook = WebhookConfig(f"http://127.0.0.1:{garbage.port}/hook", retries=0)
        with _outbox(tmp_path / "s.sqlite", ["webhook"]) as state:
            report = deliver_pending(state, webhook=webhook, smtp=None)
            assert len(state.pending()) == 1
        assert report.errors == (
            "webhook: the receiver's answer is not HTTP (BadStatusLine: garbage); "
            "check [webhook] url",
        )
    finally:
        garbage.close()
