"""vastrpc.testing: a deployment served in-process, through the real Invoke path, with no subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vastrpc import ContextError, Deployment, DeploymentError, get_context
from vastrpc.testing import serve_locally

ROOT = Path(__file__).resolve().parent.parent

app = Deployment(name="in_process")


@app.context
class Greeting:
    async def __aenter__(self):  # type: ignore[no-untyped-def]
        self.word = "hello"
        self.exited = False
        return self

    async def __aexit__(self, *exc):  # type: ignore[no-untyped-def]
        self.exited = True


@app.remote(benchmark_dataset=[{"name": "x"}])
async def greet(name: str) -> str:
    return f"{get_context(Greeting).word} {name}"


@app.remote
async def fail() -> None:
    raise LookupError("not here")


@app.remote
async def count(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield i


async def test_functions_run_through_invoke_with_contexts_and_errors() -> None:
    async with serve_locally(app):
        assert await greet("world") == "hello world"
        info = await greet.call_with_info("there")
        assert info.worker_id == "local" and info.value == "hello there"
        with pytest.raises(LookupError, match="not here") as caught:
            await fail()
        assert "raise LookupError" in caught.value.__cause__.tb  # the remote traceback, as from a worker
        assert [v async for v in count.stream(3)] == [0, 1, 2]
        assert (await app.ensure_ready()).description.startswith("served in-process")
        greeting = get_context(Greeting)
    assert greeting.exited  # contexts are exited after the block
    with pytest.raises(ContextError):
        get_context(Greeting)


async def test_a_failing_benchmark_fails_like_on_a_worker() -> None:
    broken = Deployment(name="broken_in_process")

    @broken.remote(benchmark_dataset=[{}])
    async def nope() -> None:
        raise RuntimeError("benchmark input rejected")

    with pytest.raises(DeploymentError, match="benchmark input rejected"):
        async with serve_locally(broken):
            pass


def test_the_documented_example_test_passes() -> None:
    """examples/quickstart/test_deploy.py, run by pytest as a user runs it (no subprocess of vastrpc's own)."""
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_deploy.py"],
        cwd=ROOT / "examples" / "quickstart",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
