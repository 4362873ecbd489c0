"""False structures where nothing changed, on the real spectra of every OSCD city: the labelled
ones and those whose labels are held back for independent evaluation.

    python bench/null_series.py [--root ../shared/data/oscd] [--cities a,b] [--seed 0]
                                [--months 12] [--config FILE]

Each city's semi-real series is built as `changedet eval series` builds it, with no change
revealed: every date shows the first real image, with the same misregistration, haze, seasonal
vegetation and shadows, clouds SCL misses and baseline switch. No label is read, so the cities
without labels take part. Every confirmed structure is a false one; printed per city and pooled
per km² (the bar: at most 0.5), with the unconfirmed candidates and the kinds. About 7 minutes
for the 24 cities on 2 cores.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import numpy as np
from oscd_args import series_parser  # bench/oscd_args.py, beside this script

from changedet.config import load_config
from changedet.lab.oscd import list_cities, load_city
from changedet.lab.series import detect_series, make_oscd_series


def main(argv: list[str] | None = None) -> int:
    parser = series_parser(__doc__, cities="every city")
    parser.add_argument("--config", default=None, help="detector config (default: the shipped one)")
    args = parser.parse_args(argv)
    config = load_config(args.config) if args.config else None
    cities = args.cities.split(",") if args.cities else list_cities(args.root)
    total, total_km2 = 0, 0.0
    print(f"{'city':12s} {'km²':>6s} {'false':>5s} {'/km²':>5s} {'cand.':>5s}  kinds")
    for name in cities:
        started = time.perf_counter()
        city = load_city(args.root, name, with_label=False)
        city = replace(city, label=np.zeros(city.grid.shape, dtype=bool))  # nothing revealed
        series = make_oscd_series(city, seed=args.seed, months=args.months)
        structures = detect_series(series, config).structures
        confirmed = [s for s in structures if s.confirmed]
        km2 = series.grid.height * series.grid.width * series.grid.pixel_area_m2 / 1e6
        total, total_km2 = total + len(confirmed), total_km2 + km2
        kinds = dict(Counter(s.kind for s in confirmed).most_common())
        print(
            f"{name:12s} {km2:6.1f} {len(confirmed):5d} {len(confirmed) / km2:5.2f} "
            f"{len(structures) - len(confirmed):5d}  {kinds}  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    print(f"{'pooled':12s} {total_km2:6.1f} {total:5d} {total / max(total_km2, 1e-9):5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
