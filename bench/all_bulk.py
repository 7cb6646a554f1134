"""bench/all.py bulk: numpy argument round trips against a raw grpc.aio bidi stream moving the same bytes."""

from __future__ import annotations

import statistics
import textwrap
import time
from typing import Any

import grpc
from _common import echo_server
from all_harness import Bench

MB = 1_000_000
CHUNK = 1 << 20

ECHO = textwrap.dedent(
    """
    from vastrpc import Deployment

    app = Deployment(name="{name}")

    @app.remote(benchmark_dataset=[{{"a": 1}}])
    async def echo(a):
        return a
    """
)


async def bulk(b: Bench) -> None:
    import numpy as np

    mod = b.module("echo", ECHO)
    await mod.app.ensure_ready()
    with echo_server() as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stream = channel.stream_stream("/bench.Echo/Stream")()  # raw bytes both ways

            async def raw(chunks: list[bytes]) -> list[bytes]:
                for chunk in chunks:
                    await stream.write(chunk)
                await stream.write(b"")
                back = []
                while (part := await stream.read()) != b"":
                    back.append(part)
                return back

            async def raw_round_trip(arr: Any) -> None:
                # What a client does to send an array over a raw stream: one copy into 1 MiB messages.
                view = memoryview(arr).cast("B")
                back = await raw([bytes(view[i : i + CHUNK]) for i in range(0, len(view), CHUNK)])
                assert sum(map(len, back)) == len(view)

            for size, reps in ((MB, b.opts.reps_1mb), (100 * MB, b.opts.reps_100mb)):
                arr = np.arange(size // 8, dtype=np.float64)
                out = await mod.echo(arr)  # warm-up, and a check that it is the same array back
                assert isinstance(out, np.ndarray) and np.array_equal(out, arr)
                await raw_round_trip(arr)
                times: dict[str, list[float]] = {"raw": [], "vastrpc": []}
                for r in range(reps):
                    for who in ("raw", "vastrpc") if r % 2 == 0 else ("vastrpc", "raw"):
                        t = time.perf_counter()
                        if who == "raw":
                            await raw_round_trip(arr)
                        else:
                            await mod.echo(arr)
                        times[who].append(time.perf_counter() - t)
                label = f"{size // MB}mb"
                pairs = [raw_t / ours_t for raw_t, ours_t in zip(times["raw"], times["vastrpc"], strict=True)]
                b.results[f"bulk_{label}_ratio"] = statistics.median(pairs)
                for who, values in times.items():
                    med = statistics.median(values)
                    b.results[f"bulk_{label}_{who}_s"] = med
                    b.results[f"bulk_{label}_{who}_mbps"] = 2 * size / med / MB
                b.log(f"bulk {label} done")
            stream.cancel()
    await b.teardown(mod.app)
