"""The test bench's commands, `changedet synth ...` and `changedet eval ...`.

`changedet.cli` lists these two groups by name and imports this module only when one of them is
invoked, so the product never imports the lab. Errors and progress go through `changedet.cli`'s
helpers, so these commands print and exit like the others.
"""

from __future__ import annotations

from pathlib import Path

import click

from changedet.cli import LAB_COMMANDS, _errors, _Renderer
from changedet.errors import UsageError

__all__ = ["eval_group", "synth"]


@click.group("synth", help=LAB_COMMANDS["synth"])
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
def synth_sample(
    aoi_file: str | None, all_aois: bool, aoi_dir: str, out_dir: str, seed: int, debug: bool
) -> None:
    """Write the seeded synthetic Sentinel-2 sample tiles (COGs + static STAC + truth)."""
    from changedet.lab import sample

    with _errors(debug), _Renderer(quiet=False) as progress:
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


@click.group("eval", help=LAB_COMMANDS["eval"])
def eval_group() -> None:
    pass


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
