"""One monitoring run over a watch-list: per AOI, search the recent past, and only when a scene
is new (or reprocessed), or the analyst reviewed something since the outputs were written, run
the pipeline over every scene known (from the period cache, `monitor.memo`: the pixels of known
dates, their shifts, the composites of untouched periods and the change of periods whose
composite did not change), update the ledger and raise alerts in one transaction; then offer the
outbox to the webhook and e-mail.

The run holds the state's lock (`monitor.lock`) throughout, so two runs never interleave. The
pipeline is called through its public `run_aoi` with the monitor's own seams: a searcher that
hands over the planned scenes (`monitor.scenes`), and a reader and writer that pass through to
the real ones and keep what they saw (the read's clear fractions, the run's result).

Each AOI goes through three steps: `_plan` (search, and what is left to compute, from the
state), `_compute` (the pipeline and its outputs; touches no state, so with `cluster` it runs on
a Dask worker, `compute.on_cluster`) and `_commit` (the state's side, in one transaction, here).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from changedet.config import Config, to_dict
from changedet.core.carry import Known
from changedet.errors import (
    ChangedetError,
    ConfigError,
    NoScenesError,
    OutputError,
    UsageError,
    interrupt_behind,
    machine_trouble,
)
from changedet.models import (
    AOI,
    Progress,
    ReadResult,
    RunResult,
    Scene,
    SearchResult,
    SkippedScene,
    no_progress,
)
from changedet.monitor.alerts import (
    DeliveryReport,
    alerts_geojson,
    channels_for,
    deliver_pending,
)
from changedet.monitor.decide import ledger_changes, ledger_status
from changedet.monitor.lock import hold_lock
from changedet.monitor.memo import DiskMemo, prune
from changedet.monitor.scenes import ScenePlan, plan_scenes, scene_record, search_start
from changedet.monitor.state import (
    AlertRow,
    CheckRecord,
    SceneRow,
    State,
    StructureRow,
    emptied,
    memo_folder,
)
from changedet.monitor.watchlist import WatchedAOI, WatchList
from changedet.pipeline import PipelineIO, RunSummary, periods_for, run_aoi, safe_out_dir

__all__ = ["AOICheck", "MonitorReport", "check_aoi", "run_watchlist"]

ALERTS_FILE = "alerts.geojson"
T = TypeVar("T")


@dataclass(frozen=True)
class AOICheck:
    """What one run did for one AOI. outcome: "updated" (the ledger and outputs were brought up
    to date), "unchanged" (nothing new), "waiting" (too little data yet), "failed"."""

    aoi_id: str
    outcome: str
    new_scenes: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    retried: tuple[str, ...] = ()  # scenes unreadable last time, read again
    left: tuple[SkippedScene, ...] = ()  # stored scenes no longer in the series, with why
    alerts: tuple[AlertRow, ...] = ()
    message: str = ""
    details: str = field(default="", compare=False)  # a failure's traceback (shown by --debug)
    summary: RunSummary | None = None
    periods_computed: int = 0  # periods whose change was computed (the others came from the cache)
    periods_reused: int = 0
    composites_computed: int = 0  # composites made from the dates (the others from the cache)
    composites_reused: int = 0
    dates_kept: int = 0  # dates taken from the cache, not read (`read.kept`)
    search_stopped: str | None = None  # why this run's search stopped paging early


@dataclass(frozen=True)
class MonitorReport:
    run_id: int
    checks: tuple[AOICheck, ...]
    deliveries: DeliveryReport = field(default_factory=DeliveryReport)
    # AOIs whose ledger the state holds that the watch-list no longer names: structure counts
    unwatched: Mapping[str, int] = field(default_factory=dict)
    # AOIs given the ledger of one whose id was changed (same outline and settings): new -> old
    renamed: Mapping[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(1 for c in self.checks if c.outcome == "failed")


class _Capture:
    """Seams that pass through to the real reader and writer and keep what they saw."""

    def __init__(
        self,
        base: PipelineIO,
        plan: ScenePlan,
        found: SearchResult,
        stored: Mapping[str, SceneRow],
    ) -> None:
        self.base, self.plan, self.found, self.stored = base, plan, found, stored
        self.read_result: ReadResult | None = None
        self.result: RunResult | None = None

    def io(self) -> PipelineIO:
        return PipelineIO(
            search=self.search, read=self.read, probe=self.base.probe, write=self.write
        )

    def search(self, aoi: AOI, *_: Any, **__: Any) -> SearchResult:
        if not self.plan.scenes:
            raise NoScenesError(f"no usable scene of AOI '{aoi.id}' yet")
        return SearchResult(
            scenes=self.plan.scenes,
            dropped=self._dropped(),
            source=self.found.source,
            notes=self.found.notes,
            complete=self.found.complete,
            stopped=self.found.stopped,
        )

    def _dropped(self) -> tuple[SkippedScene, ...]:
        """What this search left out, and what the ledger's earlier searches did (this one,
        from the last weeks, did not see them again): run.json lists the series' every
        left-out scene, not one search's."""
        plan = self.plan
        told = [*plan.replaced, *plan.dropped, *plan.left]
        said = {d.scene_id for d in told} | {s.id for s in plan.scenes}
        earlier = [
            SkippedScene(r.scene_id, r.reason or r.outcome)
            for r in self.stored.values()
            if r.outcome in ("dropped", "replaced") and r.scene_id not in said
        ]
        return tuple(sorted([*told, *earlier], key=lambda d: d.scene_id))

    def read(self, scenes: Sequence[Scene], *args: Any, **kwargs: Any) -> ReadResult:
        self.read_result = self.base.read(scenes, *args, **kwargs)
        return self.read_result

    def write(self, result: RunResult, out_dir: Path, **kwargs: Any) -> Any:
        self.result = result
        return self.base.write(result, out_dir, companions=(ALERTS_FILE,), **kwargs)


