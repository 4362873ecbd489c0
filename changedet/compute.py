"""Where AOIs run: here, a pool of local processes, or a Dask distributed cluster.

One responsibility: place `pipeline.run_aoi` calls and gather what they give. The only module
that imports Dask (`pip install "changedet[dask]"`), and only when a cluster is asked for.

The unit of work is one AOI: search, pixel reads, the detector and the output files of an AOI
all happen where its task runs (a Dask worker reads its own pixels and writes OUT/<aoi_id>/, so
OUT must be a folder every worker can write, e.g. a shared mount). A graph is one task per AOI,
small for hundreds of AOIs. Why not one task per AOI x period: the detector's temporal steps need
every date of a pixel (the spike screen looks at a pixel's previous and next clear date, which
may be months away; co-registration measures every date against the baseline's median; the
baseline and "after" medians span several periods), so period tasks would either change results
or ship every date between machines. Inside a task the streaming detector keeps both cores of
the worker busy (`core.stream`).

One AOI's failure is its own: it comes back as an `Outcome` with the one-line reason, and the
other AOIs go on. Progress from every AOI is aggregated into the caller's callback, stage names
prefixed with the AOI id, plus an "AOIs" stage counting finished AOIs. `on_cluster` is the
placing itself, one labelled call per task; the monitor places its AOIs' computing through it.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

from changedet.config import Config
from changedet.core.carry import Known
from changedet.errors import (
    CLUSTER_RUNNING,
    ChangedetError,
    ClusterLost,
    UsageError,
    interrupt_behind,
    machine_trouble,
)
from changedet.models import AOI, Progress, no_progress
from changedet.pipeline import PipelineIO, RunSummary, run_aoi

__all__ = ["ClusterTask", "Outcome", "on_cluster", "run_aois"]

PROGRESS_TOPIC = "changedet-progress"
T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    """What became of one AOI: its summary, or why it failed (one line, its exit code, and the
    traceback for --debug)."""

    aoi_id: str
    summary: RunSummary | None = None
    error: str | None = None
    exit_code: int = 0
    details: str = ""

    @property
    def ok(self) -> bool:
        return self.summary is not None


Earlier = Mapping[str, Mapping[str, Known]]  # AOI id → an earlier run's structures by id


def _run_one(
    aoi: AOI,
    config: Config,
    out_root: Path,
    progress: Progress,
    io: PipelineIO | None,
    known: Mapping[str, Known] | None = None,
) -> Outcome:
    """`run_aoi`, every failure caught: the caller decides what ends the run."""
    try:
        summary = run_aoi(aoi, config, out_root=out_root, progress=progress, io=io, known=known)
        return Outcome(aoi.id, summary)
    except ChangedetError as exc:
        return Outcome(aoi.id, error=str(exc), exit_code=exc.exit_code, details=_trace())
    except Exception as exc:
        interrupt = interrupt_behind(exc)
        if interrupt is not None:  # wrapped by a library: still the run's interrupt
            raise interrupt from exc
        reason = (
            machine_trouble(exc) or f"unexpected {type(exc).__name__}: {exc} (rerun with --debug)"
        )
        return Outcome(aoi.id, error=reason, exit_code=1, details=_trace())


def _trace() -> str:
    return traceback.format_exc()


def run_aois(
    aois: Sequence[AOI],
    config: Config,
    *,
    out_root: Path,
    progress: Progress = no_progress,
    io: PipelineIO | None = None,
    earlier: Earlier | None = None,
) -> Iterator[Outcome]:
    """Run every AOI where `config.compute` says; outcomes in the order they finish (in the
    given order when run here one at a time). A usage or config error (exit code 2) would fail
    every AOI alike: it is raised at once. `earlier`: an earlier run's structures per AOI, whose
    ids the same structures keep (`run_aoi(known=)`)."""
    compute = config.compute
    earlier = earlier or {}
    if compute.cluster:
        outcomes = _on_dask(aois, config, out_root, progress, io, compute.cluster, earlier)
    elif len(aois) > 1 and _local_workers(config, len(aois)) > 1:
        outcomes = _on_local_pool(aois, config, out_root, progress, io, earlier)
    else:
        outcomes = (
            _run_one(aoi, config, out_root, progress, io, earlier.get(aoi.id)) for aoi in aois
        )
    for outcome in outcomes:
        if outcome.exit_code == 2:
            raise UsageError(outcome.error or "usage error")
        yield outcome


def _local_workers(config: Config, n_aois: int) -> int:
    """AOIs at once here: 1 by default, since one AOI already keeps every core busy (reader
    threads, then the detector's strips on `os.cpu_count()` threads)."""
    return min(max(config.compute.workers, 1), n_aois)


def _on_local_pool(
    aois: Sequence[AOI],
    config: Config,
    out_root: Path,
    progress: Progress,
    io: PipelineIO | None,
    earlier: Earlier,
) -> Iterator[Outcome]:
    """A pool of fresh processes (spawned: no inherited GDAL threads), one AOI per task.

    A pool process killed (the OOM killer) breaks the pool: every AOI not finished then fails
    with it, whichever was running there. Those are run again, each alone in a pool of its own:
    the AOI that was the cause is lost again and reported so, the others complete."""
    progress("AOIs", 0, len(aois))
    finished = 0
    suspects: list[AOI] = []
    pool = _pool(_local_workers(config, len(aois)))
    try:
        futures = {
            pool.submit(_in_pool, aoi, config, out_root, no_progress, io, earlier.get(aoi.id)): aoi
            for aoi in aois
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    suspects.append(futures[future])
                    continue
                finished += 1
                progress("AOIs", finished, len(aois))
                yield outcome
    except BaseException:  # interrupted: the AOIs not finished end here too
        _end_pool(pool)
        raise
    pool.shutdown(wait=True)
    for aoi in sorted(suspects, key=aois.index):
        yield _alone(aoi, config, out_root, io, earlier.get(aoi.id))
        finished += 1
        progress("AOIs", finished, len(aois))


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_leave_with_parent,
        initargs=(os.getpid(),),
    )


def _alone(
    aoi: AOI,
    config: Config,
    out_root: Path,
    io: PipelineIO | None,
    known: Mapping[str, Known] | None,
) -> Outcome:
    """One AOI in a pool process of its own (after a lost process broke the shared pool)."""
    pool = _pool(1)
    try:
        outcome = pool.submit(_in_pool, aoi, config, out_root, no_progress, io, known).result()
    except BrokenProcessPool:
        outcome = Outcome(
            aoi.id,
            error="the process computing it was killed (out of memory?), also when it ran "
            "alone; lower [compute] workers, or give the machine more memory",
            exit_code=1,
        )
    except BaseException:
        _end_pool(pool)
        raise
    pool.shutdown(wait=True)
    return outcome


# A pool process asked to end has this long to unwind its AOI (its temporary folders removed)
_POOL_GRACE_S = 5.0


def _end_pool(pool: ProcessPoolExecutor) -> None:
    """SIGTERM every pool process (each unwinds its AOI), SIGKILL any still there after the
    grace time, and let the pool go without waiting for queues nobody reads."""
    processes = list(getattr(pool, "_processes", {}).values())
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + _POOL_GRACE_S
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0.0))
        if process.is_alive():
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


