"""Unit tests of the per-call output capture (vastrpc/serve/output.py)."""

from __future__ import annotations

import asyncio
import sys
import threading

from vastrpc.serve.output import MAX_PENDING, STDERR, STDOUT, CallOutput, capture_output, capturing_call


async def _collect() -> tuple[CallOutput, list[tuple[int, str]]]:
    sent: list[tuple[int, str]] = []

    async def send(stream: int, text: str) -> None:
        sent.append((stream, text))

    return CallOutput(send), sent


async def test_only_the_capturing_context_is_sent_and_output_still_reaches_the_real_stream(capsys) -> None:
    output, sent = await _collect()
    with capture_output():

        async def call() -> None:
            with capturing_call(output):
                print("mine")
                await asyncio.to_thread(print, "threaded", file=sys.stderr)

        async def other() -> None:
            print("not mine")

        await asyncio.gather(call(), other())
        await output.close()
        print("after")
    assert sent == [(STDOUT, "mine\n"), (STDERR, "threaded\n")]
    captured = capsys.readouterr()
    assert "mine\n" in captured.out and "not mine\n" in captured.out and "after\n" in captured.out
    assert "threaded\n" in captured.err


async def test_output_beyond_the_bound_is_dropped_with_a_note() -> None:
    output, sent = await _collect()
    chunk = "x" * 4096
    for _ in range(2 * MAX_PENDING // len(chunk)):
        output.write(STDOUT, chunk)
    await output.close()
    kept = sum(len(text) for stream, text in sent if stream == STDOUT)
    assert kept == MAX_PENDING
    assert sent[-1][0] == STDERR and f"{MAX_PENDING} characters of output dropped" in sent[-1][1]


async def test_writes_after_close_are_ignored() -> None:
    output, sent = await _collect()
    output.write(STDOUT, "before\n")
    await output.close()
    thread = threading.Thread(target=output.write, args=(STDOUT, "late\n"))
    thread.start()
    thread.join()
    output.write(STDOUT, "late too\n")
    await asyncio.sleep(0.05)
    assert sent == [(STDOUT, "before\n")]