# --- rows from a pipeline run --------------------------------------------------------------------


def _scene_rows(
    plan: ScenePlan, result: RunResult, read: ReadResult | None, stored: dict[str, SceneRow]
) -> list[SceneRow]:
    """Rows for every scene the check saw that differ from the stored ones."""
    used = {s.id for s in result.scenes_used}
    reasons = {d.scene_id: d.reason for d in result.scenes_skipped}
    unreadable = {d.scene_id for d in result.scenes_skipped if d.unreadable}
    clear = dict(read.probes) if read is not None else {}
    rows = [
        SceneRow(
            s.id,
            s.datetime.isoformat(),
            s.processing_baseline,
            s.updated,
            None if clear.get(s.id) is None else round(float(clear[s.id]), 4),
            "used" if s.id in used else "unreadable" if s.id in unreadable else "skipped",
            None if s.id in used else reasons.get(s.id, "not used"),
            scene_record(s),
        )
        for s in plan.scenes
    ]
    rows += _replaced_and_dropped(plan, stored)
    return [r for r in rows if stored.get(r.scene_id) != r]


def _replaced_and_dropped(plan: ScenePlan, stored: dict[str, SceneRow]) -> list[SceneRow]:
    rows = [replace(stored[d.scene_id], outcome="replaced", reason=d.reason) for d in plan.replaced]
    rows += [replace(stored[d.scene_id], outcome="dropped", reason=d.reason) for d in plan.left]
    rows += [
        SceneRow(d.scene_id, None, None, None, None, "dropped", d.reason, None)
        for d in plan.dropped
    ]
    return rows


def _structure_rows(result: RunResult) -> list[StructureRow]:
    features = {f["properties"]["id"]: f for f in _feature_collection(result)["features"]}
    rows = []
    for s in result.structures:
        props = features[s.id]["properties"]
        rows.append(
            StructureRow(
                id=s.id,
                status=ledger_status(s),
                kind=s.kind,
                confirmed=bool(s.confirmed),
                bermed=None if s.bermed is None else bool(s.bermed),
                area_m2=props["area_m2"],
                confidence=props["confidence"],
                first_seen_start=props["first_seen_start"],
                first_seen_end=props["first_seen_end"],
                vanished_after=props["vanished_after"],
                lat=props["lat"],
                lon=props["lon"],
                geometry=json.dumps(features[s.id]["geometry"], sort_keys=True),
                review=s.review,
                review_note=s.review_note,
            )
        )
    return rows


