"""Every vastrpc benchmark in one run, each figure a ratio against a baseline measured in the same run.

Run: ``python bench/all.py`` (about 90 seconds on 2 CPUs). Sections (``--only a,b`` picks some):

- ``core``: warm no-op call p50/p99 (sequential) and throughput (64 in flight) of vastrpc, of a
  bare grpc.aio unary echo and of a Ray Serve DeploymentHandle (``bench/ray_serve_noop.py`` in its
  own process; left out with ``--no-ray`` or when ``ray[serve]`` is not installed:
  ``pip install -r bench/requirements.txt``), in rounds whose order rotates, so that all three
  see the same machine; throughput ratios are the median of the per-round ratios.
- ``bulk``: 1 MB and 100 MB numpy argument round trips (``await echo(arr)``) against a raw grpc.aio
  bidi stream moving the same bytes both ways in 1 MiB chunks, alternating call by call.
- ``hetero``: two workers, one 3× slower, closed-loop load; throughput with the default balancer
  and with round-robin against the sum of the two workers' capacities.
- ``zero``: cold start from zero workers (an endpoint scaled to zero by the autoscaler, woken by
  the call) with the time of each worker state seen on the endpoint watch.
- ``cold``: cold start of a new deployment (first ``await`` → result: package, register, upload,
  start a worker, benchmark, call).

Prints Markdown tables; ``--json FILE`` also writes the raw figures. Everything runs on loopback
with its own control service on a temporary home and stops what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from _common import (
    BENCH,
    Control,
    control_service,
    echo_server,
    latency,
    load_module,
    machine,
    percentile,
    throughput,
)

from vastrpc.api.v1 import common_pb2, worker_pb2
from vastrpc.client.balancer import RoundRobin
from vastrpc.client.control import ControlClient

SECTIONS = ("core", "bulk", "hetero", "zero", "cold")
MB = 1_000_000
CHUNK = 1 << 20

NOOP = textwrap.dedent(
    """
    from vastrpc import Deployment

    app = Deployment(name="{name}")
    {autoscaling}

    @app.remote(benchmark_dataset=[{{"x": 1}}])
    async def noop(x):
        return x
    """
)

ECHO = textwrap.dedent(
    """
    from vastrpc import Deployment

    app = Deployment(name="{name}")

    @app.remote(benchmark_dataset=[{{"a": 1}}])
    async def echo(a):
        return a
    """
)

# Two workers: whichever claims the file "fast" first sleeps FAST s a call, the other SLOW s.
HETERO = textwrap.dedent(
    """
    import asyncio, os
    from vastrpc import Deployment, get_context

    app = Deployment(name="{name}")
    app.image().env(CLAIM_DIR={claims!r})
    app.configure_autoscaling(min_workers=2, max_workers=2)

    @app.context
    class Speed:
        async def __aenter__(self):
            try:
                os.close(os.open(os.path.join(os.environ["CLAIM_DIR"], "fast"), os.O_CREAT | os.O_EXCL))
                self.name, self.delay = "fast", {fast}
            except FileExistsError:
                self.name, self.delay = "slow", {slow}
            return self
        async def __aexit__(self, *exc):
            pass

    @app.remote(benchmark_dataset=[{{}}], max_concurrency={concurrency})
    async def work() -> str:
        speed = get_context(Speed)
        await asyncio.sleep(speed.delay)
        return speed.name
    """
)
HETERO_FAST, HETERO_SLOW, HETERO_CONCURRENCY = 0.01, 0.03, 4


@dataclasses.dataclass
class Bench:
    control: Control
    folder: Path
    opts: argparse.Namespace
    results: dict[str, Any]

    def module(self, prefix: str, template: str, **fields: Any) -> Any:
        name = f"{prefix}_{uuid.uuid4().hex[:6]}"
        mod = load_module(self.folder, name, template.format(name=name, **fields))
        mod.app._config = self.control.config
        return mod

    async def teardown(self, app: Any) -> None:
        """Close the client and stop the app's workers, so that idle workers do not disturb what follows."""
        await app.close()
        client = await ControlClient.connect(self.control.config)
        try:
            await client.teardown(app.name)
        finally:
            await client.close()

    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- core: warm no-op against a bare unary echo and a Ray Serve handle ------------------------


