"""Do ids survive reruns? A later start, an earlier end and quarterly periods on every labelled city.

    python bench/ids.py [--root ../shared/data/oscd] [--cities a,b] [--seed 0] [--months 12]

Each city's semi-real series (`changedet eval series` builds the same) is run with the default
configuration, then again one month later in start, one month earlier in end, and with quarterly
periods. Printed per city and pooled: of the confirmed structures both runs find (each covering
at least half of the other: `changedet.lab.score.kept_ids`), how many keep their id. The issue's
bar is 90 %. "+ ids-from": the same rerun given the first run's structures, as
`changedet run --ids-from` gives them (`core.carry`). "monitor" is what the monitoring job sees
when a month is added: the full run after the one-month-shorter one, its ids carried over from
that run's ledger. Takes about 12 minutes for the nine cities on 2 cores.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from oscd_args import series_parser  # bench/oscd_args.py, beside this script

from changedet.config import load_config
from changedet.core.carry import Found, Known, carried_ids
from changedet.lab.oscd import labelled_cities, load_city
from changedet.lab.score import kept_ids
from changedet.lab.series import detect_series, make_oscd_series

RERUNS = ("later start", "earlier end", "quarterly")
COLUMNS = (*RERUNS, *(f"{name} + ids-from" for name in RERUNS), "monitor")


def main(argv: list[str] | None = None) -> int:
    parser = series_parser(__doc__)
    args = parser.parse_args(argv)
    cities = args.cities.split(",") if args.cities else labelled_cities(args.root)
    monthly, quarterly = load_config(), load_config(overrides={"time.period": "quarter"})
    pooled = dict.fromkeys(COLUMNS, (0, 0))
    t0 = time.perf_counter()
    for city in cities:
        series = make_oscd_series(
            load_city(args.root, city, with_label=True), seed=args.seed, months=args.months
        )
        full = detect_series(series, monthly)
        reruns = {
            "later start": detect_series(series, monthly, skip_months=1),
            "earlier end": detect_series(series, monthly, n_months=series.months - 1),
            "quarterly": detect_series(series, quarterly),
        }
        compared = {name: (full, again) for name, again in reruns.items()}
        for name, again in reruns.items():
            compared[f"{name} + ids-from"] = (full, _carried(again, full))
        # The monitor: the shorter run's ledger is known when the month is added.
        compared["monitor"] = (reruns["earlier end"], _carried(full, reruns["earlier end"]))
        cells = []
        for name, (first, second) in compared.items():
            same, pairs = kept_ids(
                first.structures, first.footprints, second.structures, second.footprints
            )
            pooled[name] = (pooled[name][0] + same, pooled[name][1] + pairs)
            cells.append(f"{name} {same}/{pairs}")
        print(f"{city:12s} " + "; ".join(cells), flush=True)
    summary = "; ".join(
        f"{name} {same}/{pairs} = {same / max(pairs, 1):.2f}"
        for name, (same, pairs) in pooled.items()
    )
    print(f"{'pooled':12s} {summary}   ({time.perf_counter() - t0:.0f} s)")
    return 0


def _carried(run: Any, earlier: Any) -> Any:
    """`run` (an Analysis) with the ids `earlier`'s structures give its structures."""
    carried = carried_ids(
        [Found(s.id, s.geometry, s.first_seen_start) for s in run.structures],
        {s.id: Known(s.geometry, s.vanished_after) for s in earlier.structures},
    )
    return replace(run, structures=tuple(replace(s, id=carried[s.id]) for s in run.structures))


if __name__ == "__main__":
    raise SystemExit(main())