def _known(rows: dict[str, StructureRow]) -> dict[str, Known]:
    """The ledger's structures as `run_aoi(known=)` takes them (footprints in EPSG:4326)."""
    return {
        sid: Known.from_geojson(json.loads(r.geometry), r.vanished_after)
        for sid, r in rows.items()
        if r.geometry
    }


def _feature_collection(result: RunResult) -> dict[str, Any]:
    from changedet.outputs.vectors import structures_feature_collection

    return structures_feature_collection(result)


def _periods(result: RunResult) -> list[tuple[str, str, str, tuple[str, ...]]]:
    return [
        (
            c.period.label,
            c.period.start.isoformat(),
            c.period.end.isoformat(),
            tuple(sorted(c.scene_ids)),
        )
        for c in result.composites
    ]


# --- one AOI ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    state: State
    run_id: int
    now: datetime
    watch: WatchList
    io: PipelineIO
    progress: Progress
    renamed: Mapping[str, str]  # `_carry_renamed`: new id -> old


def _effective_end(watched: WatchedAOI, now: datetime) -> date:
    today = now.astimezone(UTC).date() if now.tzinfo is not None else now.date()  # UTC days
    return min(watched.end, today) if watched.end is not None else today


def _write_alerts_file(state: State, aoi_id: str, out_dir: Path) -> None:
    """out/<aoi_id>/alerts.geojson from the outbox (empty before the first alert: the report
    lists it), rewritten only when it would differ."""
    from changedet.outputs.fsio import write_text

    if not out_dir.is_dir():
        return
    alerts = state.alerts(aoi_id)
    text = json.dumps(alerts_geojson(alerts), indent=1, sort_keys=True) + "\n"
    path = out_dir / ALERTS_FILE
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    write_text(path, text)


# Why a check computes with no scene to add or leave out (`_why_recompute`), as the CLI says it.
WATCH_EDITED = "the watch changed (its AOI outline or settings): computed again"
SETUP_UNKNOWN = "the watch's setup was not recorded by this changedet: computed again"
REVIEWED = "outputs refreshed with the review verdicts"
OUTPUTS_MISSING = "outputs missing: written again"
OUTPUTS_FOREIGN = "outputs another ledger or run wrote into the folder since: written again"
RENAMED = (
    "the ledger of '{old}' carried over (its id was changed): outputs written under the new id"
)
_EDITS = (WATCH_EDITED, SETUP_UNKNOWN)  # the watch is searched from its start again


def _why_recompute(
    state: State, row: dict[str, Any] | None, out_dir: Path, setup: str
) -> str | None:
    """Why the pipeline must run with no scene to add or leave out (None: it need not): the
    watch's setup edited, reviews since the outputs were written, or outputs missing or not
    the ones this ledger wrote (another state sharing the folder, a `changedet run` into it).
    row: the AOI's row in the state (`State.aoi`), None before its first run.
    """
    if row is None:
        return None  # never processed: only new scenes make the first run
    if row["setup"] is None or not row["setup"].startswith(_SETUP_VERSION):
        # Computed by a changedet that kept no setup, or another kind of it: edited since,
        # perhaps. (Nothing computed yet, only scenes dropped: nothing to compute again.)
        return SETUP_UNKNOWN if row["outputs_run"] is not None else None
    if row["setup"] != setup:
        return WATCH_EDITED
    if row["outputs_review_seq"] != state.review_seq(row["id"]):
        return REVIEWED
    try:
        run_json = (out_dir / "run.json").read_bytes()
    except OSError:
        return OUTPUTS_MISSING
    if not _files_there(out_dir, run_json):
        return OUTPUTS_MISSING
    if row["outputs_digest"] not in (None, hashlib.sha256(run_json).hexdigest()):
        return OUTPUTS_FOREIGN
    return None


