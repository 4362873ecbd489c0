"""What each of the semi-real generator's nuisances costs, per labelled city.

    python bench/nuisance.py [--root ../shared/data/oscd] [--cities a,b] [--seed 0]
                             [--months 12] [--variants shift,cloud,all]

The yardstick (`changedet eval series`) builds each city's series with every nuisance on. Here
the same series (same dates, regions and every other random draw) is built again with one
nuisance switched off at a time (`changedet.lab.series.NUISANCES`: misregistration; per-band
gain and haze; clouds with their shadows, thin sheets and the edges SCL misses, so every date is
clear; seasonal vegetation and shadow length), then with all of them off, and scored the same
way. Sensor noise, the processing-baseline switch and SCL calling bright roofs cloud stay on in
every variant. Printed: object F1 per city, then pooled F1, precision, recall and count error.

A column far above the yardstick's names the nuisance a city's misses come from; one close to
it says that nuisance is handled. When even the "none" column (all off) stays low, its changes are
hard to see in its own two real dates: no better handling of the nuisances would find them.
About 2 minutes per variant for the nine cities on 2 cores (6 variants: about 13 minutes).
"""

from __future__ import annotations

import time

from oscd_args import series_parser  # bench/oscd_args.py, beside this script

from changedet.config import Config
from changedet.lab.oscd import labelled_cities
from changedet.lab.series import NUISANCES
from changedet.lab.yardstick import SeriesReport, evaluate_series


def _variants(chosen: str) -> dict[str, tuple[str, ...]]:
    """Column name → nuisances switched off; "yardstick" (none off) always comes first."""
    names = chosen.split(",") if chosen else [*NUISANCES, "all"]
    unknown = [n for n in names if n not in (*NUISANCES, "all")]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(NUISANCES)}, all")
    out: dict[str, tuple[str, ...]] = {"yardstick": ()}
    for name in names:
        out[f"no {name}" if name != "all" else "none"] = NUISANCES if name == "all" else (name,)
    return out


def _pooled(report: SeriesReport) -> tuple[float, float, float, float]:
    """(F1, precision, recall, count error) over the cities, counts summed."""
    total = report.pooled
    error = (total.n_confirmed - total.n_truth) / max(total.n_truth, 1)
    return total.score.f1, total.score.precision, total.score.recall, error


def main(argv: list[str] | None = None) -> int:
    parser = series_parser(__doc__)
    parser.add_argument(
        "--variants",
        default="",
        help=f"comma-separated from {', '.join(NUISANCES)}, all (default: each, then all)",
    )
    args = parser.parse_args(argv)
    variants = _variants(args.variants)
    cities = args.cities.split(",") if args.cities else labelled_cities(args.root)
    reports: dict[str, SeriesReport] = {}
    for name, calm in variants.items():
        started = time.perf_counter()
        reports[name] = evaluate_series(
            args.root, Config(), cities=cities, seed=args.seed, months=args.months, calm=calm
        )
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    width = max(len(n) for n in variants) + 1
    print(f"\nobject F1, seed {args.seed}, {args.months} months (columns: nuisances switched off)")
    print(f"{'city':12s}" + "".join(f"{n:>{width}s}" for n in variants))
    for i, city in enumerate(cities):
        row = [reports[n].cities[i].score.f1 for n in variants]
        print(f"{city:12s}" + "".join(f"{f:{width}.2f}" for f in row))
    for label, index in (("pooled F1", 0), ("precision", 1), ("recall", 2)):
        row = [_pooled(reports[n])[index] for n in variants]
        print(f"{label:12s}" + "".join(f"{f:{width}.2f}" for f in row))
    counts = [_pooled(reports[n])[3] for n in variants]
    print(f"{'count error':12s}" + "".join(f"{100 * c:{width - 1}.0f}%" for c in counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
