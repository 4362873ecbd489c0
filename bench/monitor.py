"""Cost of an incremental monitoring run with one new scene against a full rerun of the same AOI.

    python bench/monitor.py [--size 1620] [--dates 100] [--repeat 3] [--keep DIR]
                            [--http [--latency-ms MS] [--mbps R]]
    python bench/monitor.py --sample [--aoi aoi/khojir.geojson]
                            [--config configs/demo-khojir.toml] [--repeat 3]

By default the catalog is the seeded synthetic year of `bench/e2e.py` (Earth Search-like COGs,
the default config) over an S x S px AOI: 1620 x 1620 px and 100 dates, the size of the Khojir
AOI (18 x 14 km; `aoi/khojir.geojson`) over a year of Sentinel-2; `--size 1000` is the
Modarres box's size with its context window. With --sample it is the AOI's bundled SYNTHETIC
sample (offline, 17 dates): a 2.6 km window of it, where the fixed cost of a run (process
start, outputs) dominates. Both runs are `changedet monitor run`
in a fresh process (what cron starts), with the same watch-list and outputs:
- full: an empty state, every scene published: searches, reads and computes the whole series;
- incremental: the state of a run over every scene but the last, then the last one published:
  searches the recent past, fetches the new scene's pixels only, recomputes only the periods the
  new scene touches (earlier periods' change comes from the state's period cache), refreshes the
  ledger, outputs and alerts.
With --http the COGs are served by a range-request HTTP server in its own process
on loopback, as a catalog's assets would be: the full rerun fetches every scene over HTTP into
an empty pixel cache, the incremental run fetches the new scene and reads the others from the
cache (`read.cache_dir`), as a scheduled run against Earth Search does. Loopback has no
latency and no rate limit, so fetching costs next to nothing there; --latency-ms and --mbps
model the link to a remote catalog's storage (a round trip per request, one shared line of that
rate), where the full rerun's fetching of every scene is what an incremental run saves most.
Prints the wall time of each repeat, the medians and their ratio, the stage times
(run.json `timings_s`) of the last repeat of each, and whether the first repeat's full and
incremental runs found the same structures, berms, counts and change (ids aside: `_agreement`).
Each repeat's caches are deleted once it is timed (at 1620 px a run keeps 4.6 GB); the data,
about 3 GB at 1620 px, stays in --data for the next time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _items(sample: Path) -> list[dict[str, Any]]:
    from changedet.lab.sample import rebase_items

    items = rebase_items(json.loads((sample / "items.json").read_text()), str(sample))
    return sorted(items["features"], key=lambda f: (f["properties"]["datetime"], f["id"]))


def _publish(path: Path, items: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))


def _watchlist(root: Path, aoi: Path, config: Path | None, sample: Path) -> Path:
    config_line = f'config = "{config}"' if config else ""
    text = f"""
