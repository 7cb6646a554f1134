"""The Ray Serve peer: a no-op deployment called through its DeploymentHandle, run as its own process.

Starts a local Ray (2 CPUs, no dashboard, no HTTP proxy), ``serve.run``s one replica of a no-op
deployment with ``max_ongoing_requests`` high enough for 64 calls in flight, and measures the
same things ``bench/all.py`` measures for vastrpc: sequential ``await handle.remote(1)`` latency
and throughput with 64 in flight. Also times the cold start (``serve.run`` → first response).
Prints one JSON object as its last line of stdout; shuts Ray down before it exits.

Needs ``ray[serve]`` (``pip install -r bench/requirements.txt``); the test suite does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import latency, percentile, throughput  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=1000, help="sequential calls for latency")
    parser.add_argument("--calls", type=int, default=2000, help="calls for the throughput measurement")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--max-ongoing", type=int, default=256, help="the deployment's max_ongoing_requests")
    opts = parser.parse_args()

    import ray
    from ray import serve

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    cluster_s = time.perf_counter() - started
    result: dict[str, float | str] = {"ray_version": ray.__version__, "ray_cluster_start_s": cluster_s}
    try:
        serve.start(proxy_location="Disabled")

        @serve.deployment(max_ongoing_requests=opts.max_ongoing, num_replicas=1)
        class Noop:
            async def __call__(self, x: int) -> int:
                return x

        t = time.perf_counter()
        handle = serve.run(Noop.bind(), name="noop", route_prefix=None)

        async def measure() -> None:
            await handle.remote(1)
            result["ray_cold_start_s"] = time.perf_counter() - t

            async def call() -> None:
                await handle.remote(1)

            lat = await latency(call, opts.n, warmup=100)
            result["ray_p50_ms"] = percentile(lat, 0.5) * 1e3
            result["ray_p99_ms"] = percentile(lat, 0.99) * 1e3
            result["ray_throughput"] = await throughput(call, opts.calls, opts.in_flight, warmup=200)

        asyncio.run(measure())
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
