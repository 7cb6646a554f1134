"""End to end: what a worker process does with a deployment — installs, scripts, calls, logs, auth."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import time
import traceback

import grpc
import numpy as np
import pytest

from vastrpc import DeploymentError, FunctionNotFoundError, RemoteError, RemoteFunction, RemoteTraceback
from vastrpc._grpc import BATCH_METADATA, bearer
from vastrpc.api.v1 import common_pb2, worker_pb2, worker_pb2_grpc

pytestmark = pytest.mark.e2e

CALLS = """
import dataclasses, os
import numpy as np
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").env(GREETING="hello").secrets(API_TOKEN="s3cr3t-value")

@dataclasses.dataclass
class Point:
    x: float
    y: float

class Unpicklable(Exception):
    def __init__(self, a, b):
        super().__init__(f"{{a}}/{{b}}")

@app.remote(benchmark_dataset=[{{"v": 1}}])
async def echo(v):
    return v

@app.remote
async def total(arr: np.ndarray) -> float:
    return float(arr.sum())

@app.remote
async def shift(p: Point, dx: float) -> Point:
    return Point(p.x + dx, p.y)

@app.remote
async def apply(fn, value):
    return fn(value)

@app.remote
async def fail(message: str):
    raise KeyError(message)

@app.remote
async def fail_odd():
    raise Unpicklable(1, 2)

@app.remote
async def shout(text: str) -> str:
    print(f"printed on the worker: {{text}}", flush=True)
    return text.upper()

@app.remote
async def environment() -> dict:
    return {{"GREETING": os.environ.get("GREETING"), "API_TOKEN": os.environ.get("API_TOKEN")}}
"""


@pytest.fixture
async def calls(project):
    mod = project(CALLS)
    await mod.app.ensure_ready()
    return mod


async def test_arguments_and_results_roundtrip_with_cloudpickle(calls) -> None:
    arr = np.arange(10_000, dtype=np.float64)
    assert await calls.total(arr) == float(arr.sum())
    big = np.ones((1024, 1024, 3))  # 24 MiB: many chunks each way
    assert np.array_equal(await calls.echo(big), big)
    p = await calls.shift(calls.Point(1.0, 2.0), 0.5)
    assert (p.x, p.y) == (1.5, 2.0)
    offset = 7
    assert await calls.apply(lambda v: v + offset, 1) == 8  # a closure travels by value
    assert await calls.echo(None) is None


async def test_remote_exception_reraised_with_type_message_and_traceback(calls) -> None:
    with pytest.raises(KeyError, match="missing-key") as info:
        await calls.fail("missing-key")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in fail" in cause.tb and "raise KeyError(message)" in cause.tb
    # The remote traceback shows once (as the cause), starting at the user's code, not vastrpc's.
    assert not getattr(info.value, "__notes__", None)
    assert "vastrpc/serve" not in cause.tb
    printed = "".join(traceback.format_exception(info.value))
    assert printed.count("raise KeyError(message)") == 1
    # Nor does the caller's side list the router's frames.
    assert "vastrpc/client" not in printed


async def test_exception_that_cannot_be_rebuilt_becomes_remote_error(calls) -> None:
    with pytest.raises(RemoteError, match="Unpicklable: 1/2") as info:
        await calls.fail_odd()
    assert "raise Unpicklable(1, 2)" in info.value.remote_traceback


async def test_prints_land_in_the_worker_log(calls, project) -> None:
    assert await calls.shout("quiet") == "QUIET"
    (worker,) = await project.workers(calls.app)
    text = await project.logs(worker["worker_id"])
    assert "printed on the worker: quiet" in text
    assert "s3cr3t-value" not in text


async def test_env_vars_and_secrets_reach_the_function(calls) -> None:
    assert await calls.environment() == {"GREETING": "hello", "API_TOKEN": "s3cr3t-value"}


async def test_unknown_function_is_a_clear_error(calls) -> None:
    with pytest.raises(FunctionNotFoundError, match="no function 'nope'.*it serves: "):
        # A function the worker does not have, as when the client's code is newer than the deployment.
        known = calls.environment
        await RemoteFunction(calls.app._handle, known.fn, dataclasses.replace(known.options, name="nope"))()


async def test_worker_refuses_calls_without_the_endpoint_token_before_unpickling(calls, project, tmp_path) -> None:
    (worker,) = await project.workers(calls.app)
    other = project(SQUARE_MIN)
    await other.app.ensure_ready()
    other_token = await project.endpoint_token(other.app)
    assert other_token and other_token != await project.endpoint_token(calls.app)
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):  # unpickling this would create the marker file
            return (os.system, (f"touch {marker}",))

    data = pickle.dumps(((Payload(),), {}))
    request = worker_pb2.InvokeRequest(
        start=worker_pb2.CallStart(call_id=1, function="echo", encoding=common_pb2.ENCODING_CLOUDPICKLE, data=data)
    )
    async with grpc.aio.insecure_channel(worker["address"]) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        for metadata in [(), bearer("wrong-token"), bearer(other_token)]:
            call = stub.Invoke(metadata=metadata)
            # The worker may refuse the stream before the write completes; either way the call
            # ends UNAUTHENTICATED.
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call.write(request)
            with pytest.raises(grpc.aio.AioRpcError):
                await call.read()
            assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not marker.exists()
    assert await calls.echo(3) == 3  # and the worker still serves


async def test_json_encoded_calls_for_callers_without_python(calls, project) -> None:
    (worker,) = await project.workers(calls.app)
    token = await project.endpoint_token(calls.app)
    async with grpc.aio.insecure_channel(worker["address"]) as channel:
        call = worker_pb2_grpc.WorkerServiceStub(channel).Invoke(metadata=bearer(token))
        for call_id, args in ((1, b'{"args": [{"a": [1, 2]}]}'), (2, b'{"kwargs": {"message": "nope"}}')):
            function = "echo" if call_id == 1 else "fail"
            await call.write(
                worker_pb2.InvokeRequest(
                    start=worker_pb2.CallStart(
                        call_id=call_id, function=function, encoding=common_pb2.ENCODING_JSON, data=args
                    )
                )
            )
            response = await call.read()
            if call_id == 1:
                assert response.result.encoding == common_pb2.ENCODING_JSON
                assert json.loads(response.result.data) == {"a": [1, 2]} and response.result.done
            else:
                assert response.error.kind == worker_pb2.ERROR_KIND_APPLICATION
                assert response.error.type == "KeyError" and "nope" in response.error.message
        call.cancel()


async def test_batched_calls_are_answered_each_and_batches_go_only_to_clients_that_ask(calls, project) -> None:
    (worker,) = await project.workers(calls.app)
    token = await project.endpoint_token(calls.app)

    def start(call_id: int) -> dict[str, object]:
        args = json.dumps({"args": [call_id]}).encode()
        return {"call_id": call_id, "function": "echo", "encoding": common_pb2.ENCODING_JSON, "data": args}

    async with grpc.aio.insecure_channel(worker["address"]) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        # A client that reads batches: sends ten calls in one message, gets every answer.
        call = stub.Invoke(metadata=(*bearer(token), BATCH_METADATA))
        assert BATCH_METADATA in tuple(await call.initial_metadata())
        await call.write(worker_pb2.InvokeRequest(batch={"requests": [{"start": start(i)} for i in range(1, 11)]}))
        answers: dict[int, object] = {}
        while len(answers) < 10:
            response = await call.read()
            for one in response.batch.responses if response.WhichOneof("message") == "batch" else [response]:
                answers[one.result.call_id] = json.loads(one.result.data)
        assert answers == {i: i for i in range(1, 11)}
        call.cancel()
        # One that does not say so gets one message per answer, however many calls come at once.
        call = stub.Invoke(metadata=bearer(token))
        for i in range(1, 31):
            await call.write(worker_pb2.InvokeRequest(start=start(i)))
        seen = set()
        for _ in range(30):
            response = await call.read()
            assert response.WhichOneof("message") == "result"
            seen.add(response.result.call_id)
        assert seen == set(range(1, 31))
        call.cancel()


async def test_pip_env_cached_by_requirements_across_workers(project) -> None:
    source = """
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").pip_install("six==1.16.0")

