"""Command line: the only module that prints.

Exit codes: 0 every AOI processed; 1 some AOI failed (the others still ran) or a run failed;
2 usage or config error. Errors are one line on stderr, never a traceback (unless --debug).
"""

from __future__ import annotations

# ruff: noqa: E402 - the interrupt hook below goes in before the heavy imports
import os
import sys
from types import TracebackType


def _interrupted_on_start(
    kind: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """Ctrl-C while this module still imports (numpy alone takes a tenth of a second), before
    the CLI can catch it: one line and exit 130, not a traceback of the imports. Every later
    interrupt is caught by the CLI itself (`_interrupted`), so this hook sees only these."""
    if not issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    sys.stdout.flush()
    sys.stderr.write("changedet: error: interrupted\n")
    sys.stderr.flush()
    os._exit(130)  # nothing started yet: there is nothing to clean up


sys.excepthook = _interrupted_on_start

import importlib
import json
import logging
import signal
import tempfile
import threading
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from changedet import __version__
from changedet.errors import (
    CLUSTER_RUNNING,
    ChangedetError,
    UsageError,
    interrupt_behind,
    machine_trouble,
    silence_library_noise,
)
from changedet.memory import keep_freed_memory
from changedet.models import REVIEW_VERDICTS

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("changedet")


# --- progress rendering --------------------------------------------------------------------------


class _Renderer:
    """Progress callback: a rich bar on a terminal, plain log lines otherwise."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._last_logged: dict[str, int] = {}
        self._log_streams: list[tuple[logging.StreamHandler[Any], Any]] = []

    def __enter__(self) -> _Renderer:
        if self.tty and not self.quiet:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            real_stderr = sys.stderr
            self._progress = Progress(
                TextColumn("{task.description:<24}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,  # the bars go when done; the outcome lines stay
            )
            self._progress.start()
            # The log handler holds the stderr it was made with; while the bars are live, its
            # lines go through rich's proxy (now sys.stderr), which prints them above the bars.
            self._log_streams = [
                (handler, handler.setStream(sys.stderr))
                for handler in logging.getLogger().handlers
                if type(handler) is logging.StreamHandler
                and handler.stream is real_stderr
                and sys.stderr is not real_stderr
            ]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            for handler, stream in self._log_streams:
                handler.setStream(stream)

    def echo(self, message: str, *, err: bool = False) -> None:
        """A line for the analyst while the work goes on. With live bars on a terminal it goes
        through their console, which prints it above them: written past it (click.echo reaches
        the terminal under rich's stream proxies), the bars' next refresh moved the cursor up
        over it and erased the run's headline."""
        if self._progress is not None and (err or sys.stdout.isatty()):
            console = self._progress.console
            console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(message, err=err)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            task = self._tasks.get(stage)
            if task is None:
                task = self._tasks[stage] = self._progress.add_task(stage, total=max(total, 1))
            self._progress.update(task, completed=done, total=max(total, 1))
            return
        # Non-terminal: a line at start, every 25 % and at the end of each stage.
        step = max(1, total // 4)
        last = self._last_logged.get(stage, -step)
        if done == 0 or done >= total or done - last >= step:
            self._last_logged[stage] = done
            # A stage whose size is not known yet (a search's first page) has only started.
            count = f"{done}/{total}" if total else "started"
            click.echo(f"[changedet] {stage}: {count}", err=True)


INTERRUPTED = "interrupted; outputs already finished are kept, the unfinished AOI wrote nothing"
# On a Dask cluster the AOIs not started are cancelled; the running ones go on (the note says).
INTERRUPTED_ON_CLUSTER = (
    "interrupted; outputs already finished are kept, AOIs not started cancelled"
)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `systemctl stop`, a batch system's kill), ended as Ctrl-C is: every
    unfinished AOI's temporary folder removed on the way out."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


# Set by a command that writes nothing (`search`, `monitor status`): its interrupt is said
# without the words about outputs. Reset for every command (`main`).
_READ_ONLY = {"command": False}


def _read_only() -> None:
    _READ_ONLY["command"] = True


def _interrupted(exc: BaseException) -> NoReturn:
    """One line for Ctrl-C (exit 130) or SIGTERM (exit 143), with what the interrupt noted (AOIs
    a Dask cluster goes on computing)."""
    terminated = isinstance(exc, _Terminated) or isinstance(exc.__cause__, _Terminated)
    notes = [*getattr(exc, "__notes__", ()), *getattr(exc.__cause__, "__notes__", ())]
    on_cluster = any(CLUSTER_RUNNING in note for note in notes)
    said = (
        "interrupted"
        if _READ_ONLY["command"]
        else INTERRUPTED_ON_CLUSTER
        if on_cluster
        else INTERRUPTED
    )
    text = ("terminated (SIGTERM)" + said.removeprefix("interrupted")) if terminated else said
    _echo_error("; ".join([text, *notes]))
    sys.exit(143 if terminated else 130)


def _error_line(message: str) -> str:
    return f"changedet: error: {message}"


def _echo_error(message: str) -> None:
    click.echo(_error_line(message), err=True)


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """Map errors to one line and an exit code."""
    try:
        yield
    except ChangedetError as exc:
        if debug:
            traceback.print_exc()
        _echo_error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except (click.exceptions.Exit, click.ClickException, SystemExit):
        raise
    except Exception as exc:  # last resort: still one line, and how to get details
        interrupt = interrupt_behind(exc)
        if interrupt is not None:  # a library wrapped it (a signal during matplotlib's import)
            _interrupted(interrupt)
        if debug:
            traceback.print_exc()
        _echo_error(
            machine_trouble(exc)
            or f"unexpected {type(exc).__name__}: {exc}".splitlines()[0]
            + " (rerun with --debug for details and report it)"
        )
        sys.exit(1)


def _common_source_options(func: F) -> F:
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            help="TOML config file (default: built-in defaults = configs/default.toml).",
        ),
        click.option(
            "--catalog",
            help="STAC API URL, or a local static catalog / item collection (folder or JSON).",
        ),
        click.option(
            "--collection", help="STAC collection id, e.g. sentinel-2-l2a or sentinel-2-c1-l2a."
        ),
        click.option("--start", help="First date, YYYY-MM-DD."),
        click.option("--end", help="Last date (inclusive), YYYY-MM-DD."),
        click.option("--debug", is_flag=True, help="Show tracebacks on errors."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(config_path: str | None, **flags: str | None) -> Any:
    from changedet.config import load_config, local_catalog_problem, parse_date

    overrides: dict[str, Any] = {}
    _refuse_empty({f"--{key}": value for key, value in flags.items()})
    if flags.get("catalog"):
        catalog = str(flags["catalog"])
        is_url = "://" in catalog
        problem = None if is_url else local_catalog_problem(catalog)
        if problem:
            raise UsageError(
                f"--catalog '{catalog}' {problem}; pass a STAC API URL or a catalog.json / item collection"
            )
        overrides["catalog.url"] = catalog if is_url else str(Path(catalog).resolve())
    if flags.get("collection"):
        overrides["catalog.collection"] = flags["collection"]
    for key in ("start", "end"):
        if flags.get(key):
            overrides[f"time.{key}"] = parse_date(str(flags[key]), f"--{key}")
    return load_config(config_path, overrides)


def _refuse_empty(options: Mapping[str, str | None]) -> None:
    """An option given as "" fell back to the config's value (or wrote into ./<id>), unsaid."""
    for option, value in options.items():
        if value is not None and not str(value).strip():
            raise UsageError(f"{option} is empty; give a value or leave the option out")


def _load_aois(paths: tuple[str, ...], config: Any) -> list[Any]:
    from changedet.aoi import load_aois

    aois = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in paths:
            aois.extend(load_aois(path, config.aoi))
    for w in caught:
        click.echo(f"changedet: warning: {w.message}", err=True)
    return aois


def _refuse_repeated_files(paths: Sequence[str]) -> None:
    """One AOI file given twice (`a.geojson ./a.geojson`, an overlapping glob) would run its AOIs
    twice into one folder, the first run's outputs pushed out by the second: a usage error."""
    first: dict[str, str] = {}
    for path in paths:
        real = os.path.realpath(os.path.expanduser(path))
        if real in first:
            also = f" (as '{first[real]}' too)" if first[real] != path else ""
            raise UsageError(f"AOI file '{path}' is given twice{also}; give each file once")
        first[real] = path


def _refuse_shared_ids(sourced: list[tuple[str, Any]]) -> None:
    """Two AOIs of different files with one id would write one OUT/<id>/: a usage error, before
    anything is computed. (Within one file, `load_aois` renames repeats and says so.)"""
    first: dict[str, str] = {}
    for source, aoi in sourced:
        other = first.setdefault(aoi.id.lower(), source)  # case-insensitive file systems too
        if other != source:
            raise UsageError(
                f"AOI id '{aoi.id}' is used in both '{other}' and '{source}': their outputs would "
                "share one folder; give the features distinct ids ([aoi] id_property) or run "
                "the files with separate --out folders"
            )


def _check_out_writable(out_dir: str, aoi_ids: Sequence[str] = (), *, name: str = "--out") -> None:
    """--out (or the folder it will be made in) must take files: checked before any computing,
    by creating and removing a hidden probe file, so a read-only or full disk fails now. An
    earlier run's OUT/<aoi_id> is moved aside when the new one is ready, which a read-only
    folder refuses: that too is said now, not after the run. `name`: what the user set it by
    (the monitor's is the watch-list's `out`)."""
    other = "pass another --out" if name == "--out" else f"set {name} to another folder"
    path = Path(out_dir).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"{name} '{out_dir}': '{existing}' is a file, not a folder; {other} for the outputs"
        )
    try:
        with tempfile.NamedTemporaryFile(prefix=".changedet-write-check-", dir=existing):
            pass
    except OSError as exc:
        raise UsageError(
            f"{name} '{out_dir}' is not writable ({exc.strerror or exc}); {other}, one you can "
            "write to"
        ) from None
    for aoi_id in aoi_ids:
        earlier = path / aoi_id
        if earlier.exists() and not earlier.is_dir():  # found only after the whole run before
            raise UsageError(
                f"{name} '{out_dir}': '{earlier}' is a file where AOI '{aoi_id}' writes its "
                f"folder; move the file away or {other}"
            )
        if earlier.is_dir() and not os.access(earlier, os.W_OK | os.X_OK):
            raise UsageError(
                f"{name} '{out_dir}': the earlier outputs '{earlier}' are read-only and a run "
                f"replaces them; make the folder writable (chmod u+w '{earlier}') or {other}"
            )
        _refuse_clash(earlier, f"{name} '{out_dir}'", other)


def _refuse_clash(folder: Path, where: str, other: str) -> None:
    """An analyst's file or folder where a run puts one of its own (a file named `previous`, a
    folder named `run.json`): said now, not after the whole analysis as an internal path."""
    from changedet.outputs.runfolder import clash

    what = clash(folder)
    if what is not None:
        raise UsageError(f"{where}: {what}; move it away or {other}")


# --- commands -----------------------------------------------------------------------------------

# The test bench's command groups (in `changedet.lab.cli`) and their one-line help. The product
# never imports the lab: these groups are loaded by name, only when invoked.
LAB_COMMANDS: dict[str, str] = {
    "eval": "Score the detector on labelled benchmarks.",
    "synth": "Generate synthetic or semi-real test data.",
}
_LAB_CLI = "changedet.lab.cli"
_LAB_GROUPS = {"eval": "eval_group", "synth": "synth"}  # command name -> attribute of _LAB_CLI


def _given_twice(command: click.Command, args: Sequence[str]) -> str | None:
    """The first option taking one value that `args` give twice (click keeps the last)."""
    valued = {  # options that take the next argument as their value
        name: param
        for param in command.params
        if isinstance(param, click.Option) and not (param.is_flag or param.count)
        for name in param.opts
    }
    seen: set[str | None] = set()
    given = iter(args)
    for arg in given:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        param = valued.get(name)
        if param is None:
            continue
        if not param.multiple:
            if param.name in seen:
                return name
            seen.add(param.name)
        if "=" not in arg:
            next(given, None)  # its value, which may look like an option ("--note --state")
    return None


class _OnceCommand(click.Command):
    """A command that refuses an option given twice: `--config a.toml --config b.toml` ran on
    b.toml alone, without a word."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        twice = _given_twice(self, args)
        if twice is not None:
            raise click.UsageError(f"{twice} is given twice; give it once", ctx=ctx)
        return super().parse_args(ctx, args)


class OnceGroup(click.Group):
    """A group whose commands refuse an option given twice (`_OnceCommand`)."""

    command_class = _OnceCommand


class _MainGroup(click.Group):
    """The top-level group: its own commands plus the lab's, imported on first use (click's
    documented lazy-loading pattern). Help lists the lab's from `LAB_COMMANDS` without importing."""

    command_class = _OnceCommand
    group_class = OnceGroup

    def invoke(self, ctx: click.Context) -> Any:
        """Ctrl-C anywhere in any command: one line, exit 130 (click would print "Aborted!" and
        exit 1); SIGTERM alike, exit 143. Outputs are written atomically, so the unfinished AOI
        left none behind."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            _interrupted(exc)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Click's own usage errors (a missing argument, an unknown option, a value of the wrong
        type) in one line too, naming the command's --help; exit code 2 as click gives it."""
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)
        try:
            code = super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `changedet monitor`: its help
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            text = exc.format_message().rstrip(".")
            if exc.ctx is not None:
                root = exc.ctx.find_root().command_path  # "changedet", "python -m changedet"
                path = f"changedet{exc.ctx.command_path[len(root) :]}"
                see = f"see '{path} --help'"
                text += f" {see[0].upper()}{see[1:]}" if text.endswith("?") else f"; {see}"
            _echo_error(text)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _echo_error(exc.format_message())
            sys.exit(exc.exit_code)
        except click.exceptions.Abort as exc:
            _interrupted(exc)
        sys.exit(code if isinstance(code, int) else 0)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAB_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAB_COMMANDS:
            return super().get_command(ctx, cmd_name)
        command: click.Command = getattr(importlib.import_module(_LAB_CLI), _LAB_GROUPS[cmd_name])
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in LAB_COMMANDS:
                rows.append((name, LAB_COMMANDS[name]))
                continue
            command = super().get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class _NotLibraryLines(logging.Filter):
    """GDAL's and urllib3's own log lines ("HTTP error code: 500 ... Retrying again in 0.1
    secs") are not the analyst's: what fails reaches them as changedet's reason for the scene or
    the request. They still reach other handlers (a library user's, the tests')."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(("rasterio", "urllib3"))


_LIBRARY_LINES = _NotLibraryLines()


class _Prefixed(logging.Formatter):
    """changedet's own logged warnings (the pixel cache's) as every other warning reads:
    "changedet: warning: ..."."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.name.startswith("changedet") and record.levelno >= logging.WARNING:
            return f"changedet: {record.levelname.lower()}: {text}"
        return text