def _files_there(out_dir: Path, run_json: bytes) -> bool:
    """Every file `run_json` (out_dir's run.json) lists is there."""
    try:
        files = json.loads(run_json)["files"]
    except (ValueError, KeyError, TypeError):
        return False
    return all((out_dir / name).is_file() for name in files)


# Names what a setup digest holds: one kept under another name is not compared with it.
_SETUP_VERSION = "setup-2:"
# How scenes are fetched, not which: a change of these gives the same ledger.
_NOT_SETUP = {
    "read": ("cache_dir", "cache_max_gb", "max_workers", "retries", "backoff_s", "timeout_s"),
    "catalog": ("page_size", "retries", "backoff_s", "timeout_s", "allowed_folders"),
}


def _setup_digest(aoi: AOI, config: Config) -> str:
    """What the ledger is computed from besides the scenes: the AOI's outline and the effective
    config, but its end (today, for an open watch), where the work runs and where pixels are
    cached."""
    settings = to_dict(config)
    settings.pop("compute", None)
    settings["time"].pop("end", None)
    for section, keys in _NOT_SETUP.items():
        for key in keys:
            settings[section].pop(key, None)
    blob = json.dumps([aoi.geometry.wkt, settings], sort_keys=True, default=str)
    return _SETUP_VERSION + hashlib.sha256(blob.encode()).hexdigest()


def _outputs_digest(out_dir: Path) -> str | None:
    """SHA-256 of out_dir/run.json, which names every scene, setting and file of the outputs;
    None without one."""
    try:
        return hashlib.sha256((out_dir / "run.json").read_bytes()).hexdigest()
    except OSError:
        return None


def _plan(ctx: _Context, watched: WatchedAOI) -> AOICheck | _Job:
    """Search and plan one AOI: what is left to compute (a `_Job`), or its check when there is
    nothing to compute (unchanged, waiting)."""
    aoi, state = watched.aoi, ctx.state
    end = _effective_end(watched, ctx.now)
    config = watched.config
    if end < config.time.start:
        return AOICheck(aoi.id, "waiting", message=f"watch starts {config.time.start}")
    config = replace(config, time=replace(config.time, end=end))
    out_dir = safe_out_dir(ctx.watch.out, aoi.id)
    stored = state.scenes(aoi.id)
    setup = _setup_digest(aoi, watched.config)
    row = state.aoi(aoi.id)
    why = _why_recompute(state, row, out_dir, setup)
    if aoi.id in ctx.renamed:  # every output names the AOI: all are written again
        why = RENAMED.format(old=ctx.renamed[aoi.id])
    # An edited watch (an outline, a start moved earlier) is searched from its start again.
    start = search_start(config.time.start, stored, ctx.watch.lookback_days)
    if why in _EDITS or (row is not None and row["search_stopped"]):
        start = config.time.start  # an edit, or a search cut short last time: all of it again
    found = _search(ctx, aoi, config, start)
    if found.stopped:  # kept at once; cleared only once what a whole search found is committed
        state.note_search(aoi.id, aoi.name, str(out_dir), found.stopped)
    plan = plan_scenes(
        stored,
        found.scenes,
        found.dropped,
        now=ctx.now,
        span=(config.time.start, end),
        # A search that could not read every item, or stopped paging early, does not tell
        # that a scene it did not return was withdrawn.
        searched=(start, end) if found.complete else None,
    )
    if not plan.work and why is None:
        if plan.dropped:  # scenes the search leaves out, seen for the first time
            rows = _replaced_and_dropped(plan, stored)
            state.commit_check(ctx.run_id, CheckRecord(aoi.id, aoi.name, str(out_dir), scenes=rows))
        state.note_search(aoi.id, aoi.name, str(out_dir), found.stopped)  # all of it is stored
        _write_alerts_file(state, aoi.id, out_dir)
        return AOICheck(aoi.id, "unchanged", message="nothing new", search_stopped=found.stopped)
    try:
        periods_for(config)
    except ConfigError as exc:
        return AOICheck(aoi.id, "waiting", message=str(exc))
    kinds = (("composite", ctx.watch.keep_composites), ("date", ctx.watch.keep_dates))
    ledger_rows = state.structures(aoi.id)
    return _Job(
        aoi=aoi,
        config=config,
        out_root=ctx.watch.out,
        out_dir=out_dir,
        plan=plan,
        found=found,
        stored=stored,
        memo_folder=memo_folder(ctx.watch.state, aoi.id),
        skip=frozenset(kind for kind, kept in kinds if not kept),
        review=state.verdicts(aoi.id),
        review_seq=state.review_seq(aoi.id),
        ledger_rows=ledger_rows,
        setup=setup,
        why=why or "",
    )


