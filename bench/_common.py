"""Helpers the benchmarks share: timing loops, a control service and the echo baselines as subprocesses, modules."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from vastrpc.api.v1 import worker_pb2
from vastrpc.config import ClientConfig

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

Call = Callable[[], Awaitable[Any]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(call: Call, n: int, warmup: int = 200) -> list[float]:
    """Seconds per call, ``n`` sequential calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        await call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t)
    return out


async def throughput(call: Call, n: int, in_flight: int = 64, warmup: int = 500) -> float:
    """Calls per second for ``n`` calls with ``in_flight`` of them outstanding at any time (closed loop)."""
    semaphore = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with semaphore:
            await call()

    await asyncio.gather(*(one() for _ in range(warmup)))
    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t)


def load_module(folder: Path, name: str, source: str) -> types.ModuleType:
    """Write ``source`` to ``folder/name.py`` and import it as a deployment module."""
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Control:
    """A control service process on a temporary home."""

    process: subprocess.Popen[bytes]
    home: Path
    config: ClientConfig

    @property
    def address(self) -> str:
        assert self.config.control_address
        return self.config.control_address


@contextlib.asynccontextmanager
async def control_service(home: Path, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[Control]:
    """``python -m vastrpc control serve --home HOME ARGS``; stopped (with its workers) on exit.

    ``env`` changes its environment, which the workers it starts inherit: ``KEY=""`` removes KEY.
    """
    home.mkdir(parents=True, exist_ok=True)
    environ = dict(os.environ)
    for key, value in (env or {}).items():
        if value:
            environ[key] = value
        else:
            environ.pop(key, None)
    with (home / "control.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(home), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=environ,
        )
    try:
        for _ in range(400):
            if (home / "control.json").exists() and (home / "api_key").exists():
                break
            if process.poll() is not None:
                raise RuntimeError(f"the control service exited: see {home / 'control.log'}")
            await asyncio.sleep(0.05)
        info = json.loads((home / "control.json").read_text())
        config = ClientConfig(
            control_address=info["address"], api_key=(home / "api_key").read_text().strip(), home=home
        )
        yield Control(process, home, config)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def echo_server() -> Iterator[str]:
    """bench/echo_server.py in its own process (unary echo and a streaming echo); yields its address."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "echo_server.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def echo_call(channel: grpc.aio.Channel) -> Call:
    """The bare baseline: one unary call to bench/echo_server.py on ``channel``, carrying a no-op's argument."""
    rpc = channel.unary_unary(
        "/bench.Echo/Echo",
        request_serializer=worker_pb2.CallData.SerializeToString,
        response_deserializer=worker_pb2.CallData.FromString,
    )
    msg = worker_pb2.CallData(call_id=1, data=b"\x80\x05K\x01.")  # pickle of 1, the no-op's argument

    async def bare() -> None:
        await rpc(msg)

    return bare


def raw_echo_call(channel: grpc.aio.Channel) -> Call:
    """The second bare baseline: one unary call of raw bytes (generic handler, no protobuf) to bench/echo_server.py."""
    rpc = channel.unary_unary("/bench.Echo/Raw")
    data = b"\x80\x05K\x01."  # pickle of 1, the no-op's argument

    async def bare_raw() -> None:
        await rpc(data)

    return bare_raw


def machine() -> str:
    """CPU count, Python and library versions: no host name, no paths."""
    parts = [platform.machine(), f"{os.cpu_count()} CPUs", f"Python {platform.python_version()}"]
    parts.append(f"grpcio {grpc.__version__}")
    try:
        from importlib.metadata import version

        parts.append(f"ray {version('ray')}")
    except Exception:  # ray is optional: only the Ray Serve comparison needs it
        pass
    return ", ".join(parts)


def median(values: list[float]) -> float:
    return statistics.median(values)
