"""Scale-out benchmark: four AOIs x 24 monthly periods on one, then two, Dask workers.

The real thing on loopback: `dask scheduler` and `dask worker --no-nanny --nthreads 1` as
separate processes (one AOI at a time per worker; inside an AOI the reader's threads and the
detector's strips use the cores), and `changedet run aoi-1..4 --cluster tcp://127.0.0.1:PORT` in
a child. Data: bench/e2e.py's synthetic series (two years, --dates dates, a tile holding 2 x 2
AOIs of --size px). Prints wall time per worker count, the speed-up, and each worker's peak RSS
(wait4 after it is stopped). The machine is shared: run both counts in one go.

With --pin each worker process is held to a core of its own (worker i on core i,
`sched_setaffinity`): one worker is then a one-core machine and two are two, the scale-out a
cluster of separate machines gives; unpinned, two workers on this one machine share the cores
one AOI already keeps busy.

With --monitor the child is `changedet monitor run --cluster ...` over a watch-list of the four
AOIs (a first run, from an empty state), and a run here without a cluster is timed too.

    python bench/scale.py [--dates 48] [--size 400] [--pin] [--monitor]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import make_data

DASK = [sys.executable, "-m"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def _stop(proc: subprocess.Popen[bytes]) -> float:
    """Stop a process; its peak RSS in GB."""
    proc.send_signal(signal.SIGINT)
    try:
        _, _, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        return float("nan")
    proc.returncode = 0
    return usage.ru_maxrss / 1024**2


def _workers_ready(address: str, n: int) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(n, timeout=120)


def _run_command(folder: Path, catalog: Path, out: str, end: str) -> list[str]:
    config = folder / "bench.toml"
    config.write_text('[read]\ncache_dir = ""\n')
    aois = [str(folder / f"aoi-{i}.geojson") for i in range(1, 5)]
    return [
        *("run", *aois, "--catalog", str(catalog), "--config", str(config)),
        *("--start", "2023-06-01", "--end", end, "--out", out),
    ]


def _monitor_command(folder: Path, catalog: Path, out: str, end: str) -> list[str]:
    config = folder / "bench.toml"
    config.write_text('[read]\ncache_dir = ""\n')
    lines = [f'state = "{out}/state.sqlite"', f'out = "{out}"']
    for i in range(1, 5):
        lines += [
            "[[watch]]",
            f'aoi = "{folder / f"aoi-{i}.geojson"}"',
            f'config = "{config}"',
            'start = "2023-06-01"',
            f'end = "{end}"',
            f'catalog = "{catalog}"',
        ]
    watch = Path(out) / "watch.toml"
    watch.write_text("\n".join(lines) + "\n")
    return ["monitor", "run", "--config", str(watch), "--now", f"{end}T23:59:59+00:00"]


def _child(command: list[str], address: str | None) -> float:
    t0 = time.perf_counter()
    cluster = ["--cluster", address] if address else []
    proc = subprocess.run(
        [sys.executable, "-m", "changedet", *command, "--quiet", *cluster],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"changedet {command[0]} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def _done(out: str) -> list[str]:
    return sorted(p.name for p in Path(out).iterdir() if (p / "run.json").is_file())


def run_here(catalog: Path, end: str, build: Any) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="changedet-scale-") as out:
        wall = _child(build(catalog.parent, catalog, out, end), None)
        return {"workers": "here", "wall_s": round(wall, 1), "aois": _done(out)}


def _on_core(core: int | None) -> Any:
    """A preexec_fn holding the child to one core (None: any core)."""
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def run_once(
    catalog: Path, n_workers: int, end: str, build: Any, *, pin: bool = False
) -> dict[str, object]:
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = subprocess.DEVNULL
    scheduler = subprocess.Popen(
        [
            *DASK,
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
        ],
        stdout=log,
        stderr=log,
    )
    workers = []
    try:
        _wait_for(port)
        cores = sorted(os.sched_getaffinity(0))
        if pin and n_workers > len(cores):
            raise SystemExit(f"--pin needs a core per worker; this machine has {len(cores)}")
        for i in range(n_workers):
            workers.append(
                subprocess.Popen(
                    [
                        *DASK,
                        "distributed.cli.dask_worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--memory-limit",
                        "0",
                        "--no-dashboard",
                    ],
                    stdout=log,
                    stderr=log,
                    preexec_fn=_on_core(cores[i] if pin else None),
                )
            )
        _workers_ready(address, n_workers)
        with tempfile.TemporaryDirectory(prefix="changedet-scale-") as out:
            wall = _child(build(catalog.parent, catalog, out, end), address)
            done = _done(out)
    finally:
        peaks = [_stop(w) for w in workers]
        _stop(scheduler)
    return {
        "workers": n_workers,
        "pinned": pin,
        "wall_s": round(wall, 1),
        "aois": done,
        "peak_gb_per_worker": [round(p, 2) for p in peaks],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dates", type=int, default=48, help="dates over two years (24 months)")
    parser.add_argument("--size", type=int, default=400, help="side of each AOI in px")
    parser.add_argument("--data", type=Path, default=Path("/tmp/changedet-bench-e2e"))
    parser.add_argument("--monitor", action="store_true", help="time `changedet monitor run`")
    parser.add_argument("--pin", action="store_true", help="each worker on a core of its own")
    args = parser.parse_args()
    t = time.perf_counter()
    catalog = make_data(args.data, n_dates=args.dates, size=args.size, days=730, quadrants=4)
    print(f"data ready in {time.perf_counter() - t:.1f} s: {catalog}", flush=True)
    build = _monitor_command if args.monitor else _run_command
    if args.monitor:
        print(json.dumps(run_here(catalog, "2025-05-31", build)), flush=True)
    results = [run_once(catalog, n, "2025-05-31", build, pin=args.pin) for n in (1, 2)]
    for r in results:
        print(json.dumps(r))
    one, two = results[0]["wall_s"], results[1]["wall_s"]
    assert isinstance(one, float) and isinstance(two, float)
    print(f"speed-up on two workers: {one / two:.2f}x ({one} s -> {two} s)")


if __name__ == "__main__":
    main()