@click.group(cls=_MainGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="changedet")
def main() -> None:
    """changedet: find new structures and earthworks in Sentinel-2 time series over an AOI."""
    if sys.excepthook is _interrupted_on_start:  # the imports are done: the CLI catches now,
        sys.excepthook = sys.__excepthook__  # and its os._exit must not skip a process's atexit
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    _READ_ONLY["command"] = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    for handler in logging.getLogger().handlers:  # the terminal's, not a library user's
        if type(handler) is logging.StreamHandler and _LIBRARY_LINES not in handler.filters:
            handler.addFilter(_LIBRARY_LINES)
            handler.setFormatter(_Prefixed())
    silence_library_noise()  # the lab's commands too, which do not go through the pipeline
    keep_freed_memory()  # the process is the CLI's: large arrays reuse freed memory


@main.command()
@click.argument("aoi_files", nargs=-1, required=True, metavar="AOI...")
@_common_source_options
@click.option(
    "--out",
    "out_dir",
    default="out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output folder; each AOI writes OUT/<aoi_id>/.",
)
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option(
    "--cluster",
    help="Run the AOIs on a Dask scheduler, e.g. tcp://10.0.0.5:8786 (pip install "
    "'changedet[dask]'; OUT must be writable by every worker). Default: [compute] cluster.",
)
@click.option(
    "--ids-from",
    "ids_from",
    type=click.Path(file_okay=False),
    help="The OUT folder of an earlier run: its structures keep their ids here (a footprint "
    "that grew across an id cell keeps the id it had). May be OUT itself.",
)
@click.option(
    "--id",
    "only_ids",
    multiple=True,
    metavar="ID",
    help="Run only the AOI with this id (repeatable); default: every AOI in the files.",
)
def run(
    aoi_files: tuple[str, ...],
    config_path: str | None,
    catalog: str | None,
    collection: str | None,
    start: str | None,
    end: str | None,
    debug: bool,
    out_dir: str,
    quiet: bool,
    cluster: str | None,
    ids_from: str | None,
    only_ids: tuple[str, ...],
) -> None:
    """Detect new structures in each AOI and write OUT/<aoi_id>/."""
    from changedet.compute import run_aois
    from changedet.config import scheduler_address_problem
    from changedet.pipeline import periods_for

    # Everything that can be refused is refused before anything is searched, read or computed:
    # the config, the time range, AOI ids shared across files, an --out that takes no files.
    with _errors(debug):
        _refuse_empty({"--out": out_dir, "--ids-from": ids_from})
        config = _load(config_path, catalog=catalog, collection=collection, start=start, end=end)
        if cluster:
            problem = scheduler_address_problem(cluster)
            if problem:
                raise UsageError(f"--cluster {problem}")
            config = replace(config, compute=replace(config.compute, cluster=cluster))
        periods_for(config)  # a time range too short to compare is a usage error, for every AOI
        sourced, failed = _load_each(aoi_files, config, debug=debug)
        _refuse_shared_ids(sourced)
        aois = _chosen([aoi for _source, aoi in sourced], only_ids, complete=not failed)
        _check_out_writable(out_dir, [aoi.id for aoi in aois])
        earlier = _earlier(Path(ids_from).expanduser(), aois) if ids_from else None
        out_root = Path(out_dir).expanduser()  # as checked: a quoted '~/x' went to ./~/x
        with _Renderer(quiet=quiet) as progress:
            for outcome in run_aois(
                aois, config, out_root=out_root, progress=progress, earlier=earlier
            ):
                failed += not _report(outcome, debug=debug, renderer=progress)
    sys.exit(1 if failed else 0)


