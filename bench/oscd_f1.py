"""Quick OSCD accuracy check: run the default detector on the labelled cities and print P/R/F1.

    python bench/oscd_f1.py [--root ../shared/data/oscd] [--out /tmp/oscd-out] [--cities a,b]
                            [--set change.z_threshold=8] [--cva]

Same code path as `changedet eval oscd` (changedet.lab.oscd.evaluate); prints per-city and pooled
precision, recall and F1 and the wall time. --cva scores the classical reference instead, change
vector analysis of the per-band z-scored dates with an Otsu threshold (`bench/detect.py`), the
same way.
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
    parser.add_argument("--cva", action="store_true", help="score CVA + Otsu instead")
    args = parser.parse_args(argv)
    if args.cva:
        return _cva(args.root)
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


def _cva(root: Path) -> int:
    """Pixel P/R/F1 of CVA + Otsu on the labelled cities, pooled as `evaluate` pools them."""
    import numpy as np

    sys.path.insert(0, str(REPO / "bench"))
    from detect import _cva_otsu

    from changedet.core.change import DETECT_BANDS
    from changedet.lab.oscd import labelled_cities, load_city
    from changedet.lab.score import pool_city_scores, score_prediction

    scores = []
    for name in labelled_cities(root):
        city = load_city(root, name, with_label=True, bands=list(DETECT_BANDS))
        assert city.label is not None
        before, after = np.nan_to_num(city.before), np.nan_to_num(city.after)
        scores.append(score_prediction(name, _cva_otsu(before, after), city.label))
    for s in (*scores, pool_city_scores(scores)):
        print(f"{s.city:12s} P {s.precision:.3f} R {s.recall:.3f} F1 {s.f1:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
