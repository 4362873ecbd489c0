"""The test bench's commands, `changedet synth ...` and `changedet eval ...`.

`changedet.cli` lists these two groups by name and imports this module only when one of them is
invoked, so the product never imports the lab. Errors and progress go through `changedet.cli`'s
helpers, so these commands print and exit like the others.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from changedet.cli import LAB_COMMANDS, OnceGroup, _errors, _Renderer
from changedet.errors import DataError, UsageError

if TYPE_CHECKING:
    from changedet.config import Config
    from changedet.lab.kindtruth import KindConfusion
    from changedet.models import Progress

__all__ = ["eval_group", "synth"]

_QUIET = click.option("--quiet", is_flag=True, help="No progress output.")


@click.group("synth", cls=OnceGroup, help=LAB_COMMANDS["synth"])
def synth() -> None:
    pass


@synth.command("sample")
@click.option(
    "--aoi",
    "aoi_file",
    type=click.Path(dir_okay=False),
    help="One AOI file (default with --all: every *.geojson in --aoi-dir).",
)
@click.option(
    "--all",
    "all_aois",
    is_flag=True,
    help="Regenerate the sample of every AOI in --aoi-dir (the bundled sample_tiles/).",
)
@click.option(
    "--aoi-dir",
    default="aoi",
    show_default=True,
    type=click.Path(file_okay=False),
    help="With --all: the folder whose *.geojson AOI files are rendered.",
)
@click.option(
    "--out",
    "out_dir",
    default="sample_tiles",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output root; each AOI writes OUT/<aoi_id>/.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--debug", is_flag=True)
@_QUIET
def synth_sample(
    aoi_file: str | None,
    all_aois: bool,
    aoi_dir: str,
    out_dir: str,
    seed: int,
    debug: bool,
    quiet: bool,
) -> None:
    """Write the seeded synthetic Sentinel-2 sample tiles (COGs + static STAC + truth)."""
    from changedet.lab import sample

    with _errors(debug), _Renderer(quiet=quiet) as progress:
        if all_aois and aoi_file:  # --all read --aoi-dir and dropped --aoi, unsaid
            raise UsageError(
                "--all and --aoi exclude each other: --all renders every AOI of --aoi-dir"
            )
        if all_aois:
            summaries = sample.regenerate_all(
                Path(aoi_dir), Path(out_dir), seed=seed, progress=progress
            )
        elif aoi_file:
            from changedet.aoi import load_aois

            summaries = [
                sample.write_sample(aoi, Path(out_dir) / aoi.id, seed=seed, progress=progress)
                for aoi in load_aois(aoi_file)
            ]
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
@click.option(
    "--razed-share",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Share of the changes razed again later (their ground shows the first date again; "
    "truth.geojson gives the day): for testing 'vanished'.",
)
@click.option("--debug", is_flag=True)
@_QUIET
def synth_oscd_series(
    root: str,
    city: str,
    out_dir: str,
    seed: int,
    start: str,
    months: int,
    razed_share: float,
    debug: bool,
    quiet: bool,
) -> None:
    """Build a monthly semi-real series from a real OSCD pair and its labels."""
    from changedet.config import parse_date
    from changedet.lab.series import write_oscd_series

    with _errors(debug):
        _oscd_cities(root, city, labelled=True)
    with _errors(debug), _Renderer(quiet=quiet) as progress:
        summary = write_oscd_series(
            Path(root),
            city,
            Path(out_dir),
            seed=seed,
            start=parse_date(start, "--start"),
            months=months,
            razed_share=razed_share,
            progress=progress,
        )
    click.echo(str(summary))


def _oscd_cities(root: str, cities: str | None, *, labelled: bool) -> list[str] | None:
    """The comma-separated `cities` (None: all), each checked to be under `root` and, when the
    command needs change regions, labelled: usage errors (exit 2) before any work."""
    from changedet.lab.oscd import labelled_cities, list_cities

    if not Path(root).is_dir():
        raise UsageError(
            f"OSCD root '{root}' is not a folder; pass the folder holding the OSCD dataset"
        )
    names = [c.strip() for c in cities.split(",") if c.strip()] if cities else None
    try:
        known = labelled_cities(Path(root)) if labelled else list_cities(Path(root))
    except DataError as exc:  # not an OSCD download: the argument is wrong, not the data
        raise UsageError(str(exc)) from None
    unknown = [c for c in names or () if c not in known]
    if unknown:
        what = "labelled OSCD cities" if labelled else "OSCD cities"
        raise UsageError(
            f"{', '.join(unknown)}: not among the {what} under '{root}'; pick from "
            f"{', '.join(known) or 'none'}"
        )
    return names


@click.group("eval", cls=OnceGroup, help=LAB_COMMANDS["eval"])
def eval_group() -> None:
    pass


@eval_group.command("oscd")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="OSCD root folder.")
@click.option("--cities", help="Comma-separated city names (default: every city under --root).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
@click.option("--debug", is_flag=True)
@_QUIET
def eval_oscd(
    root: str,
    cities: str | None,
    out_dir: str,
    config_path: str | None,
    debug: bool,
    quiet: bool,
) -> None:
    """Run the default detector on OSCD; print per-city and pooled precision/recall/F1."""
    from changedet.config import load_config
    from changedet.lab.oscd import evaluate

    with _errors(debug):
        names = _oscd_cities(root, cities, labelled=False)
        config = load_config(config_path)
        with _Renderer(quiet=quiet) as progress:
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


@eval_group.command("series")
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False),
    help="OSCD root folder (holds the 'Onera Satellite Change Detection dataset - ...' folders).",
)
@click.option("--cities", help="Comma-separated city names (default: every labelled city).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the series.")
@click.option("--months", default=12, show_default=True, type=click.IntRange(6, 60))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Detector config (default: the shipped default).",
)
@click.option(
    "--samples",
    "samples_dir",
    type=click.Path(file_okay=False),
    help="Also score `kind` against the synthetic sample's kinded truth: the folder holding "
    "<aoi>/truth.geojson (the bundled sample_tiles/); AOIs are read from --aoi-dir.",
)
@click.option(
    "--aoi-dir",
    default="aoi",
    show_default=True,
    type=click.Path(file_okay=False),
    help="With --samples: the folder holding <aoi>.geojson for each sample.",
)
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), help="Also write the figures here."
)
@click.option("--debug", is_flag=True)
@_QUIET
def eval_series(
    root: str,
    cities: str | None,
    seed: int,
    months: int,
    config_path: str | None,
    samples_dir: str | None,
    aoi_dir: str,
    json_out: str | None,
    debug: bool,
    quiet: bool,
) -> None:
    """Count and date on semi-real OSCD series: object F1, count error, first-seen, false objects.

    Builds a hard monthly series from every labelled OSCD city (real spectra; misregistration,
    haze, seasons, clouds SCL misses), runs the detector and prints per-city and pooled scores,
    then the kinds of what it found.
    """
    from changedet.config import load_config
    from changedet.lab.yardstick import evaluate_series, report_json

    with _errors(debug):
        names = _oscd_cities(root, cities, labelled=True)
        config = load_config(config_path)
        with _Renderer(quiet=quiet) as progress:
            report = evaluate_series(
                Path(root), config, cities=names, seed=seed, months=months, progress=progress
            )
            samples = (
                _sample_kinds(Path(samples_dir), Path(aoi_dir), config, progress)
                if samples_dir
                else []
            )
    data = report_json(report)
    if samples:
        data["sample_kinds"] = [_confusion_json(c) for c in samples]
    if json_out:
        Path(json_out).write_text(json.dumps(data, indent=2), encoding="utf-8")
    _print_series(data, samples)


def _sample_kinds(
    samples_dir: Path, aoi_dir: Path, config: Config, progress: Progress
) -> list[KindConfusion]:
    """`kindtruth.run_sample` for every sample folder with a truth file and an AOI file."""
    from changedet.aoi import load_aois
    from changedet.lab.kindtruth import run_sample

    folders = sorted(p.parent for p in samples_dir.glob("*/truth.geojson"))
    if not folders:
        raise UsageError(f"no <aoi>/truth.geojson under --samples '{samples_dir}'")
    out = []
    for done, folder in enumerate(folders):
        progress("samples", done, len(folders))
        aoi_file = aoi_dir / f"{folder.name}.geojson"
        if not aoi_file.is_file():
            raise UsageError(f"no AOI file '{aoi_file}' for sample '{folder}'; pass --aoi-dir")
        for aoi in load_aois(aoi_file, config.aoi):
            out.append(run_sample(aoi, config, folder))
    progress("samples", len(folders), len(folders))
    return out


def _confusion_json(c: KindConfusion) -> dict[str, Any]:
    return {"aoi": c.name, "truth": c.rows, "unmatched": c.unmatched, "agreement": c.agreement()}


_SERIES_COLUMNS = (
    ("truth", "truth", "{}"),
    ("found", "confirmed", "{}"),
    ("tp", "tp", "{}"),
    ("fp", "fp", "{}"),
    ("fn", "fn", "{}"),
    ("pieces", "pieces", "{}"),
    ("P", "precision", "{:.2f}"),
    ("R", "recall", "{:.2f}"),
    ("F1", "f1", "{:.2f}"),
    ("count err", "count_error", "{:+.0%}"),
    ("first-seen", "first_seen", "{:.2f}"),
    ("interval days", "first_seen_days", "{:.0f}"),  # the whole width, not a half
    ("false /km²", "false_per_km2", "{:.2f}"),
    ("s", "seconds", "{:.0f}"),
)


def _kind_cell(counts: dict[str, int], kind: str) -> str:
    total = sum(counts.values())
    n = counts.get(kind, 0)
    return f"{n} ({n / total:.0%})" if total else "0"


def _found_table(rows: list[dict[str, Any]], key: str, title: str) -> Any:
    """found/total (recall) per bin of `key` ("found_by_contrast" or "found_by_size")."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("city")
    for cell in rows[0][key]:
        table.add_column(cell["bin"], justify="right")
    for row in rows:
        table.add_row(
            row["city"],
            *(
                f"{c['found']}/{c['truth']} ({c['recall']:.0%})" if c["truth"] else "–"
                for c in row[key]
            ),
        )
    return table


