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

import queue
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

from changedet.config import Config
from changedet.core.carry import Known
from changedet.errors import ChangedetError, UsageError, machine_trouble
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
    """A pool of fresh processes (spawned: no inherited GDAL threads), one AOI per task."""
    workers = _local_workers(config, len(aois))
    progress("AOIs", 0, len(aois))
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending = {
            pool.submit(_run_one, aoi, config, out_root, no_progress, io, earlier.get(aoi.id))
            for aoi in aois
        }
        finished = 0
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                finished += 1
                progress("AOIs", finished, len(aois))
                yield future.result()


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


def _client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise UsageError(
            f"compute.cluster = '{address}' needs Dask distributed: pip install 'changedet[dask]'"
        ) from None
    try:
        return Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise UsageError(
            f"cannot reach the Dask scheduler at {address} ({exc}); start it with "
            "`dask scheduler` and check the address"
        ) from None


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
    order they finish, the result being the exception when the task (or its worker) failed.
    Progress events from the workers are drained between waits, stage names prefixed with the
    task's label, plus an "AOIs" stage counting finished tasks."""
    client = _client(address)  # first: it says how to install Dask when it is missing
    from distributed import wait as dask_wait

    events: queue.Queue[tuple[str, str, int, int]] = queue.Queue()
    try:
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: events.put(event[1]))
        futures = [
            client.submit(
                _on_worker, t.label, t.fn, t.args, t.kwargs, key=f"aoi-{i}-{t.label}", pure=False
            )
            for i, t in enumerate(tasks)
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        pending, finished = set(futures), 0
        progress("AOIs", 0, len(tasks))
        while pending:
            try:
                done, pending = dask_wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            while not events.empty():
                label, stage, n, total = events.get()
                progress(f"{label}: {stage}", n, total)
            for future in done:
                finished += 1
                progress("AOIs", finished, len(tasks))
                yield index[future.key], _result(future)
    finally:
        client.close()


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
    """The task's Outcome, or the worker's failure (a worker killed, say) as this AOI's."""
    if isinstance(result, Outcome):
        return result
    return Outcome(aoi.id, error=f"worker failed: {type(result).__name__}: {result}", exit_code=1)