def _chosen(aois: list[Any], ids: tuple[str, ...], *, complete: bool) -> list[Any]:
    """The AOIs `--id` names (all without it), in the files' order; an id no file holds is a
    usage error naming those they hold (an AOI file that could not be read may have held it)."""
    if not ids:
        return aois
    held = [aoi.id for aoi in aois]
    missing = [i for i in dict.fromkeys(ids) if i not in held]
    if missing:
        some = ", ".join(held[:10]) + (" ..." if len(held) > 10 else "")
        unread = "" if complete else "; an AOI file that could not be read may hold it"
        raise UsageError(
            f"--id {', '.join(missing)}: no AOI of the given files has this id (they hold: "
            f"{some or 'none'}){unread}; pass one of those"
        )
    return [aoi for aoi in aois if aoi.id in ids]


def _earlier(folder: Path, aois: list[Any]) -> dict[str, Any]:
    """--ids-from: the earlier run's structures of each AOI (read before anything is written,
    so --ids-from may be OUT itself); a warning for an AOI that run did not have."""
    from changedet.outputs.earlier import earlier_structures

    if not folder.is_dir():
        raise UsageError(
            f"--ids-from '{folder}' is not a folder; pass the --out folder of an earlier run"
        )
    found: dict[str, Any] = {}
    for aoi in aois:
        known = earlier_structures(folder, aoi.id)
        if known is None:
            click.echo(
                f"changedet: warning: --ids-from '{folder}' has no structures of AOI "
                f"'{aoi.id}'; its ids come from place alone",
                err=True,
            )
        else:
            found[aoi.id] = known
    return found


