"""Core benchmark: vastrpc warm call latency and throughput against a bare grpc.aio unary echo, and cold start.

Run: ``python bench/run.py`` (about a minute). Prints a Markdown table with ratios measured
in the same run; ``--json FILE`` also writes the raw figures. ``python bench/all.py`` runs this
and every other comparison (Ray Serve, bulk transfer, balancing, cold start from zero).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import grpc
from _common import control_service, echo_call, echo_server, latency, machine, percentile, throughput
from _common import load_module as _load_module

NOOP = textwrap.dedent(
    """
    from vastrpc import Deployment

    app = Deployment(name="{name}")

    @app.remote(benchmark_dataset=[{{"x": 1}}])
    async def noop(x):
        return x
    """
)


def load_module(folder: Path, name: str):  # type: ignore[no-untyped-def]
    return _load_module(folder, name, NOOP.format(name=name))


async def bench(n: int, cold_runs: int, home: Path) -> dict:
    async with control_service(home / "home") as control:
        config = control.config
        results: dict = {}
        with echo_server() as address:
            async with grpc.aio.insecure_channel(address) as channel:
                bare = echo_call(channel)
                lat = await latency(bare, n)
                results["bare_p50_ms"] = percentile(lat, 0.5) * 1e3
                results["bare_p99_ms"] = percentile(lat, 0.99) * 1e3
                results["bare_throughput"] = await throughput(bare, n * 2)

        folder = home / "project"
        folder.mkdir()
        sys.path.insert(0, str(folder))
        mod = load_module(folder, f"noop_{uuid.uuid4().hex[:6]}")
        mod.app._config = config
        await mod.app.ensure_ready()

        async def vast() -> None:
            await mod.noop(1)

        lat = await latency(vast, n)
        results["vastrpc_p50_ms"] = percentile(lat, 0.5) * 1e3
        results["vastrpc_p99_ms"] = percentile(lat, 0.99) * 1e3
        results["vastrpc_throughput"] = await throughput(vast, n * 2)
        await mod.app.close()

        colds = []
        for _ in range(cold_runs):
            fresh = load_module(folder, f"cold_{uuid.uuid4().hex[:6]}")
            fresh.app._config = config
            t = time.perf_counter()
            await fresh.noop(1)
            colds.append(time.perf_counter() - t)
            await fresh.app.close()
        results["cold_start_s"] = statistics.median(colds)
        results["cold_start_all_s"] = colds
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="sequential calls per latency measurement")
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vastrpc-bench-") as tmp:
        r = asyncio.run(bench(opts.n, opts.cold_runs, Path(tmp)))
    r["machine"] = machine()
    r["date"] = time.strftime("%Y-%m-%d")
    print(f"# vastrpc core benchmark — {r['date']} — {r['machine']}\n")
    print("| measure | bare grpc.aio unary echo | vastrpc | ratio (vastrpc / bare) |")
    print("|---|---|---|---|")
    for label, key in (("warm call p50", "p50_ms"), ("warm call p99", "p99_ms")):
        bare, ours = r[f"bare_{key}"], r[f"vastrpc_{key}"]
        print(f"| {label} | {bare:.3f} ms | {ours:.3f} ms | {ours / bare:.2f}× |")
    bare, ours = r["bare_throughput"], r["vastrpc_throughput"]
    print(f"| throughput, 64 in flight | {bare:.0f} calls/s | {ours:.0f} calls/s | {ours / bare:.2f}× |")
    colds = ", ".join(f"{c:.2f}" for c in r["cold_start_all_s"])
    print(
        f"\ncold start (new deployment, ensure_ready → first result): median {r['cold_start_s']:.2f} s (runs: {colds})"
    )
    if opts.json:
        opts.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
