"""A function's prints and logging stream to a caller that asks for them, and always reach the worker's log."""

from __future__ import annotations

import asyncio
import time

import pytest

from vastrpc import RemoteOutput

pytestmark = pytest.mark.e2e

SOURCE = """
import asyncio
import logging
import sys
from vastrpc import Deployment

app = Deployment(name="{name}")
log = logging.getLogger("user.code")

@app.remote
async def chatty(tag: str) -> str:
    print(f"first {{tag}}")
    log.warning("logged %s", tag)
    print("partial ", end="", flush=True)
    await asyncio.sleep(0.05)
    print(f"line {{tag}}")
    await asyncio.to_thread(print, f"from a thread {{tag}}")
    print(f"no newline at the end {{tag}}", end="")
    return tag

@app.remote(benchmark_dataset=[{{"n": 1}}])
async def ticks(n: int):
    for i in range(n):
        print(f"tick {{i}}")
        yield i
        await asyncio.sleep(0.3)

@app.remote
async def fails() -> None:
    print("about to fail")
    raise ValueError("nope")
"""


def _text(output: RemoteOutput) -> str:
    """The line as the function wrote it: logging on the worker prefixes "<time> serve WARNING "."""
    return output.line.split(" WARNING ", 1)[-1] if output.stream == "stderr" else output.line


@pytest.fixture
async def mod(project):
    module = project(SOURCE)
    await module.app.ensure_ready()
    return module


async def test_prints_and_logging_reach_the_caller_in_order_and_the_worker_log(mod, project) -> None:
    got: list[RemoteOutput] = []
    info = await mod.chatty.with_options(logs=got.append).call_with_info("a")
    assert info.value == "a"
    assert [(o.stream, _text(o)) for o in got] == [
        ("stdout", "first a"),
        ("stderr", "logged a"),
        ("stdout", "partial line a"),
        ("stdout", "from a thread a"),
        ("stdout", "no newline at the end a"),
    ]
    assert {(o.function, o.worker_id) for o in got} == {("chatty", info.worker_id)}

    # Without logs=, the caller gets nothing; the worker's log has every call's output.
    quiet: list[RemoteOutput] = []
    assert await mod.chatty("b") == "b"
    assert quiet == []
    text = await project.logs(info.worker_id)
    for line in ("first a", "partial line a", "from a thread a", "first b", "logged b"):
        assert line in text


async def test_concurrent_calls_get_only_their_own_output(mod) -> None:
    outputs: dict[str, list[str]] = {tag: [] for tag in "xyz"}

    async def one(tag: str) -> None:
        await mod.chatty.with_options(logs=lambda o: outputs[tag].append(_text(o)))(tag)

    await asyncio.gather(*(one(tag) for tag in outputs))
    for tag, lines in outputs.items():
        assert lines == [
            f"first {tag}",
            f"logged {tag}",
            f"partial line {tag}",
            f"from a thread {tag}",
            f"no newline at the end {tag}",
        ]


async def test_a_generators_output_arrives_before_each_value(mod) -> None:
    seen: list[tuple[str, float]] = []
    started = time.monotonic()
    async for value in mod.ticks.with_options(logs=lambda o: seen.append((o.line, time.monotonic()))).stream(3):
        # The print that preceded this value has arrived already.
        assert seen[-1][0] == f"tick {value}"
    assert [line for line, _ in seen] == ["tick 0", "tick 1", "tick 2"]
    assert seen[0][1] - started < seen[2][1] - started - 0.4  # streamed as produced, not at the end


async def test_output_of_a_failing_call_arrives_before_its_error(mod) -> None:
    got: list[str] = []
    with pytest.raises(ValueError, match="nope"):
        await mod.fails.with_options(logs=lambda o: got.append(o.line))()
    assert got == ["about to fail"]


async def test_logs_true_prints_on_the_callers_stderr(mod, capsys) -> None:
    await mod.chatty.with_options(logs=True)("c")
    err = capsys.readouterr().err
    assert "] first c\n" in err and "[chatty " in err