def _load_each(
    paths: tuple[str, ...], config: Any, *, debug: bool
) -> tuple[list[tuple[str, Any]], int]:
    """(source file, AOI) of every readable AOI file, and how many files failed: one unreadable
    AOI file fails its AOIs only; the others still run."""
    _refuse_repeated_files(paths)
    sourced: list[tuple[str, Any]] = []
    failed = 0
    for path in paths:
        try:
            sourced.extend((path, aoi) for aoi in _load_aois((path,), config))
        except ChangedetError as exc:
            if debug:
                traceback.print_exc()
            _echo_error(str(exc))
            failed += 1
    return sourced, failed


def _report(outcome: Any, *, debug: bool, renderer: _Renderer) -> bool:
    """Say what became of one AOI; False when it failed."""
    if outcome.summary is None:
        if debug and outcome.details:
            renderer.echo(outcome.details, err=True)
        renderer.echo(_error_line(f"AOI '{outcome.aoi_id}': {outcome.error}"), err=True)
        return False
    renderer.echo(outcome.summary.describe())
    _echo_warnings(outcome.summary, renderer)
    return True


def _echo_warnings(summary: Any, renderer: _Renderer) -> None:
    """A run's warnings (coverage, unreadable scenes, a short comparison), one line each."""
    for warning in summary.warnings:
        renderer.echo(f"changedet: warning: {warning}", err=True)


