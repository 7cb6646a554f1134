"""Overload benchmark: 20,000 calls started at once against two workers of max_concurrency=128 (Vast's global queue).

Run: ``python bench/overload.py`` (about a minute on 2 vCPUs). Starts its own control service on
a temporary home, deploys a function that sleeps 50 ms on two workers (``min_workers=2``,
``max_workers=2``, ``max_concurrency=128``, the default ``max_queue`` of 1,000), starts every
call at once with a 300 s timeout and reports calls made, calls failed (by exception type) and
the wall time. Before the client-side queue, such a run ended with OverloadedErrors (88 in the
issue's run): calls beyond what the workers queue were refused and retried until they gave up;
now they wait in the client for room. ``--calls``, ``--concurrency`` and ``--json FILE`` change
the run and keep the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import control_service, load_module, machine

SOURCE = """
import asyncio
from vastrpc import Deployment

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers=2, max_workers=2)

@app.remote(benchmark_dataset=[{{"seconds": 0}}], max_concurrency={concurrency})
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds
"""


async def run(calls: int, concurrency: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="vastrpc-overload-") as tmp:
        home = Path(tmp)
        async with control_service(home / "home") as control:
            name = f"overload_{uuid.uuid4().hex[:6]}"
            folder = home / "project"
            folder.mkdir()
            mod = load_module(folder, name, SOURCE.format(name=name, concurrency=concurrency))
            mod.app._config = control.config
            try:
                deployed = await mod.app.ensure_ready()
                fn = mod.nap.with_options(timeout=300)
                started = time.perf_counter()
                results = await asyncio.gather(*(fn(0.05) for _ in range(calls)), return_exceptions=True)
                wall = time.perf_counter() - started
            finally:
                await mod.app.close()
    failed = collections.Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
    return {
        "calls": calls,
        "workers_ready": deployed.ready_workers,
        "max_concurrency": concurrency,
        "failed": sum(failed.values()),
        "failed_by_type": dict(failed),
        "wall_seconds": round(wall, 2),
        "calls_per_second": round(calls / wall, 1),
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128, help="max_concurrency of the function")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    figures = asyncio.run(run(args.calls, args.concurrency))
    print("| calls | workers × max_concurrency | failed | wall time | calls/s |")
    print("|---|---|---|---|---|")
    print(
        f"| {figures['calls']:,} | {figures['workers_ready']} × {figures['max_concurrency']} | {figures['failed']} "
        f"{figures['failed_by_type'] or ''} | {figures['wall_seconds']} s | {figures['calls_per_second']} |"
    )
    print(f"machine: {figures['machine']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