class RayPeer:
    """bench/ray_serve_noop.py --driven: Ray Serve up in its own process, measuring on request."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.proc = proc
        self.info = info

    @classmethod
    async def start(cls, timeout: float) -> RayPeer:
        argv = [sys.executable, str(BENCH / "ray_serve_noop.py"), "--driven"]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        peer = cls(proc, {})
        try:
            peer.info = (await asyncio.wait_for(peer._answer(), timeout))["ready"]
        except BaseException:
            await peer.stop()
            raise
        return peer

    async def _answer(self) -> Any:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                return json.loads(line)
            except ValueError:  # something Ray printed
                continue
        raise RuntimeError("the Ray Serve process ended early (run bench/ray_serve_noop.py alone to see why)")

    async def ask(self, what: str, count: int, timeout: float = 120) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{what} {count}\n".encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(self._answer(), timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=60, check=False)


async def core(b: Bench) -> None:
    """Latency and throughput blocks of each system in turn, order rotating round by round."""
    opts = b.opts
    mod = b.module("noop", NOOP, autoscaling="")
    await mod.app.ensure_ready()
    peer: RayPeer | None = None
    if not opts.no_ray:
        try:
            import ray  # noqa: F401
            from ray import serve  # noqa: F401
        except ImportError:
            b.results["ray_skipped"] = "ray[serve] is not installed: pip install -r bench/requirements.txt"
        else:
            try:
                peer = await RayPeer.start(opts.ray_timeout)
                b.results.update(peer.info)
            except Exception as exc:
                b.results["ray_skipped"] = f"Ray Serve did not start: {exc}"

    async def vast() -> None:
        await mod.noop(1)

    systems = ["bare", "vastrpc"] + (["ray"] if peer else [])
    lat: dict[str, list[float]] = {s: [] for s in systems}
    tput: dict[str, list[float]] = {s: [] for s in systems}
    try:
        with echo_server() as address:
            async with grpc.aio.insecure_channel(address) as channel:
                rpc = channel.unary_unary(
                    "/bench.Echo/Echo",
                    request_serializer=worker_pb2.CallData.SerializeToString,
                    response_deserializer=worker_pb2.CallData.FromString,
                )
                msg = worker_pb2.CallData(call_id=1, data=b"\x80\x05K\x01.")  # pickle of 1, the no-op's argument

                async def bare() -> None:
                    await rpc(msg)

                local = {"bare": bare, "vastrpc": vast}
                for who in local:  # warm-up
                    await latency(local[who], 0, warmup=300)
                for r in range(opts.rounds):
                    order = systems[r % len(systems) :] + systems[: r % len(systems)]
                    for who in order:
                        if who == "ray":
                            assert peer is not None
                            lat[who] += await peer.ask("lat", opts.ray_n // opts.rounds)
                        else:
                            lat[who] += await latency(local[who], opts.n // opts.rounds, warmup=20)
                    for who in order:
                        if who == "ray":
                            assert peer is not None
                            tput[who].append(await peer.ask("tput", opts.ray_calls // opts.rounds))
                        else:
                            tput[who].append(await throughput(local[who], opts.calls // opts.rounds, 64, warmup=100))
                    b.log(f"core round {r + 1}/{opts.rounds}: " + ", ".join(f"{w} {tput[w][-1]:.0f}/s" for w in order))
    finally:
        if peer is not None:
            await peer.stop()
    for who in systems:
        b.results[f"{who}_p50_ms"] = percentile(lat[who], 0.5) * 1e3
        b.results[f"{who}_p99_ms"] = percentile(lat[who], 0.99) * 1e3
        b.results[f"{who}_throughput"] = statistics.median(tput[who])
        b.results[f"{who}_throughput_rounds"] = tput[who]
    # Ratios of throughput round by round (each pair measured within seconds), then their median.
    for base in systems:
        if base != "vastrpc":
            pairs = [v / x for v, x in zip(tput["vastrpc"], tput[base], strict=True)]
            b.results[f"throughput_ratio_{base}"] = statistics.median(pairs)
            b.results[f"throughput_ratio_{base}_rounds"] = pairs
    await b.teardown(mod.app)


# -- bulk: numpy round trips against a raw gRPC stream ---------------------------------------


async def bulk(b: Bench) -> None:
    import numpy as np

    mod = b.module("echo", ECHO)
    await mod.app.ensure_ready()
    with echo_server() as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stream = channel.stream_stream("/bench.Echo/Stream")()  # raw bytes both ways

            async def raw(chunks: list[bytes]) -> list[bytes]:
                for chunk in chunks:
                    await stream.write(chunk)
                await stream.write(b"")
                back = []
                while (part := await stream.read()) != b"":
                    back.append(part)
                return back

            async def raw_round_trip(arr: Any) -> None:
                # What a client does to send an array over a raw stream: one copy into 1 MiB messages.
                view = memoryview(arr).cast("B")
                back = await raw([bytes(view[i : i + CHUNK]) for i in range(0, len(view), CHUNK)])
                assert sum(map(len, back)) == len(view)

            for size, reps in ((MB, b.opts.reps_1mb), (100 * MB, b.opts.reps_100mb)):
                arr = np.arange(size // 8, dtype=np.float64)
                out = await mod.echo(arr)  # warm-up, and a check that it is the same array back
                assert isinstance(out, np.ndarray) and np.array_equal(out, arr)
                await raw_round_trip(arr)
                times: dict[str, list[float]] = {"raw": [], "vastrpc": []}
                for r in range(reps):
                    for who in ("raw", "vastrpc") if r % 2 == 0 else ("vastrpc", "raw"):
                        t = time.perf_counter()
                        if who == "raw":
                            await raw_round_trip(arr)
                        else:
                            await mod.echo(arr)
                        times[who].append(time.perf_counter() - t)
                label = f"{size // MB}mb"
                pairs = [raw_t / ours_t for raw_t, ours_t in zip(times["raw"], times["vastrpc"], strict=True)]
                b.results[f"bulk_{label}_ratio"] = statistics.median(pairs)
                for who, values in times.items():
                    med = statistics.median(values)
                    b.results[f"bulk_{label}_{who}_s"] = med
                    b.results[f"bulk_{label}_{who}_mbps"] = 2 * size / med / MB
                b.log(f"bulk {label} done")
            stream.cancel()
    await b.teardown(mod.app)


# -- hetero: a slow and a fast worker, default balancer against round-robin -----------------


async def hetero(b: Bench) -> None:
    claims = b.folder / f"claims-{uuid.uuid4().hex[:6]}"
    claims.mkdir()
    mod = b.module(
        "hetero", HETERO, claims=str(claims), fast=HETERO_FAST, slow=HETERO_SLOW, concurrency=HETERO_CONCURRENCY
    )
    config = mod.app._config
    capacity = HETERO_CONCURRENCY / HETERO_FAST + HETERO_CONCURRENCY / HETERO_SLOW
    b.results["hetero_capacity"] = capacity
    b.results["hetero_setup"] = (
        f"2 workers, max_concurrency {HETERO_CONCURRENCY}, asyncio.sleep {HETERO_FAST * 1e3:g} ms / "
        f"{HETERO_SLOW * 1e3:g} ms, {b.opts.hetero_in_flight} calls in flight"
    )

    async def run(balancer: str) -> None:
        mod.app._config = dataclasses.replace(config, balancer=balancer)
        result = await mod.app.ensure_ready()
        assert result.ready_workers == 2 or result.tier != 4, result
        semaphore = asyncio.Semaphore(b.opts.hetero_in_flight)

        async def one() -> str:
            async with semaphore:
                return await mod.work()  # type: ignore[no-any-return]

        await asyncio.gather(*(one() for _ in range(200)))  # warm-up: the balancer learns the latencies
        t = time.perf_counter()
        shares = collections.Counter(await asyncio.gather(*(one() for _ in range(b.opts.hetero_calls))))
        rate = b.opts.hetero_calls / (time.perf_counter() - t)
        b.results[f"hetero_{balancer}_throughput"] = rate
        b.results[f"hetero_{balancer}_fast_share"] = shares["fast"] / b.opts.hetero_calls
        await mod.app.close()
        b.log(f"hetero {balancer}: {rate:.0f} calls/s, {dict(shares)}")

    await run("least_expected_time")
    await run("round_robin")
    mod.app._config = config

    # Each worker's real capacity: all calls pinned to it alone, same client, same load.
    await mod.app.ensure_ready()
    router = mod.app._session.router
    default_balancer = router.balancer
    router.balancer = RoundRobin()  # to meet both workers
    ids: dict[str, str] = {}
    while len(ids) < 2:
        info = await mod.work.call_with_info()
        ids[info.value] = info.worker_id
    measured = 0.0
    for name in ("fast", "slow"):
        router.balancer = _Pinned(ids[name])
        limit = asyncio.Semaphore(b.opts.hetero_in_flight)

        async def pinned(limit: asyncio.Semaphore = limit) -> None:
            async with limit:
                await mod.work()

        calls = b.opts.hetero_calls // (2 if name == "fast" else 6)
        await asyncio.gather(*(pinned() for _ in range(50)))
        t = time.perf_counter()
        await asyncio.gather(*(pinned() for _ in range(calls)))
        rate = calls / (time.perf_counter() - t)
        b.results[f"hetero_{name}_alone"] = rate
        measured += rate
        b.log(f"hetero {name} worker alone: {rate:.0f} calls/s")
    router.balancer = default_balancer
    b.results["hetero_measured_capacity"] = measured
    await mod.app.close()
    await b.teardown(mod.app)


class _Pinned:
    """A balancer that sends every call to one worker: to measure that worker's own capacity."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id

    def pick(self, candidates):  # type: ignore[no-untyped-def]
        return next(c for c in candidates if c.worker_id == self.worker_id)