def _search(ctx: _Context, aoi: AOI, config: Config, start: date) -> SearchResult:
    """The catalog's scenes of the AOI from `start` to the config's end; none when the end
    lies before it (the watch's end moved before the last scenes seen)."""
    if start > config.time.end:
        return SearchResult(scenes=(), dropped=(), source=config.catalog.url or "")
    return ctx.io.search(
        aoi,
        config.catalog,
        start=start,
        end=config.time.end,
        bands=(*config.read.bands, "scl"),
        progress=ctx.progress,
        allow_empty=True,
    )


def check_aoi(ctx: _Context, watched: WatchedAOI) -> AOICheck:
    """Bring one AOI's ledger and outputs up to date (one transaction), here."""
    job = _plan(ctx, watched)
    if isinstance(job, AOICheck):
        return job
    return _commit(ctx, job, _compute(job, io=ctx.io, progress=ctx.progress))


@dataclass(frozen=True)
class _Job:
    """What computing one AOI's update needs, taken from the state before: plain data that
    pickles, so that the computing can happen on a Dask worker (`_compute`)."""

    aoi: AOI
    config: Config
    out_root: Path
    out_dir: Path
    plan: ScenePlan
    found: SearchResult
    stored: dict[str, SceneRow]
    memo_folder: Path
    skip: frozenset[str]
    review: dict[str, tuple[str, str | None]]
    review_seq: int
    ledger_rows: dict[str, StructureRow]
    setup: str  # `_setup_digest`, kept with the ledger
    why: str = ""  # why it would compute even with no scene to add or leave out

    @property
    def edited(self) -> bool:
        """The setup differs from the one the ledger was computed with (or is not known)."""
        return self.why in _EDITS


@dataclass(frozen=True)
class _Computed:
    """What a `_Job` gave: the rows the state takes, the period cache's counts and the keys it
    used (the rest is pruned after the commit), and the run's summary; or why it waits."""

    waiting: str | None = None
    summary: RunSummary | None = None
    scenes: tuple[SceneRow, ...] = ()
    periods: tuple[tuple[str, str, str, tuple[str, ...]], ...] = ()
    structures: tuple[StructureRow, ...] = ()
    memo_used: frozenset[str] = frozenset()
    periods_computed: int = 0
    periods_reused: int = 0
    composites_computed: int = 0
    composites_reused: int = 0
    dates_kept: int = 0
    baseline_end: date | None = None  # the first day after the baseline the run compared with
    persistence_checked: bool = True  # False: too few clear periods (run.json's comparison)


