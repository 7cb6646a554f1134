"""The control plane at scale: one control service under a thousand simulated workers — `python bench/control_scale.py`.

What it measures, for each worker count (``--workers 1000,2000``), on a control service
process of its own (SQLite, ``--heartbeat-interval 1``):

- **CPU**: the control service's utime+stime (``/proc/PID/stat``) over a window, with every
  worker heartbeating once a second, each beat a message on its HeartbeatStream (as agents
  do, asking for an answer every fourth beat); then, in the same run, with unary Heartbeat
  calls (as older agents do), and on streams answering every beat (as agents before
  ``answer_every``); then with
  ``--watchers`` clients watching the endpoint (streams again). Baselines in the same run: a bare
  grpc.aio server echoing the same rate of messages from the same number of channels, as unary
  calls and as messages on one bidirectional stream per simulated worker.
- **watch latency**: the watchers ask for deltas (``WatchEndpointRequest.deltas``, as the Python
  client does; ``--whole-watch``: whole updates, as older clients); ``--flips`` state changes (a
  worker reports DRAINING, then READY again, over UpdateWorker with its own token), each timed
  from just before the report until each watcher's stream delivers an update showing it;
  p50/p99 over every (flip, watcher), and the median delivery of each flip (a slow flip vs
  watchers served one after the other). Since 2026-12-03 the updates of a flip are decoded
  once every watcher got one (before, each poll decoded those already there while the rest
  arrived, which timed the rest late).
- **ListDeployments**: latency of 30 sequential calls, and the answer's size.
- **the client's choice of a worker** (``bench/balancer_pick.py``): µs per pick among 10 to
  10,000 ready workers, against the linear scan it replaced.

The simulated workers run in a child process (``bench/control_sim.py fleet``); the watchers,
the flips and the listing in this one, on raw bytes (an update is decoded only after it was
timed, so decoding a hundred of them does not delay the next one's timestamp).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import control_service, machine, percentile  # noqa: E402
from control_sim import WATCH_METHOD, Credentials, deploy, handed_off, handoff_command, join  # noqa: E402

from vastrpc._grpc import CHANNEL_OPTIONS, bearer  # noqa: E402
from vastrpc.api.v1 import common_pb2, control_pb2, control_pb2_grpc, worker_pb2  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def cpu_share(pid: int, seconds: float) -> float:
    """The fraction of one core the process used over the next ``seconds``."""
    before, started = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


class Watcher:
    """One client watching the endpoint: keeps (arrival time, raw update) of every message."""

    def __init__(self, channel: grpc.aio.Channel, endpoint_id: str, api_key: str, deltas: bool = True) -> None:
        watch = channel.unary_stream(
            WATCH_METHOD,
            request_serializer=control_pb2.WatchEndpointRequest.SerializeToString,
            response_deserializer=None,  # raw bytes: timed on arrival, decoded later
        )
        self.arrivals: list[tuple[float, bytes]] = []
        request = control_pb2.WatchEndpointRequest(endpoint_id=endpoint_id, deltas=deltas)
        self._call = watch(request, metadata=bearer(api_key))
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for data in self._call:
                self.arrivals.append((time.monotonic(), data))

    def seen(self, since: int, worker_id: str, state: int) -> float | None:
        """Arrival time of the first update from index ``since`` on that shows the worker in ``state``."""
        for at, data in self.arrivals[since:]:
            update = control_pb2.WatchEndpointResponse.FromString(data)
            if any(w.worker_id == worker_id and w.state == state for w in update.workers):
                return at
        return None

    async def close(self) -> None:
        self._call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class FleetProcess:
    """``control_sim.py fleet`` in a child process; its latest progress line."""

    def __init__(self, address: str, workers: list[Credentials], channels: int) -> None:
        here = Path(__file__).resolve().parent
        self.proc = subprocess.Popen(
            [sys.executable, str(here / "control_sim.py"), "fleet", "--control", address, "--channels", str(channels)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None
        for w in workers:
            self.proc.stdin.write(json.dumps({"worker_id": w.worker_id, "token": w.token}) + "\n")
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.last: dict[str, float] = {}

    def heartbeats(self, how: str) -> None:
        """Switch how the workers beat: "unary", "stream" or "stream-every" (each beat answered)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(how + "\n")
        self.proc.stdin.flush()

    async def ready(self, timeout: float) -> None:
        line = await asyncio.wait_for(asyncio.to_thread(self._readline), timeout)
        if "ready" not in json.loads(line or "{}"):
            raise RuntimeError(f"the fleet did not come up: {line!r}")
        asyncio.get_running_loop().run_in_executor(None, self._follow)

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def _follow(self) -> None:
        while line := self._readline():
            self.last = json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _wait_all_ready(stub: control_pb2_grpc.ControlServiceStub, key: str, name: str, count: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        listing = await stub.ListDeployments(control_pb2.ListDeploymentsRequest(name=name), metadata=bearer(key))
        workers = listing.deployments[0].endpoints[0].workers
        if sum(w.state == common_pb2.WORKER_STATE_READY for w in workers) >= count:
            return
        await asyncio.sleep(1.0)
    raise RuntimeError(f"not all {count} workers became ready")


# The median delivery of each flip of the last ``_flips``: tells one slow flip (every watcher
# late at once: the process had no core) from watchers served one after the other.
flip_medians: list[float] = []


async def _flips(
    stub: control_pb2_grpc.ControlServiceStub, watchers: list[Watcher], workers: list[Credentials], flips: int
) -> tuple[list[float], int]:
    """Latencies (s) of every (flip, watcher), and how many deliveries were missing after 10 s."""
    latencies: list[float] = []
    missing = 0
    flip_medians.clear()
    for k in range(flips):
        worker = workers[(k // 2) % len(workers)]
        state = common_pb2.WORKER_STATE_DRAINING if k % 2 == 0 else common_pb2.WORKER_STATE_READY
        marks = [len(w.arrivals) for w in watchers]
        done = len(latencies)
        started = time.monotonic()
        extra = {"address": "127.0.0.1:9", "score": 100.0, "capacity": 4} if k % 2 else {}
        await stub.UpdateWorker(
            control_pb2.UpdateWorkerRequest(worker_id=worker.worker_id, state=state, **extra),  # type: ignore[arg-type]
            metadata=bearer(worker.token),
            timeout=30,
        )
        pending = set(range(len(watchers)))
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            # Decoded only once every watcher still waited for got something new (or after 5 s):
            # arrivals are timed on this event loop, and decoding a hundred 120 kB updates while
            # the rest still arrive would time those late.
            if any(len(watchers[i].arrivals) <= marks[i] for i in pending) and time.monotonic() < deadline - 5:
                continue
            for i in list(pending):
                at = watchers[i].seen(marks[i], worker.worker_id, state)
                if at is not None:
                    latencies.append(at - started)
                    pending.discard(i)
                else:
                    marks[i] = len(watchers[i].arrivals)  # not in those: wait for the next
        missing += len(pending)
        if len(latencies) > done:
            flip_medians.append(percentile(latencies[done:], 0.5))
        await asyncio.sleep(0.1)  # the next flip starts from quiet
    return latencies, missing


async def _list_latency(
    stub: control_pb2_grpc.ControlServiceStub, key: str, calls: int = 30
) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(calls):
        started = time.perf_counter()
        listing = await stub.ListDeployments(control_pb2.ListDeploymentsRequest(), metadata=bearer(key), timeout=30)
        times.append(time.perf_counter() - started)
        size = listing.ByteSize()
    return times, size


def _ms(values: list[float], q: float) -> float:
    return 1000 * percentile(values, q) if values else float("nan")


async def run_scale(count: int, args: argparse.Namespace) -> dict[str, object]:
    """Every control-plane figure for ``count`` simulated workers."""
    result: dict[str, object] = {"workers": count}
    with tempfile.TemporaryDirectory(prefix="vastrpc-scale-") as tmp:
        handoff = Path(tmp) / "handoff"
        handoff.mkdir()
        serve_args = ["--port", "0", "--heartbeat-interval", "1", "--no-worker-user"]
        serve_args += ["--worker-command", shlex.join(handoff_command(handoff))]
        async with control_service(Path(tmp) / "home", *serve_args) as control:
            key = control.config.api_key or ""
            channel = grpc.aio.insecure_channel(control.address, options=list(CHANNEL_OPTIONS))
            stub = control_pb2_grpc.ControlServiceStub(channel)
            name = "scale"
            endpoint_id = await deploy(stub, key, name)
            while not (workers := handed_off(handoff)):
                await asyncio.sleep(0.05)
            started = time.monotonic()
            workers += await join(stub, key, name, count - 1)
            fleet = FleetProcess(control.address, workers, args.channels)
            try:
                await fleet.ready(timeout=600)
                await _wait_all_ready(stub, key, name, count)
                result["bring_up_s"] = round(time.monotonic() - started, 1)
                print(f"  {count} workers ready in {result['bring_up_s']} s ({load()})", flush=True)
                await asyncio.sleep(3)
                result["cpu_heartbeats"] = await cpu_share(control.process.pid, args.window)
                result["heartbeat_rate"] = fleet.last.get("heartbeats", 0)
                result["fleet"] = dict(fleet.last)
                result["load_cpu"] = load()
                print(f"  CPU, heartbeats only (streams): {result['cpu_heartbeats']:.1%} ({load()})", flush=True)
                fleet.heartbeats("unary")
                await asyncio.sleep(3)
                result["cpu_heartbeats_unary"] = await cpu_share(control.process.pid, args.window)
                result["fleet_unary"] = dict(fleet.last)
                print(f"  CPU, heartbeats only (unary): {result['cpu_heartbeats_unary']:.1%} ({load()})", flush=True)
                fleet.heartbeats("stream-every")
                await asyncio.sleep(3)
                result["cpu_heartbeats_every"] = await cpu_share(control.process.pid, args.window)
                print(
                    f"  CPU, heartbeats only (streams, every beat answered): {result['cpu_heartbeats_every']:.1%}"
                    f" ({load()})",
                    flush=True,
                )
                fleet.heartbeats("stream")
                await asyncio.sleep(3)
                times, size = await _list_latency(stub, key)
                result.update(list_p50_ms=_ms(times, 0.5), list_p99_ms=_ms(times, 0.99), list_bytes=size)
                print(f"  ListDeployments p50 {_ms(times, 0.5):.1f} ms, p99 {_ms(times, 0.99):.1f} ms, {size} B")
                watch_channels = [
                    grpc.aio.insecure_channel(control.address, options=list(CHANNEL_OPTIONS))
                    for _ in range(min(args.watchers, 16))
                ]
                watchers = [
                    Watcher(watch_channels[i % len(watch_channels)], endpoint_id, key, not args.whole_watch)
                    for i in range(args.watchers)
                ]
                deadline = time.monotonic() + 120
                while any(not w.arrivals for w in watchers) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(2)
                result["cpu_watchers_idle"] = await cpu_share(control.process.pid, args.window)
                print(f"  CPU with {args.watchers} idle watchers: {result['cpu_watchers_idle']:.1%} ({load()})")
                before = cpu_seconds(control.process.pid)
                flip_started = time.monotonic()
                latencies, missing = await _flips(stub, watchers, workers, args.flips)
                result["cpu_flips"] = (cpu_seconds(control.process.pid) - before) / (time.monotonic() - flip_started)
                result.update(
                    watch_p50_ms=_ms(latencies, 0.5),
                    watch_p99_ms=_ms(latencies, 0.99),
                    watch_max_ms=_ms(latencies, 1.0),
                    watch_missing=missing,
                    load_watch=load(),
                    watch_flip_median_p50_ms=_ms(flip_medians, 0.5),
                    watch_flip_median_max_ms=_ms(flip_medians, 1.0),
                    watch_flips_median_over_100ms=sum(m > 0.1 for m in flip_medians),
                )
                print(
                    f"  watch: p50 {result['watch_p50_ms']:.1f} ms, p99 {result['watch_p99_ms']:.1f} ms, "
                    f"max {result['watch_max_ms']:.1f} ms over {len(latencies)} deliveries, {missing} missing; "
                    f"CPU during flips {result['cpu_flips']:.1%} ({load()})",
                    flush=True,
                )
                print(
                    f"  per flip, median delivery: p50 {result['watch_flip_median_p50_ms']:.1f} ms, "
                    f"slowest {result['watch_flip_median_max_ms']:.1f} ms; "
                    f"{result['watch_flips_median_over_100ms']} of {len(flip_medians)} flips over 100 ms",
                    flush=True,
                )
                await asyncio.gather(*(w.close() for w in watchers))
                await asyncio.gather(*(c.close() for c in watch_channels))
            finally:
                fleet.close()
                await channel.close()
    return result


async def echo_baseline(rate: int, channels: int, window: float, stream: bool = False) -> float:
    """CPU share of a bare grpc.aio echo server taking ``rate`` messages per second.

    ``stream``: each of ``rate`` clients sends one message a second on a bidirectional stream
    of its own and reads the echo (as heartbeats on HeartbeatStream); else one unary call each.
    """
    here = Path(__file__).resolve().parent
    proc = subprocess.Popen(
        [sys.executable, str(here / "echo_server.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=list(CHANNEL_OPTIONS)) for _ in range(channels)]
    rpcs = [
        c.unary_unary(
            "/bench.Echo/Echo",
            request_serializer=worker_pb2.CallData.SerializeToString,
            response_deserializer=worker_pb2.CallData.FromString,
        )
        for c in chans
    ]
    streams = [
        c.stream_stream(
            "/bench.Echo/Beats",
            request_serializer=worker_pb2.CallData.SerializeToString,
            response_deserializer=worker_pb2.CallData.FromString,
        )
        for c in chans
    ]
    # The size of a heartbeat with its worker id, and the same bearer metadata.
    msg = worker_pb2.CallData(call_id=1, data=b"w-0123456789ab")
    metadata = bearer("x" * 43)

    async def beat(i: int) -> None:
        await asyncio.sleep(i / rate)
        if stream:
            call = streams[i % len(streams)](metadata=metadata)
            try:
                while True:
                    await call.write(msg)
                    await call.read()
                    await asyncio.sleep(1.0)
            finally:
                call.cancel()
        while True:
            await rpcs[i % len(rpcs)](msg, metadata=metadata)
            await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(beat(i)) for i in range(rate)]
    try:
        await asyncio.sleep(3)
        return await cpu_share(proc.pid, window)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in chans))
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


async def main(args: argparse.Namespace) -> dict[str, object]:
    print(f"control plane at scale — {machine()} — {load()}", flush=True)
    results: dict[str, object] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "runs": []}
    for count in (int(x) for x in args.workers.split(",")):
        print(f"{count} simulated workers:", flush=True)
        results["runs"].append(await run_scale(count, args))  # type: ignore[union-attr]
        base = await echo_baseline(count, args.channels, args.window)
        results["runs"][-1]["cpu_echo_baseline"] = base  # type: ignore[index]
        print(f"  baseline, bare grpc.aio echo at {count} calls/s: {base:.1%} of a core ({load()})", flush=True)
        base = await echo_baseline(count, args.channels, args.window, stream=True)
        results["runs"][-1]["cpu_echo_stream_baseline"] = base  # type: ignore[index]
        print(f"  baseline, the same on {count} bidi streams: {base:.1%} of a core ({load()})", flush=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1000", help="worker counts, comma-separated (default 1000)")
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--flips", type=int, default=60)
    parser.add_argument("--window", type=float, default=10.0, help="seconds of each CPU measurement")
    parser.add_argument("--channels", type=int, default=16, help="channels the simulated workers share")
    parser.add_argument("--no-balancer", action="store_true", help="skip the balancer's pick curve")
    parser.add_argument(
        "--whole-watch", action="store_true", help="watchers ask for whole updates, not deltas (as older clients do)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args()
    figures = asyncio.run(main(arguments))
    if not arguments.no_balancer:
        from balancer_pick import curve

        figures["balancer"] = curve()
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=2))
