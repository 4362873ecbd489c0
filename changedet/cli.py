"""Command line: the only module that prints.

Exit codes: 0 every AOI processed; 1 some AOI failed (the others still ran) or a run failed;
2 usage or config error. Errors are one line on stderr, never a traceback (unless --debug).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from changedet import __version__
from changedet.errors import ChangedetError, UsageError

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

            self._progress = Progress(
                TextColumn("{task.description:<24}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

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
            click.echo(f"[changedet] {stage}: {done}/{total}", err=True)


def _echo_error(message: str) -> None:
    click.echo(f"changedet: error: {message}", err=True)


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
    except KeyboardInterrupt:
        _echo_error("interrupted; outputs of the unfinished AOI were not written")
        sys.exit(130)
    except (click.exceptions.Exit, click.ClickException, SystemExit):
        raise
    except Exception as exc:  # last resort: still one line, and how to get details
        if debug:
            traceback.print_exc()
        _echo_error(
            f"unexpected {type(exc).__name__}: {exc}".splitlines()[0]
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
    from changedet.config import load_config, parse_date

    overrides: dict[str, Any] = {}
    if flags.get("catalog"):
        catalog = str(flags["catalog"])
        is_url = "://" in catalog
        if not is_url and not Path(catalog).exists():
            raise UsageError(
                f"catalog path '{catalog}' does not exist; pass a STAC API URL or a catalog.json / item collection"
            )
        overrides["catalog.url"] = catalog if is_url else str(Path(catalog).resolve())
    if flags.get("collection"):
        overrides["catalog.collection"] = flags["collection"]
    for key in ("start", "end"):
        if flags.get(key):
            overrides[f"time.{key}"] = parse_date(str(flags[key]), f"--{key}")
    return load_config(config_path, overrides)


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


# --- commands -----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="changedet")
def main() -> None:
    """changedet: find new structures and earthworks in Sentinel-2 time series over an AOI."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


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
) -> None:
    """Detect new structures in each AOI and write OUT/<aoi_id>/."""
    from changedet.pipeline import periods_for, run_aoi

    with _errors(debug):
        config = _load(config_path, catalog=catalog, collection=collection, start=start, end=end)
        periods_for(config)  # a time range too short to compare is a usage error, for every AOI
    # One unreadable AOI file fails its AOIs only; the others still run.
    aois, failed = [], 0
    for path in aoi_files:
        try:
            aois.extend(_load_aois((path,), config))
        except ChangedetError as exc:
            if debug:
                traceback.print_exc()
            _echo_error(str(exc))
            failed += 1
    for aoi in aois:
        with _Renderer(quiet=quiet) as progress:
            try:
                summary = run_aoi(aoi, config, out_root=Path(out_dir), progress=progress)
            except ChangedetError as exc:
                if debug:
                    traceback.print_exc()
                _echo_error(f"AOI '{aoi.id}': {exc}")
                failed += 1
                continue
            except Exception as exc:
                if debug:
                    traceback.print_exc()
                _echo_error(
                    f"AOI '{aoi.id}': unexpected {type(exc).__name__}: {exc} (rerun with --debug)"
                )
                failed += 1
                continue
        click.echo(summary.describe())
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("aoi_files", nargs=-1, required=True, metavar="AOI...")
@_common_source_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option(
    "--probe", is_flag=True, help="Read each scene's SCL window to report the AOI clear %."
)
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
) -> None:
    """List the scenes a run would use, and why any were dropped."""
    from changedet.pipeline import search_aoi

    with _errors(debug):
        config = _load(config_path, catalog=catalog, collection=collection, start=start, end=end)
        aois = _load_aois(aoi_files, config)
        reports = []
        with _Renderer(quiet=as_json) as progress:
            for aoi in aois:
                reports.append(search_aoi(aoi, config, probe=probe, progress=progress))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    # Piped output is read by people and grep alike: do not squeeze it to 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 220)
    for report in reports:
        table = Table(
            title=f"AOI {report.aoi_id}: {len(report.used)} scene(s) from {report.source}"
        )
        table.add_column("id", no_wrap=True)
        for col in ("datetime", "tile", "cloud %", "AOI clear %", "status"):
            table.add_column(col)
        for row in report.rows():
            table.add_row(*row)
        console.print(table)
        for note in report.notes:
            console.print(f"note: {note}")


