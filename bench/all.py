"""Every vastrpc benchmark in one run, each figure a ratio against a baseline measured in the same run.

Run: ``python bench/all.py`` (about 90 seconds on 2 CPUs). Sections (``--only a,b`` picks some):

- ``core``: warm no-op call p50/p99 (sequential) and throughput (64 in flight) of vastrpc, of two
  bare grpc.aio unary echoes (protobuf messages; raw bytes through a generic handler; ratios are
  against the faster) and of a Ray Serve DeploymentHandle (``bench/ray_serve_noop.py`` in its
  own process; left out with ``--no-ray`` or when ``ray[serve]`` is not installed:
  ``pip install -r bench/requirements.txt``), in rounds whose order rotates, so that all of them
  see the same machine; throughput ratios are the median of the per-round ratios.
- ``bulk``: 1 MB and 100 MB numpy argument round trips (``await echo(arr)``) against a raw grpc.aio
  bidi stream moving the same bytes both ways in 1 MiB chunks, alternating call by call.
- ``hetero``: two workers, one 3× slower, closed-loop load; throughput with the default balancer
  and with round-robin against the sum of the two workers' capacities.
- ``zero``: cold start from zero workers (an endpoint scaled to zero by the autoscaler, woken by
  the call) with the time of each worker state seen on the endpoint watch.
- ``cold``: cold start of a new deployment (first ``await`` → result: package, register, upload,
  start a worker, benchmark, call), without pip packages and with numpy from uv's cache, with
  when each deploy step ended and each worker state showed.

Prints Markdown tables; ``--json FILE`` also writes the raw figures. Everything runs on loopback
with its own control service on a temporary home and stops what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import control_service, machine
from all_bulk import bulk
from all_cold import cold
from all_core import core
from all_harness import Bench
from all_hetero import hetero
from all_report import report
from all_zero import zero

# Each section lives in bench/all_<section>.py; what they share (Bench, the no-op worker file) in all_harness.py.
RUNS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "core": core,
    "bulk": bulk,
    "hetero": hetero,
    "zero": zero,
    "cold": cold,
}
SECTIONS = tuple(RUNS)


async def main_async(opts: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    home = Path(tempfile.mkdtemp(prefix="vastrpc-bench-"))
    folder = home / "project"
    folder.mkdir()
    sys.path.insert(0, str(folder))
    try:
        async with control_service(home / "home", env=opts.worker_env) as control:
            b = Bench(control, folder, opts, results)
            for name in opts.only:
                b.log(f"section {name}")
                started = time.perf_counter()
                await RUNS[name](b)
                results[f"{name}_section_s"] = time.perf_counter() - started
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("-n", type=int, default=3000, help="sequential calls, vastrpc and bare (core)")
    parser.add_argument("--calls", type=int, default=12000, help="calls for throughput, vastrpc and bare (core)")
    parser.add_argument("--ray-n", type=int, default=1200, help="sequential calls, Ray Serve (core)")
    parser.add_argument("--ray-calls", type=int, default=4800, help="calls for throughput, Ray Serve (core)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds the calls are split into (core)")
    parser.add_argument("--no-ray", action="store_true", help="leave Ray Serve out (core)")
    parser.add_argument("--ray-timeout", type=float, default=180, help="seconds Ray Serve may take to start")
    parser.add_argument("--reps-1mb", type=int, default=60)
    parser.add_argument("--reps-100mb", type=int, default=8)
    parser.add_argument("--hetero-calls", type=int, default=3000)
    parser.add_argument("--hetero-in-flight", type=int, default=32)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument(
        "--cold-idle", type=float, default=3.0, help="seconds with no deployment before each cold run (cold)"
    )
    parser.add_argument("--no-numpy", action="store_true", help="leave out the cold start with numpy (cold)")
    parser.add_argument("--zero-wait", type=float, default=30, help="seconds to wait for the scale to zero")
    parser.add_argument("--quick", action="store_true", help="fewer calls everywhere (a smoke run)")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set (KEY= removes) a variable for the control service and its workers only, to try a setting",
    )
    opts = parser.parse_args()
    opts.worker_env = dict(item.partition("=")[::2] for item in opts.worker_env)
    opts.only = [s for s in opts.only.split(",") if s]
    unknown = set(opts.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if opts.quick:
        opts.n, opts.calls, opts.rounds, opts.ray_n, opts.ray_calls = 600, 1500, 3, 300, 600
        opts.reps_1mb, opts.reps_100mb, opts.hetero_calls, opts.cold_runs = 10, 2, 600, 1
    r = asyncio.run(main_async(opts))
    r["machine"] = machine()
    r["date"] = time.strftime("%Y-%m-%d")
    print(report(r))
    if opts.json:
        opts.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
