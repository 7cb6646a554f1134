"""Core benchmark: vastrpc warm call latency and throughput against a bare grpc.aio unary echo, and cold start.

Run: ``python bench/run.py`` (about a minute). Prints a Markdown table with ratios measured
in the same run; ``--json FILE`` also writes the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import grpc

from vastrpc.api.v1 import worker_pb2
from vastrpc.config import ClientConfig

ROOT = Path(__file__).resolve().parent.parent

NOOP = textwrap.dedent(
    """
    from vastrpc import Deployment

    app = Deployment(name="{name}")

    @app.remote(benchmark_dataset=[{{"x": 1}}])
    async def noop(x):
        return x
    """
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(call, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(200):  # warm-up
        await call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t)
    return out


async def throughput(call, n: int, in_flight: int = 64) -> float:  # type: ignore[no-untyped-def]
    semaphore = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with semaphore:
            await call()

    await asyncio.gather(*(one() for _ in range(500)))
    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t)


def load_module(folder: Path, name: str):  # type: ignore[no-untyped-def]
    import importlib.util

    path = folder / f"{name}.py"
    path.write_text(NOOP.format(name=name))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def bench(n: int, cold_runs: int, home: Path) -> dict:
    control = subprocess.Popen(
        [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(home)],
        stdout=subprocess.DEVNULL,
        stderr=open(home / "control.log", "ab"),
    )
    echo = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "echo_server.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(200):
            if (home / "control.json").exists():
                break
            await asyncio.sleep(0.05)
        info = json.loads((home / "control.json").read_text())
        config = ClientConfig(
            control_address=info["address"], api_key=(home / "api_key").read_text().strip(), home=home
        )
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        results: dict = {}

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            rpc = channel.unary_unary(
                "/bench.Echo/Echo",
                request_serializer=worker_pb2.CallData.SerializeToString,
                response_deserializer=worker_pb2.CallData.FromString,
            )
            msg = worker_pb2.CallData(call_id=1, data=b"\x80\x05K\x01.")

            async def bare() -> None:
                await rpc(msg)

            lat = await latency(bare, n)
            results["bare_p50_ms"] = percentile(lat, 0.5) * 1e3
            results["bare_p99_ms"] = percentile(lat, 0.99) * 1e3
            results["bare_throughput"] = await throughput(bare, n * 2)

        folder = Path(tempfile.mkdtemp(prefix="bench-project-"))
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
    finally:
        if echo.stdin:
            echo.stdin.close()
        echo.wait(10)
        control.terminate()
        control.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="sequential calls per latency measurement")
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vastrpc-bench-") as tmp:
        r = asyncio.run(bench(opts.n, opts.cold_runs, Path(tmp)))
    r["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, grpcio {grpc.__version__}"
    )
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