def _compute(job: _Job, *, io: PipelineIO, progress: Progress = no_progress) -> _Computed:
    """Run the pipeline over every known scene of the AOI with the period cache, and write its
    outputs (their ids the ledger's). Touches no state: it runs here or on a worker."""
    capture = _Capture(io, job.plan, job.found, job.stored)
    memo = DiskMemo(job.memo_folder, skip=job.skip)
    try:
        summary = run_aoi(
            job.aoi,
            job.config,
            out_root=job.out_root,
            progress=progress,
            io=capture.io(),
            review=job.review,
            memo=memo,
            reuse=memo,
            keep=memo,
            known=_known(job.ledger_rows),
        )
    except NoScenesError as exc:
        return _Computed(waiting=str(exc))
    result = capture.result
    assert result is not None  # run_aoi always writes
    return _Computed(
        summary=summary,
        scenes=tuple(_scene_rows(job.plan, result, capture.read_result, job.stored)),
        periods=tuple(_periods(result)),
        structures=tuple(_structure_rows(result)),
        memo_used=frozenset(memo.used),
        periods_computed=memo.misses,
        periods_reused=memo.hits,
        composites_computed=memo.array_misses["composite"],
        composites_reused=memo.array_hits["composite"],
        dates_kept=memo.array_hits["date"],
        baseline_end=result.before.period.end,
        persistence_checked=summary.persistence_checked,
    )


def _record(ctx: _Context, job: _Job, computed: _Computed) -> CheckRecord:
    """What one AOI's update commits, made within the commit's transaction: the verdicts are
    read there, not taken from the plan, so a review made while the run computed is neither
    overwritten nor alerted past (a false positive never alerts again)."""
    aoi, state = job.aoi, ctx.state
    verdicts = state.verdicts(aoi.id)
    synthetic = computed.summary is not None and computed.summary.synthetic
    changes = ledger_changes(
        aoi.id,
        state.structures(aoi.id),  # the plan's rows with the reviews since
        [_reviewed(row, verdicts) for row in computed.structures],
        state.alerted(aoi.id),
        synthetic=synthetic,
        # only an edit of the watch leaves a structure out without its ground changing
        outline=aoi.geometry if job.edited else None,
        baseline_end=computed.baseline_end if job.edited else None,
        edited=job.edited,
        persistence_checked=computed.persistence_checked,
    )
    return CheckRecord(
        aoi.id,
        aoi.name,
        str(job.out_dir),
        scenes=list(computed.scenes),
        periods=list(computed.periods),
        structures=changes.rows,
        history=changes.history,
        alerts=changes.alerts,
        channels=channels_for(ctx.watch.webhook, ctx.watch.smtp),
        outputs_review_seq=job.review_seq,  # the outputs show the plan's verdicts
        outputs_digest=_outputs_digest(job.out_dir),
        setup=job.setup,
    )


def _reviewed(row: StructureRow, verdicts: Mapping[str, tuple[str, str | None]]) -> StructureRow:
    if row.id not in verdicts:
        return row
    verdict, note = verdicts[row.id]
    return replace(row, review=verdict, review_note=note)


def _commit(ctx: _Context, job: _Job, computed: _Computed) -> AOICheck:
    """The state's side of one AOI's update, in one transaction; then its alerts file, and the
    period cache pruned to what the run used."""
    aoi, state = job.aoi, ctx.state
    if computed.waiting is not None:
        return AOICheck(
            aoi.id,
            "waiting",
            new_scenes=job.plan.new,
            message=computed.waiting,
            search_stopped=job.found.stopped,
        )
    record = state.commit_check(ctx.run_id, partial(_record, ctx, job, computed))
    # After the scenes of a whole search are committed: killed before, the next run searches
    # from the watch's start again.
    state.note_search(aoi.id, aoi.name, str(job.out_dir), job.found.stopped)
    _write_alerts_file(state, aoi.id, job.out_dir)
    # After the commit: a killed run keeps what the next one can use.
    prune(job.memo_folder, computed.memo_used)
    return AOICheck(
        aoi.id,
        "updated",
        periods_computed=computed.periods_computed,
        periods_reused=computed.periods_reused,
        composites_computed=computed.composites_computed,
        composites_reused=computed.composites_reused,
        dates_kept=computed.dates_kept,
        new_scenes=job.plan.new,
        replaced=tuple(d.scene_id for d in job.plan.replaced),
        retried=job.plan.retried,
        left=job.plan.left,
        alerts=tuple(record.alerts),
        summary=computed.summary,
        message="" if job.plan.work else job.why,  # said when no scene explains the update
        search_stopped=job.found.stopped,
    )