# -- zero: cold start from zero workers -------------------------------------------------------

STATE_NAMES = {v: k.removeprefix("WORKER_STATE_").lower() for k, v in common_pb2.WorkerState.items()}


async def _live_workers(client: ControlClient, name: str) -> int:
    listing = await client.list_deployments(name)
    return sum(
        1
        for d in listing.deployments
        for e in d.endpoints
        for w in e.workers
        if w.state != common_pb2.WORKER_STATE_STOPPED
    )


async def zero(b: Bench) -> None:
    autoscaling = "app.configure_autoscaling(min_workers=0, max_workers=1, inactivity_timeout=1)"
    mod = b.module("zero", NOOP, autoscaling=autoscaling)
    deployed = await mod.app.ensure_ready()
    client = await ControlClient.connect(b.control.config)
    runs: list[float] = []
    timelines: list[dict[str, float]] = []
    try:
        for i in range(b.opts.cold_runs):
            await mod.noop(1)  # in use: the next scale to zero counts from here
            deadline = time.monotonic() + b.opts.zero_wait
            while await _live_workers(client, mod.app.name):
                if time.monotonic() > deadline:
                    b.results["zero_skipped"] = (
                        f"the endpoint did not scale to zero within {b.opts.zero_wait:g} s (min_workers=0, "
                        "inactivity_timeout=1): scale-to-zero is not working"
                    )
                    return
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)  # let the stopped worker's processes go
            seen: dict[str, float] = {}

            async def watch(t0: float, seen: dict[str, float]) -> None:
                known: set[str] = set()
                async for update in client.watch(deployed.endpoint_id):
                    for w in update.workers:
                        if w.state == common_pb2.WORKER_STATE_STOPPED:
                            known.add(w.worker_id)
                        elif w.worker_id not in known:
                            seen.setdefault(STATE_NAMES[w.state], time.perf_counter() - t0)

            t0 = time.perf_counter()
            watcher = asyncio.get_running_loop().create_task(watch(t0, seen))
            await mod.noop(1)
            elapsed = time.perf_counter() - t0
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            runs.append(elapsed)
            timelines.append({**seen, "first result": elapsed})
            b.log(f"cold start from zero {i + 1}: {elapsed:.2f} s {seen}")
    finally:
        await client.close()
    b.results["zero_cold_start_s"] = statistics.median(runs)
    b.results["zero_cold_start_all_s"] = runs
    b.results["zero_timelines"] = timelines
    await b.teardown(mod.app)


