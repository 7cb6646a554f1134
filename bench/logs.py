"""What streaming a call's output to the caller costs: warm calls of a printing function with and without ``logs=``.

Run: ``python bench/logs.py`` (under a minute). One worker; sequential calls; every figure is a
ratio against a no-op function measured in the same run. ``speak`` prints one line per call,
which always goes to the worker's log; ``logs=`` additionally sends it to the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import textwrap
import uuid
from pathlib import Path

from _common import control_service, latency, load_module, machine, percentile

SOURCE = textwrap.dedent(
    """
    from vastrpc import Deployment

    app = Deployment(name="{name}")

    @app.remote(benchmark_dataset=[{{"x": 1}}])
    async def noop(x):
        return x

    @app.remote
    async def speak(x):
        print("a line of output, as a function might log it:", x)
        return x
    """
)


async def bench(n: int, home: Path) -> list[tuple[str, float, float]]:
    async with control_service(home / "home") as control:
        name = f"logs_{uuid.uuid4().hex[:8]}"
        mod = load_module(home, name, SOURCE.format(name=name))
        mod.app._config = control.config
        await mod.app.ensure_ready()
        received: list[object] = []
        cases = {
            "no-op, no output": lambda: mod.noop(1),
            "prints a line (worker log only)": lambda: mod.speak(1),
            "prints a line, logs= streams it to the caller": lambda: mod.speak.with_options(logs=received.append)(1),
        }
        rows = []
        for label, call in cases.items():
            samples = await latency(call, n)
            rows.append((label, percentile(samples, 0.5), percentile(samples, 0.99)))
        await mod.app.close()
        assert len(received) >= n, "logs= delivered fewer lines than calls"
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="calls per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(bench(args.n, Path(tmp)))
    base = rows[0][1]
    print(f"# streaming a call's output — {machine()}\n")
    print("| case | p50 | p99 | p50 ratio (vs no-op) |")
    print("|---|---|---|---|")
    for label, p50, p99 in rows:
        print(f"| {label} | {p50 * 1e3:.3f} ms | {p99 * 1e3:.3f} ms | {p50 / base:.2f}× |")


if __name__ == "__main__":
    main()
