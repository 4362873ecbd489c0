"""Quick OSCD accuracy check: run the default detector on the labelled cities and print P/R/F1.

    python bench/oscd_f1.py [--root ../shared/data/oscd] [--out /tmp/oscd-out] [--cities a,b]
                            [--set change.z_threshold=8]

Same code path as `changedet eval oscd` (changedet.lab.oscd.evaluate); prints per-city and pooled
precision, recall and F1 and the wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from changedet.config import ChangeConfig, load_config
from changedet.lab.oscd import evaluate, list_cities, load_label

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "oscd")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cities", default="", help="comma-separated; default: the labelled ones")
    parser.add_argument("--all", action="store_true", help="all cities (labelled or not)")
    parser.add_argument("--set", action="append", default=[], help="change.<key>=<value> override")
    args = parser.parse_args(argv)
    config: ChangeConfig = load_config().change
    for item in args.set:
        key, _, value = item.partition("=")
        field = key.removeprefix("change.")
        current = getattr(config, field)
        config = dataclasses.replace(config, **{field: type(current)(value)})
    if args.cities:
        cities = args.cities.split(",")
    elif args.all:
        cities = list_cities(args.root)
    else:
        cities = [c for c in list_cities(args.root) if load_label(args.root, c) is not None]
    out = args.out or Path(tempfile.mkdtemp(prefix="oscd-"))
    start = time.perf_counter()
    report = evaluate(args.root, out, cities=cities, config=config)
    wall = time.perf_counter() - start
    print(f"{'city':12s} {'P':>6s} {'R':>6s} {'F1':>6s} {'tp':>7s} {'fp':>7s} {'fn':>7s} {'s':>6s}")
    for s in (*report.cities, report.pooled):
        if s.f1 is None:
            print(
                f"{s.city:12s} {'-':>6s} {'-':>6s} {'-':>6s} {'':>7s} {'':>7s} {'':>7s} {s.seconds:6.2f}"
            )
        else:
            assert s.precision is not None and s.recall is not None
            print(
                f"{s.city:12s} {s.precision:6.3f} {s.recall:6.3f} {s.f1:6.3f} "
                f"{s.tp:7d} {s.fp:7d} {s.fn:7d} {s.seconds:6.2f}"
            )
    print(f"wall time {wall:.1f} s for {len(cities)} cities; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