@main.command()
@click.argument("aoi_files", nargs=-1, required=True, metavar="AOI...")
@_common_source_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option(
    "--probe",
    is_flag=True,
    help="Read each scene's SCL window to report how clear it is around the AOI.",
)
@click.option("--quiet", is_flag=True, help="No progress output.")
def search(
    aoi_files: tuple[str, ...],
    config_path: str | None,
    catalog: str | None,
    collection: str | None,
    start: str | None,
    end: str | None,
    debug: bool,
    as_json: bool,
    probe: bool,
    quiet: bool,
) -> None:
    """List the scenes a run would use, and why any were dropped."""
    _read_only()
    from changedet.aoi import zone_edge_warning
    from changedet.pipeline import search_aoi

    with _errors(debug):
        config = _load(config_path, catalog=catalog, collection=collection, start=start, end=end)
        sourced, failed = _load_each(aoi_files, config, debug=debug)  # as `run`: the rest go on
        for warning in filter(None, (zone_edge_warning(aoi) for _, aoi in sourced)):
            click.echo(f"changedet: warning: {warning}", err=True)  # a run's headline says it
        reports = []
        with _Renderer(quiet=as_json or quiet) as progress:
            for _, aoi in sourced:
                reports.append(search_aoi(aoi, config, probe=probe, progress=progress))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        _print_reports(reports, config, probed=probe)
    sys.exit(1 if failed else 0)


