"""Where a warm vastrpc call spends its time: py-spy on the client and on the worker's serving process.

Run: ``python bench/profile_warm.py`` (about a minute; needs ``py-spy``, see bench/requirements.txt).
Deploys a no-op and an echo function to its own control service, then for each phase drives
load from this process while ``py-spy record --nonblocking`` samples both this process and the
worker's serving process (the process clients talk to, a child of the worker agent):

- ``seq``: sequential ``await noop(1)``;
- ``flight``: ``noop(1)`` with 64 calls in flight;
- ``bulk1mb`` / ``bulk100mb``: sequential ``await echo(arr)`` of a 1 MB / 100 MB numpy array.

For each phase and process it prints how busy each thread was (samples / (rate × seconds)) and
the functions with the most samples, on the stack at all (inclusive) and at the top (self).
Raw collapsed stacks stay in ``--out`` (flamegraph.pl or speedscope read them).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import control_service, load_module

from vastrpc.client.control import ControlClient

SOURCE = """
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.remote(benchmark_dataset=[{{"x": 1}}])
async def noop(x):
    return x

@app.remote(benchmark_dataset=[{{"x": 1}}])
async def echo(x):
    return x
"""


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(p) for p in text]
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


# Where a sample's top frame lives, first match wins: (label, substrings of "function (file:line)").
# The worker's gRPC reads and writes are Cython calls without a Python frame of their own: their
# samples land on the vastrpc lines that await them (_Stream.send, the request loop of Invoke).
# Likewise building a protobuf message (upb, in C) lands on the vastrpc line that builds it.
GROUPS = (
    ("gRPC poller thread (C, outside the GIL mostly)", ("Thread.run (",)),
    ("asyncio epoll wait / wake-ups", ("EpollSelector.select",)),
    (
        "gRPC aio read/write (Cython: serialize, hand to the core, await completion)",
        ("grpc/", "_Stream.send (", "WorkerServicer.Invoke ("),
    ),
    ("protobuf messages built by vastrpc (upb, C)", ("_send_value (", "InvokeStream._send (")),
    ("assembling received chunks (vastrpc._payload.assemble)", ("assemble (",)),
    ("vastrpc (Python)", ("vastrpc/",)),
    ("cloudpickle / pickle", ("cloudpickle", "pickle")),
    ("asyncio loop and tasks", ("asyncio/",)),
)


def _group(frame: str) -> str:
    for label, needles in GROUPS:
        if any(n in frame for n in needles):
            return label
    return "other (numpy, contextlib, the bench's own loop)"


def summarize(path: Path, rate: int, seconds: float, top: int) -> str:
    """Busy share per thread, self samples by group, then the top functions (inclusive and self)."""
    per_thread: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        per_thread[thread] += count
        total += count
        if frames:
            self_[_short(frames[-1])] += count
            groups[_group(frames[-1])] += count
            for name in {_short(f) for f in frames}:
                inclusive[name] += count
    lines = ["  threads (busy share of the wall time):"]
    for thread, count in per_thread.most_common():
        lines.append(f"    {count / (rate * seconds):6.1%}  {thread}")
    lines.append(f"  self samples by where the top frame is (share of {total} samples):")
    lines += [f"    {c / total:6.1%}  {n}" for n, c in groups.most_common()]
    lines.append("  inclusive:")
    lines += [f"    {c / total:6.1%}  {n}" for n, c in inclusive.most_common(top)]
    lines.append("  self:")
    lines += [f"    {c / total:6.1%}  {n}" for n, c in self_.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" → "function (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = Path(file).parts
    return f"{name} ({'/'.join(parts[-2:])})" if file else name


async def main_async(opts: argparse.Namespace) -> None:
    import numpy as np

    home = Path(tempfile.mkdtemp(prefix="vastrpc-profile-"))
    folder = home / "project"
    folder.mkdir()
    sys.path.insert(0, str(folder))
    opts.out.mkdir(parents=True, exist_ok=True)
    try:
        async with control_service(home / "home") as control:
            name = "profiled"
            mod = load_module(folder, name, SOURCE.format(name=name))
            mod.app._config = control.config
            await mod.app.ensure_ready()
            client = await ControlClient.connect(control.config)
            listing = await client.list_deployments(name)
            await client.close()
            (agent_pid,) = [w.pid for d in listing.deployments for e in d.endpoints for w in e.workers]
            (serving_pid,) = children(agent_pid)
            arr = np.arange(1_000_000 // 8, dtype=np.float64)
            big = np.arange(100_000_000 // 8, dtype=np.float64)

            async def seq() -> None:
                await mod.noop(1)

            async def flight() -> None:
                await asyncio.gather(*(mod.noop(1) for _ in range(64)))

            async def bulk1mb() -> None:
                await mod.echo(arr)

            async def bulk100mb() -> None:
                await mod.echo(big)

            phases = {"seq": seq, "flight": flight, "bulk1mb": bulk1mb, "bulk100mb": bulk100mb}
            for phase in opts.phases.split(","):
                body = phases[phase]
                for _ in range(200 if phase != "bulk100mb" else 3):
                    await body()
                # Unprofiled first: the rate, and the CPU time each process spends per call (user / system).
                pids = {"client": os.getpid(), "worker": serving_pid}
                before = {who: cpu_seconds(pid) for who, pid in pids.items()}
                t, n = time.perf_counter(), 0
                while time.perf_counter() - t < 3:
                    await body()
                    n += 1
                wall = time.perf_counter() - t
                plain = n / wall
                calls = n * (64 if phase == "flight" else 1)
                cpu_lines = []
                for who, pid in pids.items():
                    user, system = (b - a for a, b in zip(before[who], cpu_seconds(pid), strict=True))
                    cpu_lines.append(
                        f"  {who}: {user / calls * 1e3:.3f} ms user + {system / calls * 1e3:.3f} ms system CPU a call"
                        f" ({(user + system) / wall:.0%} of a core)"
                    )
                spies = {}
                for who, pid in (("client", os.getpid()), ("worker", serving_pid)):
                    out = opts.out / f"{phase}-{who}.txt"
                    argv = ["py-spy", "record", "--pid", str(pid), "--rate", str(opts.rate), "--duration"]
                    argv += [str(opts.seconds), "--format", "raw", "--threads", "--nonblocking", "-o", str(out)]
                    spies[who] = (out, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                t, n = time.perf_counter(), 0
                while time.perf_counter() - t < opts.seconds + 0.5:
                    await body()
                    n += 1
                sampled = n / (time.perf_counter() - t)
                for _, proc in spies.values():
                    await asyncio.to_thread(proc.wait, 60)
                unit = "batches of 64/s" if phase == "flight" else "calls/s"
                print(f"\n## phase {phase}: {plain:,.0f} {unit} unprofiled, {sampled:,.0f} while sampled")
                print("\n".join(cpu_lines))
                for who, (out, _) in spies.items():
                    if out.exists():
                        print(f"\n### {who} ({'this process' if who == 'client' else 'serving process'})")
                        print(summarize(out, opts.rate, opts.seconds, opts.top))
            await mod.app.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="seq,flight,bulk1mb,bulk100mb")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "vastrpc-profile")
    opts = parser.parse_args()
    if shutil.which("py-spy") is None:
        parser.error("py-spy is not installed: pip install -r bench/requirements.txt")
    asyncio.run(main_async(opts))


if __name__ == "__main__":
    main()