@app.remote(benchmark_dataset=[{{}}])
async def version() -> str:
    import six
    return six.__version__ + " " + six.__file__
"""
    first = project(source)
    v1 = await first.version()
    assert v1.startswith("1.16.0 ") and "/envs/" in v1
    second = project(source)
    v2 = await second.version()
    assert v2 == v1  # the same cached environment
    (worker,) = await project.workers(second.app)
    log = await project.logs(worker["worker_id"])
    assert "pip packages already installed" in log
    assert "installing pip packages" not in log


async def test_startup_script_runs_with_env_and_secrets_and_apt_checked(project) -> None:
    mod = project("""
from pathlib import Path
from vastrpc import Deployment

app = Deployment(name="{name}")
(app.image("python:3.11-slim").apt_get("coreutils").env(STAGE="prod").secrets(KEY="k-123")
    .run_script("echo \\"$STAGE:$KEY\\" > startup.txt").run_cmd("touch", "from cmd.txt"))

@app.remote(benchmark_dataset=[{{}}])
async def read() -> list:
    return [Path("startup.txt").read_text().strip(), Path("from cmd.txt").exists()]
""")
    assert await mod.read() == ["prod:k-123", True]


async def test_missing_apt_package_fails_naming_it(project) -> None:
    mod = project(SQUARE_MIN + '\napp.image("python:3.11-slim").apt_get("vastrpc-no-such-apt-package")\n')
    with pytest.raises(DeploymentError, match="vastrpc-no-such-apt-package") as info:
        await mod.app.ensure_ready()
    assert info.value.step == "install"


async def test_failing_startup_script_fails_the_deployment(project) -> None:
    mod = project(SQUARE_MIN + '\napp.image("python:3.11-slim").run_script("echo about to fail; exit 3")\n')
    with pytest.raises(DeploymentError, match="exit") as info:
        await mod.app.ensure_ready()
    assert info.value.step == "startup"
    assert "about to fail" in info.value.log_tail


async def test_hanging_startup_script_is_bounded_by_its_timeout(project) -> None:
    mod = project(
        SQUARE_MIN + '\napp.image("python:3.11-slim", startup_timeout=1).run_script("echo starting up; sleep 600")\n'
    )
    started = time.monotonic()
    with pytest.raises(DeploymentError, match="timed out") as info:
        await mod.app.ensure_ready()
    assert time.monotonic() - started < 30
    assert info.value.step == "startup"
    assert "starting up" in info.value.log_tail
    assert (await project.endpoint(mod.app))["state"] == "FAILED"


SQUARE_MIN = """
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.remote(benchmark_dataset=[{{}}])
async def f() -> int:
    return 1
"""