state = "{root / "state.sqlite"}"
out = "{root / "out"}"
[[watch]]
aoi = "{aoi}"
{config_line}
start = "2023-06-01"
end = "2024-06-30"
catalog = "{root / "items.json"}"
[watch.overrides]
"catalog.allowed_folders" = ["{sample}"]
"read.cache_dir" = "{root / "cache"}"
"""
    path = root / "watch.toml"
    path.write_text(text)
    return path


def _run(watch: Path) -> float:
    # The previous run's writes (a full run keeps gigabytes of cache) are on disk before the
    # clock starts, as a weekly job finds them: their writeback is not timed in the next run.
    os.sync()
    t0 = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "changedet",
            "monitor",
            "run",
            "--config",
            str(watch),
            "--quiet",
            "--now",
            "2024-07-01T00:00:00+00:00",
        ],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"monitor run failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def _timings(root: Path, aoi_id: str) -> dict[str, float]:
    manifest = json.loads((root / "out" / aoi_id / "run.json").read_text())
    return dict(manifest.get("timings_s", {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aoi", type=Path, default=REPO / "aoi" / "khojir.geojson")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo-khojir.toml")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="Work here and keep the files.")
    parser.add_argument("--sample", action="store_true", help="Use the AOI's bundled sample.")
    parser.add_argument("--size", type=int, default=1620, help="The synthetic year's S x S px.")
    parser.add_argument("--dates", type=int, default=100, help="Dates of that year.")
    parser.add_argument("--data", type=Path, default=Path("/tmp/changedet-bench-e2e"))
    parser.add_argument("--http", action="store_true", help="Serve the COGs over loopback HTTP.")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="With --http: a round trip per request."
    )
    parser.add_argument(
        "--mbps", type=float, default=0.0, help="With --http: the link's rate (0: unlimited)."
    )
    args = parser.parse_args()
    if args.http and args.sample:
        parser.error("--http serves the synthetic year, not --sample")
    if (args.latency_ms or args.mbps) and not args.http:
        parser.error("--latency-ms and --mbps need --http")
    if not args.sample:
        sys.path.insert(0, str(REPO / "bench"))
        from e2e import make_data

        catalog = make_data(args.data, n_dates=args.dates, size=args.size)
        sample = catalog.parent
        args.aoi, args.config = sample / "aoi.geojson", None
        items = sorted(
            json.loads(catalog.read_text())["features"],
            key=lambda f: (f["properties"]["datetime"], f["id"]),
        )
        aoi_id = json.loads(args.aoi.read_text())["features"][0]["properties"]["id"]
    else:
        aoi_id = args.aoi.stem
        sample = REPO / "sample_tiles" / aoi_id
        items = _items(sample)
    config = args.config.resolve() if args.config else None
    with contextlib.ExitStack() as stack:
        if args.http:
            from fetch import ProcessRangeServer

            server = stack.enter_context(
                ProcessRangeServer(sample, latency_ms=args.latency_ms, mbps=args.mbps)
            )
            local = json.dumps(items).replace(f'"{sample}/', f'"{server.url}/')
            items = json.loads(local)
            link = f"{args.latency_ms:g} ms round trip, " if args.latency_ms else ""
            link += f"{args.mbps:g} Mbit/s" if args.mbps else "unlimited rate"
            print(f"assets served at {server.url} ({link})")
        _compare(args, items, sample, config, aoi_id)


def _compare(
    args: argparse.Namespace,
    items: list[dict[str, Any]],
    sample: Path,
    config: Path | None,
    aoi_id: str,
) -> None:
    work = args.keep or Path(tempfile.mkdtemp(prefix="changedet-bench-monitor-"))
    full_times, incremental_times = [], []
    try:
        for i in range(args.repeat):
            full = work / f"full-{i}"
            full.mkdir(parents=True)
            _publish(full / "items.json", items)
            full_times.append(_run(_watchlist(full, args.aoi.resolve(), config, sample)))

            inc = work / f"incremental-{i}"
            inc.mkdir(parents=True)
            watch = _watchlist(inc, args.aoi.resolve(), config, sample)
            _publish(inc / "items.json", items[:-1])
            _run(watch)  # the state before the last scene (not timed)
            _publish(inc / "items.json", items)
            incremental_times.append(_run(watch))
            if args.keep is None:
                for root in (full, inc):  # the pixel and period caches: gigabytes at 1620 px
                    shutil.rmtree(root / "cache", ignore_errors=True)
                    shutil.rmtree(root / "state.sqlite.periods", ignore_errors=True)
            print(
                f"repeat {i + 1}: full {full_times[-1]:.2f} s, incremental {incremental_times[-1]:.2f} s"
            )
        f, n = statistics.median(full_times), statistics.median(incremental_times)
        print(f"AOI {aoi_id}: {len(items)} items; new scene {items[-1]['id']}")
        print(
            f"median full rerun   {f:.2f} s   stages {_timings(work / f'full-{args.repeat - 1}', aoi_id)}"
        )
        print(
            f"median incremental  {n:.2f} s   stages "
            f"{_timings(work / f'incremental-{args.repeat - 1}', aoi_id)}"
        )
        print(f"ratio incremental / full = {n / f:.3f} (target <= 0.25)")
        print(_agreement(work / "full-0" / "out" / aoi_id, work / "incremental-0" / "out" / aoi_id))
        if args.sample:
            print(
                "(the bundled sample: a small window where starting the process and writing the "
                "outputs dominate both runs; without --sample: the Khojir AOI's size over a year)"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


# What a full and an incremental run must agree on: the structures (outline, first-seen, status,
# kind, every property), the berms, the counts and the change raster. Ids aside: the monitor keeps
# its ledger's ids, so a structure that grew across an id cell keeps the id it had where a fresh
# run names it by its new cell (`core.carry`). run.json and the pictures carry run times and
# paths, so they are not compared.
def _agreement(full: Path, incremental: Path) -> str:
    differ = [
        name
        for name in ("counts.csv", "change.tif")
        if (full / name).read_bytes() != (incremental / name).read_bytes()
    ]
    renamed: dict[str, str] = {}
    for name, link in (("structures.geojson", None), ("berms.geojson", "structure_id")):
        ours, theirs = (_features(folder / name, link) for folder in (full, incremental))
        if set(ours) != set(theirs):
            differ.append(name)
        renamed.update({ours[k]: theirs[k] for k in ours.keys() & theirs.keys() if link is None})
    moved = sum(1 for a, b in renamed.items() if a != b)
    ids = (
        f"; {moved} of {len(renamed)} structures keep their ledger id, not the place id"
        if moved
        else ""
    )
    if differ:
        return f"full and incremental outputs DIFFER: {', '.join(differ)}{ids}"
    return f"full and incremental runs found the same structures, berms, counts and change{ids}"


def _features(path: Path, link: str | None) -> dict[str, str]:
    """Each feature of a GeoJSON file, as its geometry and properties without ids → its id."""
    out = {}
    for feature in json.loads(path.read_text())["features"]:
        props = {k: v for k, v in feature["properties"].items() if k not in ("id", link)}
        out[json.dumps([feature["geometry"], props], sort_keys=True)] = feature["id"]
    return out


if __name__ == "__main__":
    main()
