"""Counting and dating on real spectra: semi-real monthly series from the nine labelled OSCD cities.

For each city: build the series in memory (`lab.series.make_oscd_series`), run the time-series core
on it (`lab.series.detect_series`: composites → baseline → change → objects → ledger), and score
confirmed structures against the change regions: object F1 at IoU > 0.25 (SpaceNet 7 matching) and
first-seen accuracy (share of matched structures whose first-seen interval holds the true date).

    python bench/oscd_series.py [--root DIR] [--cities a,b] [--seed N] [--months N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from changedet.config import Config, load_config
from changedet.lab.oscd import labelled_cities, load_city
from changedet.lab.score import SeriesScore, score_structures
from changedet.lab.series import detect_series, make_oscd_series

DEFAULT_ROOT = (
    Path(
        os.environ.get(
            "CHANGEDET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
        )
    )
    / "oscd"
)


def run_city(
    root: Path, city: str, *, seed: int, months: int, config: Config | None = None
) -> tuple[SeriesScore, float, dict[str, int]]:
    t0 = time.perf_counter()
    series = make_oscd_series(load_city(root, city, with_label=True), seed=seed, months=months)
    analysis = detect_series(series, config)
    score = score_structures(
        analysis.structures, analysis.footprints, series.truth, series.regions, city=city
    )
    ledger = analysis.ledger
    last = ledger.counts[-1]
    extra = {
        "truth": len(series.truth),
        "confirmed": len(ledger.confirmed),
        "candidates": len(ledger.candidates),
        "cum_low": last.cumulative_low,
        "cum_high": last.cumulative_high,
    }
    return score, time.perf_counter() - t0, extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--cities", default=None, help="comma-separated (default: every labelled city)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument(
        "--structures",
        choices=("roof-like", "any"),
        default="roof-like",
        help="[change] structures: what the ledger tracks (default: the shipped default)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=NUMBER",
        help="override a numeric config value, e.g. change.roof_z_threshold=8",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    overrides: dict[str, object] = {"change.structures": args.structures}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = float(value)
    config = load_config(overrides=overrides)
    pooled: SeriesScore | None = None
    rows = []
    head = f"{'city':<12} {'truth':>5} {'conf':>5} {'tp':>4} {'fp':>4} {'fn':>4}"
    print(f"{head} {'P':>5} {'R':>5} {'F1':>5} {'first-seen':>10} {'s':>6}")
    cities = args.cities.split(",") if args.cities else labelled_cities(args.root)
    for city in cities:
        score, secs, extra = run_city(
            args.root, city, seed=args.seed, months=args.months, config=config
        )
        pooled = score if pooled is None else pooled + score
        rows.append(
            {
                "city": city,
                "f1": score.f1,
                "first_seen": score.first_seen_accuracy,
                "precision": score.precision,
                "recall": score.recall,
                "tp": score.tp,
                "fp": score.fp,
                "fn": score.fn,
                "seconds": round(secs, 1),
                **extra,
            }
        )
        print(
            f"{city:<12} {extra['truth']:>5} {extra['confirmed']:>5} {score.tp:>4} {score.fp:>4} "
            f"{score.fn:>4} {score.precision:>5.2f} {score.recall:>5.2f} {score.f1:>5.2f} "
            f"{score.first_seen_accuracy:>10.2f} {secs:>6.1f}",
            flush=True,
        )
    assert pooled is not None
    print(
        f"{'pooled':<12} {'':>5} {'':>5} {pooled.tp:>4} {pooled.fp:>4} {pooled.fn:>4} "
        f"{pooled.precision:>5.2f} {pooled.recall:>5.2f} {pooled.f1:>5.2f} "
        f"{pooled.first_seen_accuracy:>10.2f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cities": rows,
                    "pooled": {
                        "f1": pooled.f1,
                        "first_seen": pooled.first_seen_accuracy,
                        "tp": pooled.tp,
                        "fp": pooled.fp,
                        "fn": pooled.fn,
                    },
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
