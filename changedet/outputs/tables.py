"""The tables of a run as CSV text: counts per period and one row per structure. No files here.

One responsibility: what `counts.csv` and `structures.csv` hold, in order. `counts.csv` gives,
per period, the best-estimate new structures (`new`, the increments of `cumulative`, so the
column adds up to the last cumulative count), the structures first seen in the period
(`first_seen`), the cumulative count with its range, the same for new buildings alone
(`new_buildings` adds up to `buildings`; the high end also holds structures whose kind the pixels
could not tell), and how much of the AOI the period saw clearly. `structures.csv` has every
documented structure property, latitude/longitude first, so it opens in a spreadsheet or any GIS
as points. A run on generated data adds a last column to both, `data`, "synthetic" in every row:
the tables travel without the report.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from changedet.models import RunResult
from changedet.outputs.headline import increments, new_per_period
from changedet.outputs.vectors import STRUCTURE_PROPERTIES, structure_properties

__all__ = [
    "COUNTS_COLUMNS",
    "DATA_COLUMN",
    "STRUCTURES_CSV_COLUMNS",
    "counts_csv",
    "structures_csv",
]

COUNTS_COLUMNS = (
    "period",
    "start",
    "end",
    "new",
    "first_seen",
    "cumulative",
    "cumulative_low",
    "cumulative_high",
    "new_buildings",
    "buildings",
    "buildings_low",
    "buildings_high",
    "clear_km2",
    "clear_fraction",
    "baseline",
)
DATA_COLUMN = "data"  # only in a run on generated data: "synthetic" in every row
STRUCTURES_CSV_COLUMNS = (
    "lat",
    "lon",
    *(p for p in STRUCTURE_PROPERTIES if p not in ("lat", "lon")),
)


def _text(rows: list[list[Any]], synthetic: bool = False) -> str:
    """CSV text of `rows` (the header first); with `synthetic`, the `data` column last."""
    if synthetic:
        rows = [[*rows[0], DATA_COLUMN], *([*row, "synthetic"] for row in rows[1:])]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(rows)
    return buf.getvalue()


def counts_csv(result: RunResult) -> str:
    """counts.csv: one row per period. clear_km2/clear_fraction measure the AOI polygon's area
    (when the run measured its coverage), not only the part of it on the grid."""
    clear = {p.label: p for p in result.coverage.periods} if result.coverage else {}
    rows: list[list[Any]] = [list(COUNTS_COLUMNS)]
    new_all = new_per_period(result.counts)
    new_buildings = increments([c.buildings for c in result.counts])
    # What was built by the baseline's end is part of it (its composite spans every month from
    # its first clear one to its last, cloudy ones between; earlier ones count as there already):
    # no count can say "new" there.
    labels = (result.provenance.get("comparison") or {}).get("baseline") or ()
    ends = [c.period.end for c in result.counts if c.period.label in labels]
    baseline_end = max(ends, default=None)
    for c, new, new_b in zip(result.counts, new_all, new_buildings, strict=True):
        seen = clear.get(c.period.label)
        rows.append(
            [
                c.period.label,
                c.period.start.isoformat(),
                c.period.end.isoformat(),
                new,
                c.new_confirmed,
                c.cumulative,
                c.cumulative_low,
                c.cumulative_high,
                new_b,
                c.buildings,
                c.buildings_low,
                c.buildings_high,
                "" if seen is None else f"{seen.clear_km2:.4f}",
                f"{(c.clear_fraction if seen is None else seen.share):.4f}",
                _cell(baseline_end is not None and c.period.end <= baseline_end),
            ]
        )
    return _text(rows, result.synthetic)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return value


def structures_csv(result: RunResult) -> str:
    """structures.csv: one row per structure, every documented property; source_scenes as a
    JSON array; empty cells for nulls; booleans as true/false."""
    rows: list[list[Any]] = [list(STRUCTURES_CSV_COLUMNS)]
    for s in result.structures:
        props = structure_properties(s, result.grid.crs)
        rows.append([_cell(props[col]) for col in STRUCTURES_CSV_COLUMNS])
    return _text(rows, result.synthetic)
