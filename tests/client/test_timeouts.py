"""A call's timeout bounds it on every path (no ready worker, a silent worker, a dead one); no asyncio warnings."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import time
from asyncio.subprocess import PIPE
from typing import Any

import pytest

from vastrpc import CallTimeoutError, WorkerUnavailableError
from vastrpc.client.connection import WorkerConnection, _Pending
from vastrpc.client.router import Router

pytestmark = pytest.mark.timeout(60)


def _catch(seen: list[dict[str, Any]]) -> None:
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: seen.append(context))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_no_ready_worker_fails_within_the_calls_timeout_saying_so() -> None:
    router = Router(None, "e-none", workers=[])
    try:
        started = time.monotonic()
        with pytest.raises(
            WorkerUnavailableError, match=r"no ready worker on endpoint e-none within the call's timeout"
        ):
            await router.call("f", (), {}, timeout=0.5)
        assert 0.45 <= time.monotonic() - started < 1.0
    finally:
        await router.close()


async def test_a_worker_that_accepts_but_never_answers_cannot_hold_a_call_past_its_timeout() -> None:
    # A socket that accepts connections and never speaks: the stream never opens.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    router = Router(None, "e-silent", workers=[WorkerConnection("w-silent", address, "token", 100.0, 1)])
    try:
        for retries in (0, 3):
            started = time.monotonic()
            with pytest.raises(
                CallTimeoutError, match="did not finish within its timeout on worker w-silent, which did not take it"
            ):
                await router.call("f", (), {}, timeout=1.0, retries=retries)
            assert time.monotonic() - started < 1.5
    finally:
        await router.close()
        silent.close()


_DEAD_WORKER_PROGRAM = """
import asyncio, gc, socket, sys, time
from vastrpc import CallTimeoutError, WorkerUnavailableError
from vastrpc.client.connection import WorkerConnection
from vastrpc.client.router import Router

async def main():
    seen = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: seen.append(context))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % sock.getsockname()[1]
    router = Router(None, "e-dead", workers=[WorkerConnection("w-dead", address, "token", 100.0, 1)])
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(router.call("f", (i,), {}, timeout=1.0) for i in range(40)), return_exceptions=True
        )
        took = time.monotonic() - started
    finally:
        await router.close()
    assert all(isinstance(o, WorkerUnavailableError | CallTimeoutError) for o in outcomes), outcomes
    assert took < 1.5, took
    # The never-delivered calls say what happened and that calling again is safe.
    messages = {str(o) for o in outcomes if isinstance(o, WorkerUnavailableError)}
    assert all("never ran" in m and "safe to call again" in m for m in messages), messages
    del outcomes
    gc.collect()
    await asyncio.sleep(0.1)
    assert not seen, [c.get("message") for c in seen]
    print("ok")

asyncio.run(main())
"""


async def test_calls_to_a_dead_worker_fail_within_their_timeout_and_leave_no_asyncio_warning() -> None:
    # A program of its own, with one event loop as a user's program has: in this process gRPC
    # may still deliver late events of earlier tests to their closed loops, which is not ours.
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", _DEAD_WORKER_PROGRAM, stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 45)
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "ok"
    # Nothing on stderr: no "Future exception was never retrieved", no asyncio warning.
    assert not err.strip(), err.decode()


async def test_a_call_failed_by_its_dying_stream_before_awaiting_its_answer_warns_nothing() -> None:
    # The race behind "Future exception was never retrieved": the stream dies (failing every
    # pending call) while a call is still being written, so that call raises from the write and
    # never awaits its answer.
    seen: list[dict[str, Any]] = []
    _catch(seen)
    pending = _Pending(streaming=False)
    pending.fail(WorkerUnavailableError("worker w-1 closed the stream during the call"))
    assert pending.future is not None and pending.future.done()
    del pending
    gc.collect()
    await asyncio.sleep(0)
    assert not seen, [c.get("message") for c in seen]


async def test_an_endpoint_waiting_for_capacity_fails_calls_at_once_with_the_reason_unless_a_worker_comes_up() -> None:
    from vastrpc.api.v1 import common_pb2, control_pb2

    router = Router(None, "e-lost", workers=[])
    router.state = control_pb2.WatchEndpointResponse(
        endpoint_id="e-lost",
        state=common_pb2.ENDPOINT_STATE_WAITING,
        failure=common_pb2.Failure(step="placement", message="no node meets gpu_name == 'H200'"),
    )
    try:
        started = time.monotonic()
        with pytest.raises(WorkerUnavailableError, match=r"waits for capacity \(placement: no node meets gpu_name"):
            await router.call("f", (), {}, timeout=30)
        assert time.monotonic() - started < 0.5  # not at the timeout
        # A replacement on its way is waited for (within the call's timeout), not failed at once.
        router.state.workers.add(worker_id="w-new", state=common_pb2.WORKER_STATE_INSTALLING)
        with pytest.raises(WorkerUnavailableError, match="no ready worker on endpoint e-lost within the call's"):
            await router.call("f", (), {}, timeout=0.5)
    finally:
        await router.close()