_busy = threading.Event()  # in a pool process: an AOI is running


def _in_pool(*args: Any) -> Outcome:
    """`_run_one` in a pool process, marked busy meanwhile (see `_leave_with_parent`)."""
    _busy.set()
    try:
        return _run_one(*args)
    except KeyboardInterrupt:  # unwound, its temporary folders removed: the process ends too
        os._exit(130)
    finally:
        _busy.clear()


def _leave_with_parent(parent: int) -> None:
    """In a pool process: SIGTERM and SIGINT end its AOI as they end the CLI's (the unfinished
    AOI's temporary folder removed), or the process at once when it is idle (no traceback of a
    queue's wait); and it ends when the process that started it is gone (killed with SIGKILL,
    say, which leaves it no time to end its pool), not computing on for nobody."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        if not _busy.is_set():
            os._exit(128 + signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)  # unwinds the AOI: its temporary folder removed
        time.sleep(10.0)
        os._exit(1)  # whatever the pool's queues to a dead parent do

    threading.Thread(target=watch, name="changedet-parent-watch", daemon=True).start()


# --- Dask distributed --------------------------------------------------------------------------


def _on_worker(
    label: str, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    """`fn(*args, progress=..., **kwargs)` on a Dask worker; its progress goes to the client as
    events (a few per stage), labelled with `label` (the AOI id)."""
    from distributed import get_worker

    worker = get_worker()
    last: dict[str, float] = {}

    def report(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done in (0, total) or now - last.get(stage, 0.0) > 0.5:
            last[stage] = now
            worker.log_event(PROGRESS_TOPIC, (label, stage, done, total))

    return fn(*args, progress=report, **kwargs)


# A scheduler that accepts the connection but never answers (another service on the port, a
# firewall that swallows traffic) would hold the client for ever: it has this long to answer.
CONNECT_S = 30.0
# Tasks wait for workers this long once none is left (or none has come): then they fail.
NO_WORKER_S = 120.0


def _client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise UsageError(
            f"compute.cluster = '{address}' needs Dask distributed: pip install 'changedet[dask]'"
        ) from None
    _refuse_closed_port(address)
    got: queue.Queue[Any] = queue.Queue()

    def connect() -> None:
        try:
            got.put(Client(address, timeout=f"{CONNECT_S:g}s"))
        except BaseException as exc:  # handed to the caller's thread
            got.put(exc)

    threading.Thread(target=connect, name="changedet-dask-connect", daemon=True).start()
    try:
        client = got.get(timeout=CONNECT_S * 1.25 + 1.0)  # after the client's own timeout
    except queue.Empty:
        raise UsageError(
            f"no Dask scheduler answered at {address} within {CONNECT_S:g} s (another service "
            "listens there?); check the address and port of `dask scheduler`"
        ) from None
    if isinstance(client, OSError | TimeoutError):
        raise UsageError(
            f"cannot reach the Dask scheduler at {address} ({client}); start it with "
            "`dask scheduler` and check the address"
        )
    if isinstance(client, BaseException):  # an HTTP server's answer read as Dask's, say
        raise UsageError(
            f"{address} did not answer as a Dask scheduler ({type(client).__name__}); check "
            "the address and port of `dask scheduler`"
        )
    return client


def _refuse_closed_port(address: str) -> None:
    """A tcp:// address where nothing listens is said at once: Dask's client retries a refused
    connection until its timeout, and then could not tell it from a service that never answers."""
    import socket
    from urllib.parse import urlsplit

    if not address.startswith("tcp://"):
        return
    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError:
        return  # Dask's own parsing says what is wrong with it
    if not host or port is None:
        return
    try:
        socket.create_connection((host, port), timeout=5.0).close()
    except ConnectionRefusedError:
        raise UsageError(
            f"nothing listens at {address} (connection refused); start `dask scheduler` there, "
            "or check the address and port"
        ) from None
    except OSError:
        return  # unreachable or slow: the client's timeout decides


def code_identity() -> tuple[str, str]:
    """(version, digest of the package's Python files) of the changedet this process runs: the
    version stays 0.1.0 across changes that give other answers, the files do not."""
    import changedet

    return changedet.__version__, _files_digest()


# A file's time on a shared mount is the file server's clock: this much ahead is not an update.
_CLOCK_SLACK_S = 60.0


@functools.cache
def _files_digest() -> str:
    """`package_digest` of the changedet this process loaded, as it first looked at it."""
    import changedet

    return package_digest(Path(changedet.__file__).parent, changedet.IMPORTED_AT)


def package_digest(root: Path, loaded_at: float) -> str:
    """A digest of the modules under `root` (not dotfiles: an editor's lock file, macOS's
    `._x.py`), marked stale when one changed after `loaded_at` (with `_CLOCK_SLACK_S`): files
    updated under a running worker do not vouch for the old code it runs."""
    import hashlib

    digest = hashlib.blake2b(digest_size=8)
    stale = False
    for path in sorted(root.rglob("[!.]*.py")):
        try:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
            stale |= path.stat().st_mtime > loaded_at + _CLOCK_SLACK_S
        except OSError:  # gone or unreadable: it is not code anyone runs
            continue
    return digest.hexdigest() + ("-changed-since-loaded" if stale else "")


def _check_workers(client: Any, address: str) -> None:
    """The workers there now have this changedet: one without it died on its first task and the
    run waited NO_WORKER_S for "no worker"; one of another version, or of other files under the
    same version (a worker started before an update), computed other answers with no word.
    (Workers that join later are not asked.)"""
    mine, my_files = code_identity()
    try:
        found = client.run(code_identity, on_error="return")
    except Exception:  # the scheduler is asked again by the tasks, which say what is wrong
        return
    # A worker of an earlier changedet has no code_identity: it runs other files, not none.
    older = {w for w, v in found.items() if isinstance(v, AttributeError)}
    told = {w: v for w, v in found.items() if isinstance(v, tuple | list)}
    lacking = sorted(set(found) - older - set(told))
    if lacking:
        raise UsageError(
            f"Dask worker(s) at {address} cannot import changedet ({', '.join(lacking[:3])}); "
            f"install it where they run (pip install 'changedet[dask]=={mine}') and restart them"
        )
    other = sorted(f"{w} has {v[0]}" for w, v in told.items() if v[0] != mine)
    if other:
        raise UsageError(
            f"Dask worker(s) at {address} run another changedet than this {mine} "
            f"({', '.join(other[:3])}); install the same version on every machine"
        )
    stale = sorted(older | {w for w, v in told.items() if v[1] != my_files})
    if stale:
        raise UsageError(
            f"Dask worker(s) at {address} run changedet {mine} from other files than this one "
            f"({', '.join(stale[:3])}: started before an update?); install the same code on "
            "every machine and restart the workers"
        )


@dataclass(frozen=True)
class ClusterTask:
    """One call to place on the cluster: `fn(*args, progress=..., **kwargs)`, labelled (the AOI
    id) for progress and task keys. `fn` and its arguments must pickle."""

    label: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


def on_cluster(
    address: str, tasks: Sequence[ClusterTask], progress: Progress = no_progress
) -> Iterator[tuple[int, Any]]:
    """Each task on the Dask cluster at `address`, one Dask task each; (index, result) in the
    order they finish, the result being the exception when the task (or its worker) failed, the
    scheduler was lost, or no worker was there for `NO_WORKER_S`. Progress events from the
    workers are drained between waits, stage names prefixed with the task's label, plus an
    "AOIs" stage counting finished tasks. Interrupted, the tasks not started are cancelled; a
    task already running on a worker cannot be stopped (the interrupt carries a note saying so)."""
    client = _client(address)  # first: it says how to install Dask when it is missing
    events: queue.Queue[tuple[str, str, int, int]] = queue.Queue()
    run = uuid.uuid4().hex
    with _distributed_quiet(), closing(client):  # quiet until the client is closed too
        _check_workers(client, address)
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: events.put(event[1]))
        futures = [
            client.submit(  # a key of this run's own: another run's AOI of the same id is not it
                _on_worker, t.label, t.fn, t.args, t.kwargs, key=f"aoi-{t.label}-{run}-{i}"
            )
            for i, t in enumerate(tasks)
        ]
        watch = _Watch(client, address, {f.key: i for i, f in enumerate(futures)}, len(tasks))
        progress("AOIs", 0, len(tasks))
        try:
            yield from watch.until_done(set(futures), events, progress)
        except KeyboardInterrupt as exc:
            running = watch.cancel_unfinished()
            if running:
                exc.add_note(f"{running} {CLUSTER_RUNNING}")
            raise


class _Watch:
    """Waiting on a cluster's futures: results as they finish, failures when the scheduler is
    lost or no worker is left."""

    def __init__(self, client: Any, address: str, index: dict[str, int], total: int) -> None:
        self.client, self.address, self.index, self.total = client, address, index, total
        self.pending: set[Any] = set()
        self.finished = 0
        self.workerless_since: float | None = None
        self.progress: Progress = no_progress

    def until_done(
        self, pending: set[Any], events: queue.Queue[Any], progress: Progress
    ) -> Iterator[tuple[int, Any]]:
        from distributed import wait as dask_wait

        self.pending, self.progress = pending, progress
        while self.pending:
            try:
                done, self.pending = dask_wait(
                    self.pending, timeout=0.5, return_when="FIRST_COMPLETED"
                )
            except TimeoutError:
                done = set()
            except Exception as exc:  # the scheduler went away: every task left is lost
                yield from self._fail_pending(
                    f"lost the Dask scheduler at {self.address}; a worker may still finish "
                    "this AOI and write its outputs",
                    exc,
                )
                return
            while not events.empty():
                label, stage, n, total = events.get()
                progress(f"{label}: {stage}", n, total)
            for future in done:
                yield self._finish(future, _result(future))
            if self._workerless_too_long():
                yield from self._fail_pending(
                    f"no Dask worker at {self.address} for {NO_WORKER_S:g} s; start "
                    f"`dask worker {self.address}`"
                )

    def _finish(self, future: Any, result: Any) -> tuple[int, Any]:
        self.finished += 1
        self.progress("AOIs", self.finished, self.total)
        return self.index[future.key], result

    def _fail_pending(
        self, why: str, exc: BaseException | None = None
    ) -> Iterator[tuple[int, Any]]:
        if exc is not None:
            head, _, tail = why.partition(";")
            why = f"{head} ({type(exc).__name__});{tail}"
        left, self.pending = self.pending, set()
        for future in sorted(left, key=lambda f: self.index[f.key]):
            yield self._finish(future, ClusterLost(why))

    def _workerless_too_long(self) -> bool:
        try:
            workers = self.client.scheduler_info().get("workers", {})
        except Exception:  # the next wait says what became of the scheduler
            return False
        if workers:
            self.workerless_since = None
            return False
        now = time.monotonic()
        self.workerless_since = self.workerless_since or now
        return now - self.workerless_since >= NO_WORKER_S

    def cancel_unfinished(self) -> int:
        """Cancel every task not finished; how many of them were running on a worker."""
        left = list(self.pending)
        try:
            stacks = self.client.call_stack(left)  # worker -> {key: stack} of what executes
            running = {key for keys in stacks.values() for key in keys}
            self.client.cancel(left)
        except Exception:  # interrupted as the scheduler went: nothing more to ask it
            return len(left)
        return sum(1 for f in left if f.key in running)


@contextmanager
def _distributed_quiet() -> Iterator[None]:
    """distributed logs its reconnection attempts with tracebacks on its own handlers; what
    became of each task comes back as its result. Its loggers are quiet meanwhile."""
    loggers = [logging.getLogger(n) for n in ("distributed", "distributed.client", "asyncio")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _result(future: Any) -> Any:
    """The task's result, or its failure (a worker killed, say) as an exception."""
    try:
        return future.result()
    except Exception as exc:
        return exc


def _on_dask(
    aois: Sequence[AOI],
    config: Config,
    out_root: Path,
    progress: Progress,
    io: PipelineIO | None,
    address: str,
    earlier: Earlier,
) -> Iterator[Outcome]:
    """One task per AOI on the cluster at `address`."""
    tasks = [
        ClusterTask(
            aoi.id,
            _run_one,
            (aoi, config, out_root.absolute()),
            {"io": io, "known": earlier.get(aoi.id)},
        )
        for aoi in aois
    ]
    for i, result in on_cluster(address, tasks, progress):
        yield _gathered(result, aois[i])


def _gathered(result: Any, aoi: AOI) -> Outcome:
    """The task's Outcome, or the cluster's failure (a worker killed, the scheduler lost) as
    this AOI's."""
    if isinstance(result, Outcome):
        return result
    if isinstance(result, ClusterLost):
        return Outcome(aoi.id, error=str(result), exit_code=1)
    return Outcome(aoi.id, error=f"worker failed: {type(result).__name__}: {result}", exit_code=1)
