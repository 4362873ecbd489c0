"""Speed of the detection core on 1000 x 1000 px x 10 bands, and of the whole OSCD evaluation.

    python bench/detect.py [--dates 6] [--size 1000] [--oscd ROOT]

Prints, in one run so the machine state is shared:
- per date: the median composite (changedet.core.composite.median_composite) and, as the named
  reference, the same composite with np.nanmedian;
- per pair: changedet.core.change.detect_change (best of 5 runs, then best/median/worst on a line
  of its own) and, as the named reference, a plain numpy CVA (z-scored bands) + Otsu
  threshold baseline;
- with --oscd: wall time of changedet.lab.oscd.evaluate over every city under ROOT.
Times are single-process wall times (numpy may use both cores for some operations).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from changedet.config import ChangeConfig
from changedet.core.change import DETECT_BANDS, detect_change
from changedet.core.composite import median_composite
from changedet.models import Composite, Grid, Period


def _times(fn: Callable[[], object], repeat: int = 3) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _best(fn: Callable[[], object], repeat: int = 3) -> float:
    return min(_times(fn, repeat))


def _scene(rng: np.random.Generator, size: int, n_bands: int) -> np.ndarray:
    parcels = ndi.zoom(rng.integers(0, 6, size=(size // 20 + 1, size // 20 + 1)), 20, order=0)
    spectra = rng.uniform(0.05, 0.35, size=(6, n_bands)).astype(np.float32)
    image = spectra[parcels[:size, :size]].transpose(2, 0, 1)
    return image + rng.normal(0, 0.01, size=image.shape).astype(np.float32)


def _cva_otsu(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    def z(x: np.ndarray) -> np.ndarray:
        return (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)

    magnitude = np.sqrt(((z(after) - z(before)) ** 2).sum(axis=0))
    return magnitude > threshold_otsu(magnitude)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dates", type=int, default=6)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--oscd", type=Path, default=None, help="OSCD root: also time evaluate()")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n_bands, size, n_dates = len(DETECT_BANDS), args.size, args.dates

    stack = np.stack([_scene(rng, size, n_bands) for _ in range(n_dates)])
    clear = rng.uniform(size=(n_dates, size, size)) > 0.3
    t_comp = _best(lambda: median_composite(stack, clear))

    def nanmedian() -> np.ndarray:
        masked = np.where(clear[:, None], stack, np.float32(np.nan))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(masked, axis=0)

    t_nan = _best(nanmedian, repeat=1)
    print(
        f"composite {size}x{size}x{n_bands}, {n_dates} dates: {t_comp / n_dates:.3f} s per date "
        f"(np.nanmedian reference {t_nan / n_dates:.3f} s per date, ratio {t_comp / t_nan:.2f})"
    )

    grid = Grid.from_origin("EPSG:32639", 500_000.0, 3_950_000.0, 10.0, size, size)
    before_img = stack[0]
    after_img = stack[1] * 1.1 + 0.02
    after_img[:, 400:420, 500:530] = 0.6

    def comp(img: np.ndarray, day: date) -> Composite:
        return Composite(
            grid,
            DETECT_BANDS,
            Period(day, day, day.isoformat()),
            img,
            np.ones(grid.shape, np.uint16),
            np.zeros(grid.shape, np.int32),
        )

    before, after = comp(before_img, date(2023, 6, 1)), comp(after_img, date(2024, 6, 1))
    config = ChangeConfig()
    detect_times = _times(lambda: detect_change(before, after, config), repeat=5)
    t_detect = min(detect_times)
    t_base = _best(lambda: _cva_otsu(before_img, after_img))
    print(
        f"detect_change {size}x{size}x{n_bands} per pair: {t_detect:.3f} s "
        f"(numpy CVA+Otsu reference {t_base:.3f} s, ratio {t_detect / t_base:.1f}); "
        f"per date of the pair {t_detect / 2:.3f} s"
    )
    print(
        f"detect_change {len(detect_times)} runs per pair: best {t_detect:.3f} s, "
        f"median {float(np.median(detect_times)):.3f} s, worst {max(detect_times):.3f} s "
        f"(the machine may be shared: best is the least disturbed)"
    )

    if args.oscd is not None:
        from changedet.lab.oscd import evaluate

        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            report = evaluate(args.oscd, Path(out), config=config)
            wall = time.perf_counter() - start
        pooled = report.pooled.f1
        print(
            f"OSCD evaluate, {len(report.cities)} cities: {wall:.1f} s wall "
            f"(pooled F1 {pooled:.3f} on the labelled ones)"
            if pooled is not None
            else f"OSCD evaluate, {len(report.cities)} cities: {wall:.1f} s wall"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