def _print_reports(reports: Sequence[Any], config: Any, *, probed: bool) -> None:
    """The search's tables (or a sentence when a table would be empty) and notes."""
    from rich.console import Console

    # Piped output is read by people and grep alike: do not squeeze it to 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 220, highlight=False)
    for report in reports:
        rows = report.rows()
        if rows:
            console.print(_scene_table(report, rows, probed=probed))
        else:  # an empty table says less than a sentence
            console.print(
                f"AOI {report.aoi_id}: no scene from {report.source} covers it between "
                f"{config.time.start} and {config.time.end}; check the AOI location, widen the "
                "dates or point --catalog elsewhere",
                markup=False,
            )
        for note in report.notes:
            console.print(f"note: {note}", markup=False)


def _scene_table(report: Any, rows: Sequence[tuple[str, ...]], *, probed: bool) -> Any:
    from rich.table import Table
    from rich.text import Text  # plain text: "[catalog] allowed_folders" is no markup

    used = sum(1 for row in rows if row[-1] == "used")
    # Without --probe nothing was said of clouds around the AOI: a run may use fewer
    unchecked = "" if probed else " (not yet checked for cloud around the AOI: --probe does)"
    table = Table(  # every row counted: the scenes found and those dropped before (duplicates)
        title=Text(
            f"AOI {report.aoi_id}: {len(rows)} scene(s) from {report.source}: {used} used"
            f"{unchecked}, {len(rows) - used} dropped"
        )
    )
    table.add_column("id", no_wrap=True)
    for col in ("datetime", "tile", "cloud %", "clear % around AOI", "status"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


# --- monitoring ---------------------------------------------------------------------------------


@main.group()
def monitor() -> None:
    """The scheduled job: watch AOIs, update the ledger incrementally, send alerts."""


def _watchlist(config_path: str, state: str | None) -> Any:
    from changedet.monitor.watchlist import load_watchlist

    return load_watchlist(config_path).with_state(None if state is None else Path(state))


def _parse_now(text: str | None) -> Any:
    from datetime import UTC, datetime, timedelta

    if text is None:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--now '{text}' is not an ISO date or time (e.g. 2024-03-01 or 2024-03-01T12:00Z)"
        ) from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when > datetime.now(UTC) + timedelta(days=1):  # it would hold every later run back
        raise UsageError(
            f"--now {when:%Y-%m-%d %H:%M} is in the future; a run there would refuse every run "
            "before it (the state keeps the latest clock): give a time up to now"
        )
    return when


_CONFIG = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Watch-list TOML (e.g. configs/monitor-demo.toml).",
)
_STATE = click.option(
    "--state", type=click.Path(dir_okay=False), help="State database (default: the watch-list's)."
)


def _describe_check(check: Any) -> str:
    if check.outcome != "updated":
        return f"{check.aoi_id}: {check.outcome}: {check.message}"
    if not (check.new_scenes or check.replaced or check.retried or check.left):
        return f"{check.aoi_id}: updated: {check.message} (no new scene)"
    parts = [f"{len(check.new_scenes)} new scene(s)"]
    if check.replaced:
        parts.append(f"{len(check.replaced)} replaced by reprocessing")
    if check.retried:
        parts.append(f"{len(check.retried)} unreadable last time read again")
    for reason, n in Counter(d.reason for d in check.left).items():
        parts.append(f"{n} left out ({reason})")
    parts.append(f"{len(check.alerts)} new alert(s)")
    parts.append(
        f"change computed for {check.periods_computed} period(s), {check.periods_reused} reused"
    )
    parts.append(
        f"composites made for {check.composites_computed}, {check.composites_reused} reused"
    )
    if check.summary is not None:
        read = check.summary.n_scenes - check.dates_kept
        parts.append(f"dates read {read}, {check.dates_kept} kept")
    line = f"{check.aoi_id}: updated: {', '.join(parts)}"
    if check.summary is not None:
        line += "\n  " + check.summary.describe().replace("\n", "\n  ")
    return line