@main.group()
def synth() -> None:
    """Generate synthetic or semi-real test data."""


@synth.command("sample")
@click.option(
    "--aoi",
    "aoi_file",
    type=click.Path(dir_okay=False),
    help="One AOI file (default with --all: aoi/*.geojson).",
)
@click.option(
    "--all",
    "all_aois",
    is_flag=True,
    help="Regenerate the bundled sample_tiles/ for every bundled AOI.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Output folder (default sample_tiles/<aoi_id>).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--debug", is_flag=True)
def synth_sample(
    aoi_file: str | None, all_aois: bool, out_dir: str | None, seed: int, debug: bool
) -> None:
    """Write the seeded synthetic Sentinel-2 sample tiles (COGs + static STAC + truth)."""
    from changedet.lab import sample as synth_mod

    with _errors(debug), _Renderer(quiet=False) as progress:
        if all_aois:
            summaries = synth_mod.regenerate_all(Path.cwd(), progress=progress)
        elif aoi_file:
            from changedet.aoi import load_aois

            summaries = []
            for aoi in load_aois(aoi_file):
                target = Path(out_dir) / aoi.id if out_dir else Path("sample_tiles") / aoi.id
                summaries.append(synth_mod.write_sample(aoi, target, seed=seed, progress=progress))
        else:
            raise UsageError("pass --aoi FILE or --all")
    for s in summaries:
        click.echo(
            f"wrote {s.n_items} items, {s.n_truth} true new structures, {s.bytes_written / 1e6:.1f} MB to {s.out_dir}"
        )


@synth.command("oscd-series")
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False),
    help="OSCD root folder (holds the 'Onera Satellite Change Detection dataset - ...' folders).",
)
@click.option("--city", required=True, help="OSCD city name, e.g. beihai.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--start", default="2023-01-01", show_default=True, help="Date of the first acquisition."
)
@click.option("--months", default=12, show_default=True, type=click.IntRange(2, 60))
@click.option("--debug", is_flag=True)
def synth_oscd_series(
    root: str, city: str, out_dir: str, seed: int, start: str, months: int, debug: bool
) -> None:
    """Build a monthly semi-real series from a real OSCD pair and its labels."""
    from changedet.config import parse_date
    from changedet.lab.series import write_oscd_series

    with _errors(debug), _Renderer(quiet=False) as progress:
        summary = write_oscd_series(
            Path(root),
            city,
            Path(out_dir),
            seed=seed,
            start=parse_date(start, "--start"),
            months=months,
            progress=progress,
        )
    click.echo(str(summary))


@main.group("eval")
def eval_group() -> None:
    """Score the detector on labelled benchmarks."""


@eval_group.command("oscd")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="OSCD root folder.")
@click.option("--cities", help="Comma-separated city names (default: every city under --root).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
@click.option("--debug", is_flag=True)
def eval_oscd(
    root: str, cities: str | None, out_dir: str, config_path: str | None, debug: bool
) -> None:
    """Run the default detector on OSCD; print per-city and pooled precision/recall/F1."""
    from changedet.config import load_config
    from changedet.lab.oscd import evaluate

    with _errors(debug):
        if not Path(root).is_dir():
            raise UsageError(
                f"OSCD root '{root}' is not a folder; pass the folder holding the OSCD dataset"
            )
        config = load_config(config_path)
        names = [c.strip() for c in cities.split(",") if c.strip()] if cities else None
        with _Renderer(quiet=False) as progress:
            report = evaluate(
                Path(root), Path(out_dir), cities=names, config=config.change, progress=progress
            )

    def fmt(v: float | None) -> str:
        return "   -  " if v is None else f"{v:6.3f}"

    click.echo(f"{'city':<14}{'precision':>10}{'recall':>10}{'F1':>10}")
    for row in report.cities:
        if row.f1 is None and row.precision is None and row.recall is None:
            click.echo(f"{row.city:<14}  no labels under --root: predictions only")
            continue
        click.echo(f"{row.city:<14}{fmt(row.precision):>10}{fmt(row.recall):>10}{fmt(row.f1):>10}")
    p = report.pooled
    click.echo(f"{'pooled':<14}{fmt(p.precision):>10}{fmt(p.recall):>10}{fmt(p.f1):>10}")


__all__ = ["main"]
