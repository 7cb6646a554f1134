"""bench/all.py core: a warm no-op call against two bare grpc.aio unary echoes and a Ray Serve handle."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
from typing import Any

import grpc
from _common import BENCH, echo_call, echo_server, latency, percentile, raw_echo_call, throughput
from all_harness import NOOP, Bench


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

    # Two bare baselines: protobuf messages, and raw bytes through a generic handler; the
    # targets are against the faster of the two.
    systems = ["bare", "bare_raw", "vastrpc"] + (["ray"] if peer else [])
    lat: dict[str, list[float]] = {s: [] for s in systems}
    tput: dict[str, list[float]] = {s: [] for s in systems}
    try:
        with echo_server() as address:
            async with grpc.aio.insecure_channel(address) as channel:
                local = {"bare": echo_call(channel), "bare_raw": raw_echo_call(channel), "vastrpc": vast}
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
    # Against the faster bare baseline: the lower p50, and round by round the higher throughput.
    b.results["bare_best_p50_ms"] = min(b.results["bare_p50_ms"], b.results["bare_raw_p50_ms"])
    best = [v / max(x, y) for v, x, y in zip(tput["vastrpc"], tput["bare"], tput["bare_raw"], strict=True)]
    b.results["throughput_ratio_bare_best"] = statistics.median(best)
    b.results["throughput_ratio_bare_best_rounds"] = best
    await b.teardown(mod.app)
