"""The arguments every bench on the semi-real OSCD series takes (ids, null_series, nuisance,
vanish): where the OSCD data is, which cities, the seed and the series' length."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def series_parser(
    doc: str, *, months: int = 12, cities: str = "the labelled ones"
) -> argparse.ArgumentParser:
    """A parser with --root, --cities, --seed and --months, described by `doc`'s first line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "oscd")
    parser.add_argument("--cities", default="", help=f"comma-separated; default: {cities}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--months", type=int, default=months)
    return parser