def _print_series(data: dict[str, Any], samples: list[KindConfusion]) -> None:
    from rich.console import Console
    from rich.table import Table

    from changedet.lab.kindtruth import MISSED
    from changedet.lab.yardstick import KINDS

    console = Console(width=None if sys.stdout.isatty() else 220)
    rows = [*data["cities"], data["pooled"]]
    table = Table(
        title=f"Semi-real OSCD series ({data['months']} months, seed {data['seed']}): "
        f"confirmed structures, IoU > {data['min_iou']}"
    )
    table.add_column("city")
    for head, _key, _fmt in _SERIES_COLUMNS:
        table.add_column(head, justify="right")
    for row in rows:
        table.add_row(row["city"], *(fmt.format(row[key]) for _h, key, fmt in _SERIES_COLUMNS))
    console.print(table)
    console.print(
        "false /km²: confirmed structures with no pixel within "
        f"{data['buffer_px']} px of a labelled change, per km² of ground that far from one; "
        "pieces: false positives on a change another structure matched (one change counted twice)"
    )
    kinds = Table(title="Kind of the structures found (OSCD labels say only 'change')")
    kinds.add_column("city")
    for kind in KINDS:
        kinds.add_column(f"matched: {kind}", justify="right")
    for kind in KINDS:
        kinds.add_column(f"unmatched: {kind}", justify="right")
    for row in rows:
        m, u = row["matched_kinds"], row["unmatched_kinds"]
        kinds.add_row(
            row["city"], *(_kind_cell(m, k) for k in KINDS), *(_kind_cell(u, k) for k in KINDS)
        )
    console.print(kinds)
    for key, what in (("found_by_contrast", "contrast (mean |Δ reflectance|)"),
                      ("found_by_size", "size")):  # fmt: skip
        console.print(_found_table(rows, key, f"True changes found, by {what}"))
    if not samples:
        return
    confusion = Table(title="Kind against the synthetic sample's truth (confirmed structures)")
    for head in ("sample", "true kind", *KINDS, MISSED):
        confusion.add_column(head, justify="left" if head in ("sample", "true kind") else "right")
    total = samples[0]
    for c in samples[1:]:
        total = total + c
    for c in [*samples, total] if len(samples) > 1 else samples:
        for true_kind, got in c.rows.items():
            confusion.add_row(c.name, true_kind, *(str(got.get(k, 0)) for k in (*KINDS, MISSED)))
        confusion.add_row(
            c.name, "no truth", *(str(c.unmatched.get(k, 0)) for k in KINDS), "", end_section=True
        )
    console.print(confusion)
    console.print(f"kind agrees with the truth for {total.agreement():.0%} of matched structures")