def _tell_check(check: Any, renderer: _Renderer) -> None:
    """One AOI's check as it ends, with its run's warnings."""
    renderer.echo(_describe_check(check))
    if check.summary is not None:
        _echo_warnings(check.summary, renderer)  # a search cut short among them
    elif check.search_stopped:
        renderer.echo(
            f"changedet: warning: AOI '{check.aoi_id}': the catalog search was cut short "
            f"({check.search_stopped}), so scenes it did not page to are missing from the "
            "ledger; the next run searches from the watch's start again",
            err=True,
        )


@monitor.command("run")
@_CONFIG
@_STATE
@click.option(
    "--now", "now_text", help="Fix the clock (ISO time); later scenes count as unpublished."
)
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option(
    "--cluster",
    help="Compute the AOIs on a Dask scheduler, e.g. tcp://10.0.0.5:8786 (pip install "
    "'changedet[dask]'; the state's folder and OUT must be the same path on every worker). "
    "Default: the watch-list's cluster.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def monitor_run(
    config_path: str,
    state: str | None,
    now_text: str | None,
    quiet: bool,
    cluster: str | None,
    debug: bool,
) -> None:
    """Check every watched AOI once; exit 1 when an AOI or a delivery failed."""
    from changedet.monitor.run import run_watchlist

    with _errors(debug):
        watch = _watchlist(config_path, state).with_cluster(cluster)
        now = _parse_now(now_text)
        _check_out_writable(
            str(watch.out), [w.aoi.id for w in watch.aois], name="the watch-list's out"
        )
        with _Renderer(quiet=quiet) as progress:
            report = run_watchlist(
                watch,
                now=now,
                progress=progress,
                on_check=lambda check: _tell_check(check, progress),
            )
    d = report.deliveries
    if d.delivered or d.failed:
        click.echo(f"alerts: {d.delivered} delivered, {d.failed} waiting for the next run")
    for error in dict.fromkeys(d.errors):
        click.echo(
            f"changedet: warning: delivery failed ({error}); kept for the next run", err=True
        )
    for unsent in d.unsent:  # not a failure: the channel was taken out on purpose, maybe
        click.echo(f"changedet: warning: {unsent}", err=True)
    _warn_unwatched(report.unwatched)
    for check in report.checks:
        if check.outcome == "failed":
            if debug and check.details:
                click.echo(check.details.rstrip(), err=True)
            _echo_error(f"AOI '{check.aoi_id}': {check.message}")
    sys.exit(1 if report.failed or d.errors else 0)


def _warn_unwatched(unwatched: Mapping[str, int]) -> None:
    """Ledgers the watch-list no longer names: an AOI renamed as its outline or settings were
    edited starts a new one (its structures alerted as new again), which nothing else would say."""
    if unwatched:
        listed = ", ".join(f"'{aoi}' ({n} structures)" for aoi, n in sorted(unwatched.items()))
        click.echo(
            f"changedet: warning: the state keeps the ledger of AOI(s) the watch-list no longer "
            f"names: {listed}; an AOI whose id was changed with its outline or settings starts a "
            "new ledger under the new id",
            err=True,
        )


