"""The Ray Serve peer: a no-op deployment called through its DeploymentHandle, run as its own process.

Starts a local Ray (2 CPUs, no dashboard, no HTTP proxy), ``serve.run``s one replica of a no-op
deployment with ``max_ongoing_requests`` high enough for 64 calls in flight, and measures what
``bench/all.py`` measures for vastrpc: sequential ``await handle.remote(1)`` latency and
throughput with 64 in flight, and the cold start (``serve.run`` → first response). Shuts Ray
down before it exits.

- Alone (``python bench/ray_serve_noop.py``): measures once and prints one JSON object.
- ``--driven`` (what bench/all.py uses, so that Ray, vastrpc and the bare echo are measured in
  alternating rounds on a noisy machine): prints ``{"ready": ...}`` once up, then answers each
  stdin line ``lat N`` (seconds of N sequential calls) or ``tput N`` (calls/s for N calls, 64 in
  flight) with one JSON line; an empty line or EOF ends it.

Needs ``ray[serve]`` (``pip install -r bench/requirements.txt``); the test suite does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import latency, percentile, throughput  # noqa: E402


async def measure_once(call: Any, opts: argparse.Namespace, result: dict[str, Any]) -> None:
    lat = await latency(call, opts.n, warmup=100)
    result["ray_p50_ms"] = percentile(lat, 0.5) * 1e3
    result["ray_p99_ms"] = percentile(lat, 0.99) * 1e3
    result["ray_throughput"] = await throughput(call, opts.calls, opts.in_flight, warmup=200)
    print(json.dumps(result), flush=True)


async def driven(call: Any, opts: argparse.Namespace, result: dict[str, Any]) -> None:
    for _ in range(100):  # warm-up
        await call()
    print(json.dumps({"ready": result}), flush=True)
    loop = asyncio.get_running_loop()
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        what, count = line.split()
        if what == "lat":
            answer: Any = await latency(call, int(count), warmup=20)
        else:
            answer = await throughput(call, int(count), opts.in_flight, warmup=100)
        print(json.dumps(answer), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="sequential calls for latency")
    parser.add_argument("--calls", type=int, default=2000, help="calls for the throughput measurement")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--max-ongoing", type=int, default=256, help="the deployment's max_ongoing_requests")
    parser.add_argument("--driven", action="store_true", help="take measurement commands on stdin")
    opts = parser.parse_args()

    import ray
    from ray import serve

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    result: dict[str, Any] = {"ray_version": ray.__version__, "ray_cluster_start_s": time.perf_counter() - started}
    try:
        serve.start(proxy_location="Disabled")

        @serve.deployment(max_ongoing_requests=opts.max_ongoing, num_replicas=1)
        class Noop:
            async def __call__(self, x: int) -> int:
                return x

        t = time.perf_counter()
        handle = serve.run(Noop.bind(), name="noop", route_prefix=None)  # type: ignore[attr-defined]

        async def call() -> None:
            await handle.remote(1)

        async def run() -> None:
            await call()
            result["ray_cold_start_s"] = time.perf_counter() - t
            await (driven if opts.driven else measure_once)(call, opts, result)

        asyncio.run(run())
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