# -- cold: a new deployment -------------------------------------------------------------------


async def cold(b: Bench) -> None:
    runs = []
    for _ in range(b.opts.cold_runs):
        fresh = b.module("cold", NOOP, autoscaling="")
        t = time.perf_counter()
        await fresh.noop(1)
        runs.append(time.perf_counter() - t)
        await b.teardown(fresh.app)
    b.results["cold_start_s"] = statistics.median(runs)
    b.results["cold_start_all_s"] = runs


# -- report -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(r: dict[str, Any]) -> str:
    out = [f"# vastrpc benchmarks — {r['date']} — {r['machine']}", ""]
    if "vastrpc_p50_ms" in r:
        out += [
            "## Warm no-op call",
            "",
            "| measure | bare grpc.aio unary echo | Ray Serve handle | vastrpc | vastrpc / bare | vastrpc / Ray "
            "| target |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, key, unit, fmt in (
            ("p50, sequential", "p50_ms", "ms", ".3f"),
            ("p99, sequential", "p99_ms", "ms", ".3f"),
            ("throughput, 64 in flight", "throughput", "calls/s", ",.0f"),
        ):
            bare, ours = r[f"bare_{key}"], r[f"vastrpc_{key}"]
            ray_v = r.get(f"ray_{key}")
            ray_cell = f"{ray_v:{fmt}} {unit}" if ray_v else "—"
            ray_ratio = f"{ours / ray_v:.2f}×" if ray_v else "—"
            bare_ratio = f"{ours / bare:.2f}×"
            if key == "throughput":  # the median of the per-round ratios
                bare_ratio = f"{r['throughput_ratio_bare']:.2f}×"
                ray_ratio = f"{r['throughput_ratio_ray']:.2f}×" if ray_v else "—"
            if key == "p50_ms":
                target = f"≤ 1.0× bare ({verdict(ours <= bare)}), ≤ 0.25× Ray"
                target += f" ({verdict(ours <= 0.25 * ray_v)})" if ray_v else " (not measured)"
            elif key == "throughput":
                target = f"≥ 1.0× bare ({verdict(r['throughput_ratio_bare'] >= 1)}), ≥ 5× Ray"
                target += f" ({verdict(r['throughput_ratio_ray'] >= 5)})" if ray_v else " (not measured)"
            else:
                target = "—"
            out.append(
                f"| {label} | {bare:{fmt}} {unit} | {ray_cell} | {ours:{fmt}} {unit} | {bare_ratio} "
                f"| {ray_ratio} | {target} |"
            )
        out += [
            "",
            f"Latency: {len(r.get('throughput_ratio_bare_rounds', []))} rounds pooled; throughput: the median of "
            "each system's rounds, ratios the median of the per-round ratios.",
        ]
        if "ray_skipped" in r:
            out += ["", f"Ray Serve: skipped ({r['ray_skipped']})."]
        out.append("")
    if "bulk_100mb_vastrpc_mbps" in r:
        out += [
            "## Argument round trips (numpy array there and back; MB/s counts both directions, MB = 10^6 bytes)",
            "",
            "Medians over alternating round trips; the ratio is the median of the per-pair time ratios.",
            "",
            "| argument | raw grpc.aio bidi stream, 1 MiB chunks | vastrpc `await echo(arr)` | vastrpc / raw "
            "| target |",
            "|---|---|---|---|---|",
        ]
        for label in ("1mb", "100mb"):
            raw_s, ours_s = r[f"bulk_{label}_raw_s"], r[f"bulk_{label}_vastrpc_s"]
            raw_v, ours_v = r[f"bulk_{label}_raw_mbps"], r[f"bulk_{label}_vastrpc_mbps"]
            target = f"≥ 400 MB/s ({verdict(ours_v >= 400)})" if label == "100mb" else "—"
            out.append(
                f"| {label[:-2]} MB | {raw_v:,.0f} MB/s ({raw_s * 1e3:.1f} ms) | {ours_v:,.0f} MB/s "
                f"({ours_s * 1e3:.1f} ms) | {r[f'bulk_{label}_ratio']:.2f}× | {target} |"
            )
        out.append("")
    if "hetero_round_robin_throughput" in r:
        cap, measured = r["hetero_capacity"], r["hetero_measured_capacity"]
        fast_alone, slow_alone = r["hetero_fast_alone"], r["hetero_slow_alone"]
        out += [
            f"## Heterogeneous workers ({r['hetero_setup']})",
            "",
            "| balancer | throughput | of the measured capacity | of the theoretical one | to the fast worker |",
            "|---|---|---|---|---|",
            f"| theoretical capacity (max_concurrency / sleep, summed) | {cap:,.0f} calls/s | — | 1.00× | 75% |",
            f"| measured capacity (each worker alone, same load, summed) | {measured:,.0f} calls/s | 1.00× "
            f"| {measured / cap:.2f}× | {fast_alone / measured:.0%} |",
        ]
        for balancer in ("least_expected_time", "round_robin"):
            rate = r[f"hetero_{balancer}_throughput"]
            share = r[f"hetero_{balancer}_fast_share"]
            name = f"{balancer} (default)" if balancer == "least_expected_time" else balancer
            target = " (target ≥ 0.90×: " + verdict(rate / measured >= 0.9) + ")" if balancer != "round_robin" else ""
            out.append(
                f"| {name} | {rate:,.0f} calls/s | {rate / measured:.2f}×{target} | {rate / cap:.2f}× | {share:.0%} |"
            )
        out.append(f"\nEach worker alone: fast {fast_alone:,.0f} calls/s, slow {slow_alone:,.0f} calls/s.")
        lt, rr = r["hetero_least_expected_time_throughput"], r["hetero_round_robin_throughput"]
        out += ["", f"Default balancer / round-robin: {lt / rr:.2f}×.", ""]
    out += ["## Cold start", "", "| what | median | runs | target |", "|---|---|---|---|"]
    if "zero_cold_start_s" in r:
        runs = ", ".join(f"{x:.2f}" for x in r["zero_cold_start_all_s"])
        ok = verdict(r["zero_cold_start_s"] <= 1.5)
        out.append(
            f"| from zero workers (scaled to zero; the call wakes it) | {r['zero_cold_start_s']:.2f} s | {runs} s "
            f"| ≤ 1.5 s ({ok}) |"
        )
    elif "zero_skipped" in r:
        out.append(f"| from zero workers | — | — | {r['zero_skipped']} |")
    if "cold_start_s" in r:
        runs = ", ".join(f"{x:.2f}" for x in r["cold_start_all_s"])
        ok = verdict(r["cold_start_s"] <= 1.5)
        out.append(
            f"| new deployment (package, upload, new worker, benchmark, call) | {r['cold_start_s']:.2f} s | {runs} s "
            f"| ≤ 1.5 s ({ok}) |"
        )
    if "ray_cold_start_s" in r:
        out.append(
            f"| Ray Serve: `serve.run` → first response, Ray already up (reference) | {r['ray_cold_start_s']:.2f} s "
            f"| 1 | — |"
        )
    if r.get("zero_timelines"):
        out += [
            "",
            "Cold start from zero, when the endpoint watch first showed each worker state (s after the call):",
            "",
        ]
        states = list(dict.fromkeys(k for t in r["zero_timelines"] for k in t))
        out += ["| run | " + " | ".join(states) + " |", "|---" * (len(states) + 1) + "|"]
        for i, t in enumerate(r["zero_timelines"], 1):
            out.append(f"| {i} | " + " | ".join(f"{t[s]:.3f}" if s in t else "—" for s in states) + " |")
    return "\n".join(out) + "\n"


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
                await globals()[name](b)
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