@monitor.command("status")
@_CONFIG
@_STATE
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def monitor_status(config_path: str, state: str | None, as_json: bool, debug: bool) -> None:
    """Per AOI: the last run, the last scene, counts and pending deliveries."""
    _read_only()
    from changedet.monitor.state import State, memo_bytes

    with _errors(debug):
        watch = _watchlist(config_path, state)
        summaries = []
        unwatched: dict[str, int] = {}
        if watch.state.exists():
            with State(watch.state) as db:
                summaries = [db.summary(w.aoi.id) for w in watch.aois]
                unwatched = db.unwatched([w.aoi.id for w in watch.aois])
        else:
            summaries = [{"aoi": w.aoi.id, "last_run": None} for w in watch.aois]
        for s in summaries:
            s["period_cache_bytes"] = memo_bytes(watch.state, s["aoi"])
            if "structures" in s:  # each ledger status apart; the total as the text counts it
                s["confirmed_total"] = confirmed_total(s["structures"])
        caches = _pixel_caches(watch)
    if as_json:
        doc = {
            "state": str(watch.state),
            "aois": summaries,
            "unwatched": unwatched,
            "pixel_caches": caches,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    _warn_unwatched(unwatched)
    click.echo(f"state: {watch.state}")
    for c in caches:
        click.echo(
            f"pixel cache {c['folder']}: {c['bytes'] / 1e9:.2f} of {c['max_bytes'] / 1e9:g} GB"
        )
    for s in summaries:
        last = s.get("last_run")
        if last is None:
            click.echo(f"{s['aoi']}: never run")
            continue
        counts = structure_counts(s["structures"])
        reviews = ", ".join(f"{n} {v}" for v, n in sorted(s["reviews"].items())) or "none"
        pending = s["pending_deliveries"]
        unreadable = s["scenes_unreadable"]
        retry = f", {unreadable} unreadable, read again each run" if unreadable else ""
        click.echo(
            f"{s['aoi']}: last run {_minute(last['started'])} (clock {_minute(last['now'])}): "
            f"{last['outcome']}{': ' + last['message'] if last['message'] else ''}\n"
            f"  last scene {_minute(s['last_scene'])} ({s['scenes_used']} used{retry}); structures: "
            f"{counts}; reviews: {reviews}; alerts {s['alerts']} "
            f"({pending} {'delivery' if pending == 1 else 'deliveries'} pending); "
            f"period cache {s['period_cache_bytes'] / 1e6:.0f} MB"
        )


def _minute(iso: str | None) -> str:
    """'2024-02-27T07:05:30.655000+00:00' as people read it: '2024-02-27 07:05 UTC' (the JSON
    keeps the full time)."""
    if not iso:
        return "-"
    from datetime import UTC, datetime

    when = datetime.fromisoformat(iso)
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%d %H:%M") + (" UTC" if when.tzinfo is not None else "")


def confirmed_total(by_status: dict[str, int]) -> int:
    """Confirmed structures, bermed and vanished ones included (`monitor.decide`)."""
    from changedet.monitor.decide import CONFIRMED_STATES

    return sum(by_status.get(status, 0) for status in CONFIRMED_STATES)


def structure_counts(by_status: dict[str, int]) -> str:
    """The ledger's structures by status as an analyst reads them: bermed and vanished
    structures are confirmed ones (`monitor.decide`), so they are counted in, not beside, them:
    "53 confirmed (17 bermed), 3 candidate, 2 dropped"."""
    from changedet.monitor.decide import CONFIRMED_STATES

    confirmed = confirmed_total(by_status)
    parts = []
    if confirmed:
        within = ", ".join(
            f"{by_status[status]} {status}"
            for status in CONFIRMED_STATES
            if status != "confirmed" and by_status.get(status)
        )
        parts.append(f"{confirmed} confirmed" + (f" ({within})" if within else ""))
    parts += [f"{n} {st}" for st, n in sorted(by_status.items()) if st not in CONFIRMED_STATES]
    return ", ".join(parts) or "none"


def _pixel_caches(watch: Any) -> list[dict[str, Any]]:
    """Each pixel cache folder the watch-list's AOIs read through: its size and its limit (the
    smallest any AOI sets)."""
    from changedet.read.cache import cache_bytes

    limits: dict[str, int] = {}
    for w in watch.aois:
        if w.config.read.cache_dir:
            folder = str(Path(w.config.read.cache_dir).expanduser())
            limit = int(w.config.read.cache_max_gb * 1e9)
            limits[folder] = min(limits.get(folder, limit), limit)
    return [{"folder": f, "bytes": cache_bytes(Path(f)), "max_bytes": m} for f, m in limits.items()]


@main.command()
@click.argument("aoi_id")
@click.argument("structure_id")
@click.option(
    "--as",
    "verdict",
    required=True,
    type=click.Choice(REVIEW_VERDICTS),
    help="Your verdict.",
)
@click.option("--note", help="Why (kept with the verdict).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Watch-list TOML whose state database holds the AOI.",
)
@_STATE
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def review(
    aoi_id: str,
    structure_id: str,
    verdict: str,
    note: str | None,
    config_path: str | None,
    state: str | None,
    debug: bool,
) -> None:
    """Record your verdict on a monitored structure; it shows from the next run on."""
    from changedet.monitor.state import State

    with _errors(debug):
        if state is None and config_path is None:
            raise UsageError("pass --config WATCHLIST.toml or --state DB")
        path = Path(state) if state else _watchlist(str(config_path), None).state
        if not path.exists():
            raise UsageError(
                f"state database '{path}' does not exist; run `changedet monitor run` first"
            )
        with State(path) as db:
            status = db.add_review(aoi_id, structure_id, verdict, note)
    shown = (
        "it is dropped (not in the outputs): the verdict shows if it is detected again"
        if status == "dropped"
        else "the next `changedet monitor run` refreshes the outputs"
    )
    click.echo(f"{aoi_id} {structure_id}: recorded as {verdict}; {shown}")


__all__ = ["LAB_COMMANDS", "main"]
