"""AOIs on a Dask LocalCluster (two worker processes on loopback): the files a local run writes,
and one AOI whose reads fail does not stop the other."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from changedet.aoi import load_aois
from changedet.compute import run_aois
from changedet.config import Config, load_config

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
PRODUCTS = ("structures.geojson", "berms.geojson", "counts.csv", "structures.csv")


def _catalog(root: Path, *, broken: str | None = None) -> Path:
    """Both sample sites in one item collection; every COG of site `broken` cut short."""
    features = []
    for site in ("khojir", "modarres"):
        shutil.copytree(REPO / "sample_tiles" / site, root / site)
        items = json.loads((root / site / "items.json").read_text())
        for item in items["features"]:
            for asset in item["assets"].values():
                href = (root / site / asset["href"]).resolve()
                asset["href"] = str(href)
                if site == broken and href.suffix == ".tif":
                    href.write_bytes(href.read_bytes()[:2000])
            features.append(item)
    path = root / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _config(catalog: Path, cluster: str = "") -> Config:
    config = load_config(REPO / "configs" / "demo-khojir.toml", {"catalog.url": str(catalog)})
    return replace(config, compute=replace(config.compute, cluster=cluster))


def _products(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in PRODUCTS if (folder / name).is_file()}


def test_a_cluster_writes_what_a_local_run_writes_and_a_failing_aoi_stays_alone(
    tmp_path: Path, dask_cluster: str
) -> None:
    aois = {
        a.id: a
        for site in ("khojir", "modarres")
        for a in load_aois(REPO / "aoi" / f"{site}.geojson")
    }
    good = _catalog(tmp_path / "good")
    local = list(run_aois([aois["khojir"]], _config(good), out_root=tmp_path / "local"))
    assert [o.ok for o in local] == [True]

    broken = _catalog(tmp_path / "broken", broken="modarres")
    seen: list[str] = []
    outcomes = {
        o.aoi_id: o
        for o in run_aois(
            [aois["modarres"], aois["khojir"]],
            _config(broken, dask_cluster),
            out_root=tmp_path / "cluster",
            progress=lambda stage, done, total: seen.append(stage),
        )
    }
    assert outcomes["khojir"].ok and not outcomes["modarres"].ok
    assert "read" in (outcomes["modarres"].error or "")
    assert not (tmp_path / "cluster" / "modarres").exists()
    expected = _products(tmp_path / "local" / "khojir")
    assert "structures.geojson" in expected
    assert _products(tmp_path / "cluster" / "khojir") == expected
    # progress came back from the workers, per AOI, and the AOIs were counted
    assert "AOIs" in seen and any(s.startswith("khojir: ") for s in seen)


def test_pool_processes_end_when_the_run_is_killed(tmp_path: Path) -> None:
    """SIGKILL (the OOM killer) leaves a local pool no time to end its processes: they end
    themselves, not computing on for nobody."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    catalog = _catalog(tmp_path / "data")
    config = tmp_path / "two.toml"
    config.write_text(
        f'extends = "{REPO / "configs" / "demo-khojir.toml"}"\n[catalog]\nurl = "{catalog}"\n'
        "[compute]\nworkers = 2\n"
    )
    aois = [str(REPO / "aoi" / f"{site}.geojson") for site in ("khojir", "modarres")]
    run = [sys.executable, "-m", "changedet", "run", *aois, "--config", str(config), "--quiet"]
    proc = subprocess.Popen([*run, "--out", str(tmp_path / "out")], cwd=REPO)
    try:
        children: list[psutil.Process] = []
        for _ in range(300):  # bounded: the two pool processes start within seconds
            time.sleep(0.1)
            children = psutil.Process(proc.pid).children()
            if len([c for c in children if "spawn_main" in " ".join(c.cmdline())]) == 2:
                break
        pool = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(pool) == 2, [c.cmdline() for c in children]
        time.sleep(1.5)  # into their AOIs
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(pool, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    for c in alive:
        c.kill()
    assert not alive, "pool processes outlived the killed run"


def _nap(seconds: float, *, progress: Any) -> str:
    import time

    progress("nap", 0, 1)
    time.sleep(seconds)
    return "rested"


def test_a_port_that_is_no_dask_scheduler_is_said_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTP server's answer was read as Dask's ("unexpected MemoryError: Unable to allocate
    3.07 EiB"); a port that accepts and never answers held the run for ever."""
    import socket
    import time

    from loopback import RangeServer

    from changedet import compute
    from changedet.errors import UsageError

    monkeypatch.setattr(compute, "CONNECT_S", 2.0)
    said = r"(did not answer as a|no) Dask scheduler( answered)? at tcp://127\.0\.0\.1:\d+"
    with RangeServer(tmp_path) as http, pytest.raises(UsageError, match=said):
        list(compute.on_cluster(http.url.replace("http://", "tcp://"), []))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(UsageError, match=said):
            list(compute.on_cluster(address, []))
        assert time.monotonic() - started < 10.0


def test_a_port_where_nothing_listens_is_said_at_once() -> None:
    """A closed port took 41 s and was called "no Dask scheduler answered ... (another service
    listens there?)": the connection was refused, nothing listens."""
    import socket
    import time

    from changedet import compute
    from changedet.errors import UsageError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again on leaving: nothing listens there
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"nothing listens at tcp://127\.0\.0\.1:\d+ \(connection"):
        list(compute.on_cluster(f"tcp://127.0.0.1:{port}", []))
    assert time.monotonic() - started < 5.0


def test_tasks_fail_when_no_worker_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    import distributed

    from changedet import compute
    from changedet.errors import ClusterLost

    monkeypatch.setattr(compute, "NO_WORKER_S", 1.0)
    with distributed.LocalCluster(
        n_workers=0,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as empty:
        tasks = [compute.ClusterTask("site", _nap, (0.1,))]
        ((i, result),) = list(compute.on_cluster(empty.scheduler_address, tasks))
    assert i == 0 and isinstance(result, ClusterLost)
    assert str(result) == (
        f"no Dask worker at {empty.scheduler_address} for 1 s; "
        f"start `dask worker {empty.scheduler_address}`"
    )


def test_a_lost_scheduler_fails_the_tasks_left_in_one_line() -> None:
    import threading

    import distributed

    from changedet import compute
    from changedet.errors import ClusterLost

    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as local:  # fmt: skip
        address = local.scheduler_address
        tasks = [compute.ClusterTask(f"site{i}", _nap, (6.0,)) for i in range(2)]
        threading.Timer(2.0, local.close).start()
        got = list(compute.on_cluster(address, tasks))
    assert sorted(i for i, _ in got) == [0, 1]
    for _, result in got:
        assert isinstance(result, ClusterLost), result
        assert str(result).startswith(f"lost the Dask scheduler at {address} (")


def test_an_interrupt_cancels_the_tasks_not_started_and_says_which_run_on() -> None:
    """Ctrl-C on a cluster run: a task a worker is running cannot be stopped there (its AOI may
    still write its outputs), which the interrupt says; the others are cancelled."""
    import distributed

    from changedet import compute

    def interrupt(stage: str, done: int, total: int) -> None:
        if stage.endswith(": nap"):  # the first task has started on the worker
            raise KeyboardInterrupt

    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as local:  # fmt: skip
        tasks = [compute.ClusterTask(f"site{i}", _nap, (3.0,)) for i in range(2)]
        with pytest.raises(KeyboardInterrupt) as info:
            list(compute.on_cluster(local.scheduler_address, tasks, interrupt))
    assert info.value.__notes__ == [
        "1 AOI(s) already running on the Dask workers cannot be stopped there: they may still "
        "write their outputs"
    ]


def test_two_runs_on_one_cluster_each_get_their_own_results(
    tmp_path: Path, dask_cluster: str
) -> None:
    """Task keys were the AOI's index and id: a second run of the same AOI while the first ran
    was handed the first's result (computed on the first's dates) and wrote nothing."""
    import subprocess
    import sys

    def run(out: str, end: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "changedet", "run", str(REPO / "aoi" / "khojir.geojson"),
             "--config", str(REPO / "configs" / "demo-khojir.toml"), "--end", end,
             "--out", str(tmp_path / out), "--quiet", "--cluster", dask_cluster],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    first = run("first", "2024-06-30")
    time.sleep(2.0)
    second = run("second", "2023-12-31")
    for proc in (first, second):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    for name, end in (("first", "2024-06-30"), ("second", "2023-12-31")):
        manifest = json.loads((tmp_path / name / "khojir" / "run.json").read_text())
        assert manifest["time_range"]["end"] == end


def _search_or_die(aoi: Any, *args: Any, **kwargs: Any) -> Any:
    """The real search, but the process computing Modarres is killed there (as the OOM killer
    would): module-level, so that the spawned pool processes can unpickle it."""
    import os
    import signal

    from changedet.catalog.search import search_scenes

    if aoi.id == "modarres":
        os.kill(os.getpid(), signal.SIGKILL)
    return search_scenes(aoi, *args, **kwargs)


def test_a_pool_process_killed_loses_its_own_aoi_only(tmp_path: Path) -> None:
    """A killed pool process broke the pool, and every AOI not finished ended with an
    'unexpected BrokenProcessPool'; those are run again alone: the one whose process is killed
    again is reported so, the other completes as a run of its own does."""
    from changedet.pipeline import PipelineIO

    catalog = _catalog(tmp_path / "data")
    config = _config(catalog)
    config = replace(config, compute=replace(config.compute, workers=2))
    aois = [
        a for site in ("khojir", "modarres") for a in load_aois(REPO / "aoi" / f"{site}.geojson")
    ]
    io = replace(PipelineIO.default(), search=_search_or_die)
    outcomes = {o.aoi_id: o for o in run_aois(aois, config, out_root=tmp_path / "out", io=io)}
    assert outcomes["khojir"].ok, outcomes["khojir"].error
    lost = outcomes["modarres"]
    assert not lost.ok and lost.exit_code == 1
    assert "killed (out of memory?), also when it ran alone" in (lost.error or "")
    alone = run_aois(aois[:1], config, out_root=tmp_path / "alone")
    assert next(iter(alone)).ok
    assert _products(tmp_path / "out" / "khojir") == _products(tmp_path / "alone" / "khojir")


def test_workers_of_another_changedet_are_refused_before_any_task(
    dask_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker of another version computed other answers with no word (the README asks the
    same version everywhere); one without changedet died on its first task and the run waited
    two minutes for 'no worker'. Both are asked before any task is placed."""
    import changedet
    from changedet import compute
    from changedet.errors import UsageError

    installed = changedet.__version__
    monkeypatch.setattr(changedet, "__version__", "9.9.9")
    tasks = [compute.ClusterTask("site0", _nap, (0.1,))]
    with pytest.raises(UsageError) as info:
        list(compute.on_cluster(dask_cluster, tasks))
    said = str(info.value)
    assert said.startswith(
        f"Dask worker(s) at {dask_cluster} run another changedet than this 9.9.9"
    )
    assert f"has {installed}" in said and said.endswith("install the same version on every machine")
    monkeypatch.setattr(changedet, "__version__", installed)
    assert [i for i, _ in compute.on_cluster(dask_cluster, tasks)] == [0]
    # The same version from other files (workers started before an update) computed the old
    # code's answers: the version string stayed 0.1.0 across changes.
    monkeypatch.setattr(compute, "_files_digest", lambda: "0123456789abcdef")
    with pytest.raises(UsageError, match=r"run changedet .* from other files than this one"):
        list(compute.on_cluster(dask_cluster, tasks))


def test_workers_dask_gave_up_on_are_one_line_with_what_to_do() -> None:
    """KilledWorker (what an OOM kill on every try ends in) was "unexpected KilledWorker on a
    worker: Attempted to run task … Inspecting worker logs is often a good next step … https://"."""
    from changedet.errors import machine_trouble
    from changedet.monitor.run import _failed

    class KilledWorker(Exception):  # as distributed.scheduler names it
        pass

    died = KilledWorker("Attempted to run task 'x' on 1 different workers, but all those "
                        "workers died while running it.\nInspecting worker logs ...")  # fmt: skip
    said = machine_trouble(died)
    assert said is not None and said.startswith("the Dask workers computing it died")
    assert _failed("k", died, on_worker=True).message == said


def test_the_code_digest_skips_dotfiles_and_tells_files_changed_since_loading(
    tmp_path: Path,
) -> None:
    """An editor's lock file (a dangling symlink) crashed every --cluster run; files changed
    under a running worker matched the updated coordinator while it ran the old code."""
    import os
    import time

    from changedet.compute import package_digest

    (tmp_path / "a.py").write_text("x = 1\n")
    loaded = time.time()
    clean = package_digest(tmp_path, loaded)
    (tmp_path / ".#a.py").symlink_to(tmp_path / "gone")
    (tmp_path / "._a.py").write_bytes(b"\x00\x05")
    assert package_digest(tmp_path, loaded) == clean
    later = loaded + 3600
    os.utime(tmp_path / "a.py", (later, later))
    assert package_digest(tmp_path, loaded) == clean + "-changed-since-loaded"


def test_a_worker_of_an_earlier_changedet_is_told_to_restart_not_to_install() -> None:
    """Without code_identity (an earlier changedet) it was told it cannot import changedet."""
    from changedet import compute
    from changedet.errors import UsageError

    class Cluster:  # what distributed.Client.run gives: per worker, its answer or its error
        def run(self, fn: Callable[[], Any], on_error: str) -> dict[str, Any]:
            return {"tcp://w1": fn(), "tcp://w2": AttributeError("no code_identity")}

    with pytest.raises(UsageError, match=r"from other files than this one \(tcp://w2"):
        compute._check_workers(Cluster(), "tcp://s")
