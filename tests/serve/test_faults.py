"""Faults injected for real: killed and terminated workers, garbage on the wire, bad pickles."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from vastrpc import SerializationError, WorkerUnavailableError
from vastrpc._grpc import bearer
from vastrpc.api.v1 import common_pb2, worker_pb2, worker_pb2_grpc

pytestmark = pytest.mark.e2e

SOURCE = """
import asyncio, os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").env(RUNS={runs!r})
app.configure_autoscaling(min_workers={workers}, max_workers={workers})

def record(tag):
    with open(os.path.join(os.environ["RUNS"], tag), "a") as f:
        f.write(f"{{os.getpid()}}\\n")

@app.remote(benchmark_dataset=[{{}}], retries=2)
async def ping() -> int:
    return os.getpid()

@app.remote
async def once(tag: str, seconds: float) -> int:
    record(tag)
    await asyncio.sleep(seconds)
    return os.getpid()

@app.remote(retries=3)
async def idempotent(tag: str, seconds: float) -> int:
    record(tag)
    await asyncio.sleep(seconds)
    return os.getpid()

@app.remote
async def unpicklable_result():
    import threading
    return {{"lock": threading.Lock()}}

@app.remote
async def echo(value):
    return value

@app.remote(max_argument_bytes=100_000)
async def small(value) -> int:
    return len(value)
"""


def make(project, tmp_path: Path, workers: int = 2):  # type: ignore[no-untyped-def]
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    return project(SOURCE.replace("{runs!r}", repr(str(runs))).replace("{workers}", str(workers))), runs


async def _pids_running(runs: Path, tag: str, count: int = 1) -> list[int]:
    for _ in range(1000):
        if (runs / tag).exists() and len(pids := (runs / tag).read_text().split()) >= count:
            return [int(p) for p in pids]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{tag} never ran")


async def test_killed_worker_fails_a_plain_call_promptly_and_never_reruns_it(project, tmp_path) -> None:
    mod, runs = make(project, tmp_path)
    await mod.app.ensure_ready()
    call = asyncio.create_task(mod.once("plain", 30))
    (pid,) = await _pids_running(runs, "plain")
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerUnavailableError):
        await call
    assert time.monotonic() - killed < 5
    await asyncio.sleep(0.5)
    assert (runs / "plain").read_text().split() == [str(pid)]  # ran exactly once
    assert isinstance(await mod.ping(), int)  # the other worker serves


async def test_killed_worker_retries_an_idempotent_call_on_another_worker(project, tmp_path) -> None:
    mod, runs = make(project, tmp_path)
    await mod.app.ensure_ready()
    call = asyncio.create_task(mod.idempotent("retry", 1.0))
    (pid,) = await _pids_running(runs, "retry")
    os.kill(pid, signal.SIGKILL)
    served_by = await call
    executions = [int(p) for p in (runs / "retry").read_text().split()]
    assert executions[0] == pid and served_by != pid and executions[-1] == served_by
    assert len(executions) == 2


@pytest.mark.timeout(90)
async def test_frozen_worker_is_detected_its_call_fails_and_it_is_replaced(project, tmp_path) -> None:
    mod, runs = make(project, tmp_path)
    await mod.app.ensure_ready()
    call = asyncio.create_task(mod.once("frozen", 60))
    (serving_pid,) = await _pids_running(runs, "frozen")
    frozen = next(w for w in await project.workers(mod.app) if w["pid"] == os.getpgid(serving_pid))
    os.killpg(frozen["pid"], signal.SIGSTOP)  # the agent and its serving process
    stopped_at = time.monotonic()
    try:
        # Calls meanwhile never hang past detection: these are idempotent, so one that went to
        # the frozen worker is retried on the other once the worker is declared lost.
        pings = await asyncio.wait_for(asyncio.gather(*(mod.ping() for _ in range(4))), 40)
        assert all(isinstance(p, int) and p != serving_pid for p in pings)
        with pytest.raises(WorkerUnavailableError):
            await asyncio.wait_for(call, 40)  # the plain call in flight fails, and is not re-run
        detected = time.monotonic() - stopped_at
        assert detected < 30
        for _ in range(300):
            workers = await project.workers(mod.app)
            states = {w["worker_id"]: w["state"] for w in workers}
            if states.get(frozen["worker_id"]) == "FAILED" and list(states.values()).count("READY") == 2:
                break
            await asyncio.sleep(0.1)
        assert states[frozen["worker_id"]] == "FAILED" and list(states.values()).count("READY") == 2, states
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(frozen["pid"], signal.SIGCONT)
    assert (runs / "frozen").read_text().split() == [str(serving_pid)]  # never run twice


async def test_sigterm_drains_calls_in_flight_and_exits_contexts(project, tmp_path) -> None:
    mod, runs = make(project, tmp_path, workers=1)
    await mod.app.ensure_ready()
    (worker,) = await project.workers(mod.app)
    call = asyncio.create_task(mod.once("drain", 1.0))
    (serving_pid,) = await _pids_running(runs, "drain")
    os.kill(worker["pid"], signal.SIGTERM)  # the agent: it drains its serving process
    assert await call == serving_pid  # the call in flight finished
    for _ in range(100):
        try:
            os.kill(serving_pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the serving process did not exit after draining")
    log = await project.logs(worker["worker_id"])
    assert "stopping: draining" in log


async def test_garbage_frames_and_bad_pickles_get_clear_errors_and_the_worker_stays_healthy(project, tmp_path) -> None:
    mod, _ = make(project, tmp_path, workers=1)
    await mod.app.ensure_ready()
    (worker,) = await project.workers(mod.app)
    token = await project.endpoint_token(mod.app)
    async with grpc.aio.insecure_channel(worker["address"]) as channel:
        # Bytes that are no InvokeRequest at all.
        raw = channel.stream_stream("/vastrpc.api.v1.WorkerService/Invoke")
        call = raw(metadata=bearer(token))
        with contextlib.suppress(grpc.aio.AioRpcError):  # the worker may end the stream before the write returns
            await call.write(b"\xff\xfe garbage \x00\x01")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INTERNAL, info.value
        assert "not a valid vastrpc.api.v1.InvokeRequest" in info.value.details()
        # The same for a unary method: parsed before any handler runs.
        info_call = channel.unary_unary("/vastrpc.api.v1.WorkerService/GetWorkerInfo")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await info_call(b"\xff\xfe garbage \x00\x01", metadata=bearer(token), timeout=5)
        assert info.value.code() == grpc.StatusCode.INTERNAL, info.value

        # A well-formed call whose arguments are not a pickle.
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        call = stub.Invoke(metadata=bearer(token))
        await call.write(
            worker_pb2.InvokeRequest(
                start=worker_pb2.CallStart(
                    call_id=7, function="echo", encoding=common_pb2.ENCODING_CLOUDPICKLE, data=b"not a pickle"
                )
            )
        )
        response = await call.read()
        assert response.error.kind == worker_pb2.ERROR_KIND_BAD_ARGUMENTS
        assert "cannot decode the call's arguments" in response.error.message
        call.cancel()

    for size in (200_000, 3_000_000):  # one chunk, and several: refused before anything is decoded
        with pytest.raises(SerializationError, match="over its limit of 100000 bytes"):
            await mod.small(b"x" * size)
    assert await mod.small(b"x" * 10) == 10

    with pytest.raises(SerializationError, match="cannot pickle the result"):
        await mod.unpicklable_result()
    assert await mod.echo({"still": "serving"}) == {"still": "serving"}