# --- the run ------------------------------------------------------------------------------------


def run_watchlist(
    watch: WatchList,
    *,
    now: datetime,
    progress: Progress = no_progress,
    io: PipelineIO | None = None,
    sleep: Callable[[float], None] | None = None,
    on_check: Callable[[AOICheck], None] | None = None,
) -> MonitorReport:
    """Check every watched AOI, then deliver the outbox. One AOI failing does not stop the
    others (its check is "failed"); BusyError when another run holds the state. With
    `watch.cluster`, each AOI's pipeline runs on a Dask worker while this process, the state's
    only writer, plans, commits and alerts."""
    io = io or PipelineIO.default()
    with hold_lock(watch.state), State(_unemptied_state(watch), empty_ok=True, check=True) as state:
        _refuse_going_back(state, now)
        run_id = state.begin_run(now)
        try:
            renamed = _carry_renamed(state, watch)
            ctx = _Context(state, run_id, now, watch, io, progress, renamed)
            report = _run(ctx, on_check, sleep)
        except BaseException as exc:
            # The error that stopped the run is the one to tell, not one of forgetting it.
            with contextlib.suppress(Exception):
                state.abandon_run(run_id, interrupted=not isinstance(exc, Exception))
            raise
        state.finish_run(run_id, _outcome(report))
        return report


def _outcome(report: MonitorReport) -> str:
    """`runs.outcome`, which agrees with the exit code: a delivery failing exits 1 too."""
    if report.failed:
        return "failed"
    return "undelivered" if report.deliveries.errors else "ok"


def _run(
    ctx: _Context,
    on_check: Callable[[AOICheck], None] | None,
    sleep: Callable[[float], None] | None,
) -> MonitorReport:
    state, run_id, watch = ctx.state, ctx.run_id, ctx.watch
    checks = _on_cluster(ctx) if watch.cluster else (_safe_check(ctx, w) for w in watch.aois)
    done = []
    for check in checks:
        state.record_aoi_run(
            run_id,
            check.aoi_id,
            check.outcome,
            new_scenes=len(check.new_scenes),
            new_alerts=len(check.alerts),
            message=check.message or None,
        )
        done.append(check)
        if on_check is not None:
            on_check(check)
    order = {w.aoi.id: i for i, w in enumerate(watch.aois)}
    done.sort(key=lambda c: order[c.aoi_id])
    kwargs = {} if sleep is None else {"sleep": sleep}
    try:
        deliveries = deliver_pending(state, webhook=watch.webhook, smtp=watch.smtp, **kwargs)
    except KeyboardInterrupt as exc:  # SIGTERM comes as one too (the CLI's handler)
        exc.add_note("every AOI was checked; alerts not delivered yet go out with the next run")
        raise
    unwatched = state.unwatched([w.aoi.id for w in watch.aois])
    return MonitorReport(run_id, tuple(done), deliveries, unwatched, ctx.renamed)


def _carry_renamed(state: State, watch: WatchList) -> dict[str, str]:
    """A watched AOI without a ledger takes over the one ledger the watch-list no longer names
    whose setup (outline and settings, not the id) is its own: the AOI's id was changed. Its
    structures keep their ids, verdicts and alerts (none is sent again) and its period cache;
    its outputs are written again under the new id (the old folder is left as it was). Where
    two new AOIs (or two old ledgers) share one setup, which is which is not for us to guess:
    nothing is carried, and each new AOI starts its own ledger."""
    orphans = state.unwatched_setups([w.aoi.id for w in watch.aois])
    if not orphans:
        return {}
    new = [w for w in watch.aois if state.aoi(w.aoi.id) is None]
    setups = {w.aoi.id: _setup_digest(w.aoi, w.config) for w in new}
    renamed: dict[str, str] = {}
    for aoi_id, setup in setups.items():
        olds = [old for old, kept in orphans.items() if kept == setup]
        alike = [other for other, theirs in setups.items() if theirs == setup]
        if len(olds) != 1 or len(alike) != 1:
            continue
        (old,) = olds
        state.rename_aoi(old, aoi_id, str(safe_out_dir(watch.out, aoi_id)))
        with contextlib.suppress(OSError):  # without it, periods are computed again
            memo_folder(watch.state, old).rename(memo_folder(watch.state, aoi_id))
        renamed[aoi_id] = old
    return renamed


