"""Are razed structures reported vanished, and standing ones not? Every labelled city, on
semi-real series in which some labelled changes are undone later.

    python bench/vanish.py [--root ../shared/data/oscd] [--cities a,b] [--seed 0] [--months 18]
                           [--razed-share 0.4] [--rubble]

Each city's semi-real series (`changedet synth oscd-series --razed-share` builds the same) is
run with the default configuration. Of the truth regions matched to a confirmed structure
(`changedet.lab.score.match_structures`), printed per city and pooled: razed ones reported
`vanished` (and how far `vanished_after` lies from the day of razing), standing ones reported
`vanished` (false alarms). Razed ground shows the first real date again (the clearing-back case),
or with --rubble our model of a struck building (`lab.series._rubble`: each pixel 20-50 % of the
structure's real spectrum, the rest the old ground's, darkened). About 5 minutes for the nine
cities on 2 cores.
"""

from __future__ import annotations

import statistics
import time

from oscd_args import series_parser  # bench/oscd_args.py, beside this script

from changedet.lab.oscd import labelled_cities, load_city
from changedet.lab.score import match_structures
from changedet.lab.series import detect_series, make_oscd_series, truth_labels


def main(argv: list[str] | None = None) -> int:
    parser = series_parser(__doc__, months=18)
    parser.add_argument("--razed-share", type=float, default=0.4)
    parser.add_argument("--rubble", action="store_true", help="razed sites stay as rubble")
    args = parser.parse_args(argv)
    cities = args.cities.split(",") if args.cities else labelled_cities(args.root)
    razed_total = vanished_total = kept_total = false_total = 0
    lags: list[int] = []
    t0 = time.perf_counter()
    for city in cities:
        series = make_oscd_series(
            load_city(args.root, city, with_label=True),
            seed=args.seed,
            months=args.months,
            razed_share=args.razed_share,
            razed_as="rubble" if args.rubble else "cleared",
        )
        ledger = detect_series(series).ledger
        found = match_structures(
            ledger.structures,
            ledger.footprints,
            series.truth,
            truth_labels(series.truth, series.grid),
        )
        pairs = [(ledger.structures[s], series.truth[t]) for s, t in found.pairs]
        razed = [(s, t) for s, t in pairs if t.razed is not None]
        kept = [s for s, t in pairs if t.razed is None]
        vanished = [(s, t) for s, t in razed if s.status == "vanished"]
        false = sum(s.status == "vanished" for s in kept)
        city_lags = [
            (s.vanished_after - t.razed).days
            for s, t in vanished
            if s.vanished_after is not None and t.razed is not None
        ]
        lags += city_lags
        razed_total += len(razed)
        vanished_total += len(vanished)
        kept_total += len(kept)
        false_total += false
        print(
            f"{city:12} razed {len(vanished)}/{len(razed)} vanished; standing {false}/{len(kept)} "
            f"vanished; vanished_after - razed: {sorted(city_lags)} days",
            flush=True,
        )
    spread = (
        f"median {statistics.median(lags):+.0f} days, range {min(lags)}..{max(lags)}"
        if lags
        else ""
    )
    print(
        f"pooled       razed {vanished_total}/{razed_total} vanished; standing "
        f"{false_total}/{kept_total} vanished; {spread}   ({time.perf_counter() - t0:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