def _unemptied_state(watch: WatchList) -> Path:
    """A state database emptied to 0 bytes (a full disk, a restore gone wrong, `> state`) would
    be taken for a new ledger: every structure alerted as new again, the history of alerts and
    reviews lost. Refused while an AOI folder holds outputs an earlier run wrote; without any,
    it is a first run killed before SQLite wrote its header, and that simply starts again.
    Returns the database's path."""
    if not emptied(watch.state):
        return watch.state
    written = [
        w.aoi.id for w in watch.aois if (safe_out_dir(watch.out, w.aoi.id) / "run.json").exists()
    ]
    if written:
        raise OutputError(
            f"state database '{watch.state}' is empty (0 bytes), but '{watch.out}' holds outputs "
            f"of earlier runs ({', '.join(written)}): restore the database from a backup, or "
            "delete it to start a new ledger (its structures are alerted as new again)"
        )
    return watch.state


def _refuse_going_back(state: State, now: datetime) -> None:
    """A run's clock before an earlier run's would take the scenes published in between out of
    the ledger (they are "not published yet"), withdraw what they confirmed, and leave it so:
    a usage error, before anything is searched."""
    latest = state.latest_now()
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if latest is not None and now < latest:
        raise UsageError(
            f"the run's clock {now.isoformat(timespec='seconds')} is before the clock of an "
            f"earlier run of this state ({latest.isoformat(timespec='seconds')}); pass a later "
            "--now (or fix the system clock), or replay the past with another --state"
        )


def _on_cluster(ctx: _Context) -> Iterator[AOICheck]:
    """Plan every AOI here, compute the ones with work on the cluster (one task each), and
    commit each as it comes back; checks in the order they finish."""
    from changedet.compute import ClusterTask, on_cluster

    jobs: list[_Job] = []
    for watched in ctx.watch.aois:
        planned = _guarded(watched.aoi.id, partial(_plan, ctx, watched))
        if isinstance(planned, AOICheck):
            yield planned
        else:
            jobs.append(planned)
    if not jobs:
        return
    tasks = [ClusterTask(job.aoi.id, _compute, (job,), {"io": ctx.io}) for job in jobs]
    for i, computed in on_cluster(ctx.watch.cluster, tasks, ctx.progress):
        job = jobs[i]
        if isinstance(computed, BaseException):
            yield _failed(job.aoi.id, computed, on_worker=True)
        else:
            yield _guarded(job.aoi.id, partial(_commit, ctx, job, computed))


def _safe_check(ctx: _Context, watched: WatchedAOI) -> AOICheck:
    return _guarded(watched.aoi.id, partial(check_aoi, ctx, watched))


def _guarded(aoi_id: str, step: Callable[[], T]) -> T | AOICheck:
    """`step()`, or the AOI's failed check: one AOI's error must not stop the watch-list."""
    try:
        return step()
    except Exception as exc:
        interrupt = interrupt_behind(exc)
        if interrupt is not None:
            raise interrupt from exc
        return _failed(aoi_id, exc)


def _failed(aoi_id: str, exc: BaseException, *, on_worker: bool = False) -> AOICheck:
    details = "".join(traceback.format_exception(exc))
    if isinstance(exc, ChangedetError):
        return AOICheck(aoi_id, "failed", message=str(exc).splitlines()[0], details=details)
    where = " on a worker" if on_worker else ""
    message = machine_trouble(exc) or (
        f"unexpected {type(exc).__name__}{where}: {exc}".splitlines()[0]
        + " (rerun with --debug for details and report it)"
    )
    return AOICheck(aoi_id, "failed", message=message, details=details)
