"""Bounded soak: calls run while workers are killed at random; counts failures, losses, duplicates, recovery.

Run: ``python bench/soak.py --minutes 3`` (at most 10; loopback only; stops by itself).
Prints a Markdown summary; ``--json FILE`` writes the raw figures. See RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from vastrpc import VastrpcError
from vastrpc.api.v1 import common_pb2
from vastrpc.client.control import ControlClient
from vastrpc.config import ClientConfig

SOURCE = """
import asyncio, os
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("python:3.11-slim").env(RUNS={runs!r})
app.configure_autoscaling(min_workers={workers}, max_workers={workers})

def record(kind, key):
    with open(os.path.join(os.environ["RUNS"], kind), "a") as f:
        f.write(key + "\\n")

@app.remote(benchmark_dataset=[{{"key": "bench", "seconds": 0}}])
async def plain(key: str, seconds: float) -> str:
    record("plain", key)
    await asyncio.sleep(seconds)
    return key

@app.remote(retries=3)
async def idempotent(key: str, seconds: float) -> str:
    record("idempotent", key)
    await asyncio.sleep(seconds)
    return key
"""


async def soak(minutes: float, workers: int, callers: int, kill_every: float, home: Path) -> dict[str, Any]:
    control = subprocess.Popen(
        [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(home), "--autoscale-interval", "0.5"],
        stdout=subprocess.DEVNULL,
        stderr=open(home / "control.log", "ab"),  # noqa: SIM115 - lives as long as the process
    )
    try:
        for _ in range(400):
            if (home / "control.json").exists():
                break
            await asyncio.sleep(0.05)
        info = json.loads((home / "control.json").read_text())
        api_key = (home / "api_key").read_text().strip()
        config = ClientConfig(control_address=info["address"], api_key=api_key, home=home)
        runs = home / "runs"
        runs.mkdir()
        name = f"soak_{uuid.uuid4().hex[:6]}"
        path = home / f"{name}.py"
        path.write_text(SOURCE.format(name=name, runs=str(runs), workers=workers))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        mod.app._config = config
        await mod.app.ensure_ready()
        admin = ControlClient(info["address"], api_key)

        outcomes: collections.Counter[str] = collections.Counter()
        errors: collections.Counter[str] = collections.Counter()
        results: dict[str, set[str]] = {"plain": set(), "idempotent": set()}
        deadline = time.monotonic() + minutes * 60

        async def caller(index: int) -> None:
            rng = random.Random(index)
            while time.monotonic() < deadline:
                kind = "idempotent" if rng.random() < 0.5 else "plain"
                key = f"{index}-{uuid.uuid4().hex[:8]}"
                fn = getattr(mod, kind)
                try:
                    got = await asyncio.wait_for(fn(key, rng.uniform(0.0, 0.2)), 120)
                    assert got == key
                    outcomes[f"{kind} ok"] += 1
                    results[kind].add(key)
                except TimeoutError:
                    outcomes[f"{kind} lost (no answer in 120 s)"] += 1
                except VastrpcError as exc:
                    outcomes[f"{kind} failed"] += 1
                    errors[type(exc).__name__] += 1

        async def workers_now() -> list[Any]:
            listing = await admin.list_deployments(name)
            return [w for d in listing.deployments for e in d.endpoints for w in e.workers]

        kills: list[dict[str, float]] = []

        async def killer() -> None:
            rng = random.Random(7)
            while time.monotonic() < deadline - kill_every:
                await asyncio.sleep(kill_every * rng.uniform(0.7, 1.3))
                ready = [w for w in await workers_now() if w.state == common_pb2.WORKER_STATE_READY]
                if len(ready) < workers:
                    continue  # still recovering from the last kill
                victim = rng.choice(ready)
                whole = rng.random() < 0.5  # the agent and its serving process, or the serving process alone
                killed_at = time.monotonic()
                try:
                    if whole:
                        os.killpg(victim.pid, signal.SIGKILL)
                    else:
                        serving = [
                            int(p) for p in Path(f"/proc/{victim.pid}/task/{victim.pid}/children").read_text().split()
                        ]
                        for pid in serving:
                            os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, FileNotFoundError):
                    continue
                detected = recovered = 0.0
                while time.monotonic() - killed_at < 120:
                    states = {w.worker_id: w.state for w in await workers_now()}
                    if not detected and states.get(victim.worker_id) != common_pb2.WORKER_STATE_READY:
                        detected = time.monotonic() - killed_at
                    if detected and list(states.values()).count(common_pb2.WORKER_STATE_READY) >= workers:
                        recovered = time.monotonic() - killed_at
                        break
                    await asyncio.sleep(0.05)
                kills.append({"whole_worker": float(whole), "detected_s": detected, "recovered_s": recovered})

        await asyncio.gather(killer(), *(caller(i) for i in range(callers)))
        executions = {kind: collections.Counter((runs / kind).read_text().split()) for kind in ("plain", "idempotent")}
        for counter in executions.values():
            counter.pop("bench", None)  # each worker's own benchmark runs, not calls
        duplicated_plain = sum(1 for key, n in executions["plain"].items() if n > 1)
        await mod.app.close()
        await admin.close()
        return {
            "minutes": minutes,
            "workers": workers,
            "callers": callers,
            "outcomes": dict(outcomes),
            "errors": dict(errors),
            "calls": sum(outcomes.values()),
            "duplicated_plain_calls": duplicated_plain,
            "plain_calls_never_run": sum(1 for key in results["plain"] if key not in executions["plain"]),
            "idempotent_calls_run_more_than_once": sum(1 for n in executions["idempotent"].values() if n > 1),
            "kills": kills,
        }
    finally:
        control.terminate()
        control.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--kill-every", type=float, default=15.0, help="seconds between kills (about)")
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    if not 0 < opts.minutes <= 10:
        parser.error("--minutes must be in (0, 10]")
    with tempfile.TemporaryDirectory(prefix="vastrpc-soak-") as tmp:
        r = asyncio.run(soak(opts.minutes, opts.workers, opts.callers, opts.kill_every, Path(tmp)))
    kills = r["kills"]
    print(
        f"# soak — {time.strftime('%Y-%m-%d')} — {opts.minutes:g} min, {opts.workers} workers, {opts.callers} callers\n"
    )
    print("| outcome | calls |\n|---|---|")
    for outcome, n in sorted(r["outcomes"].items()):
        print(f"| {outcome} | {n} |")
    print(f"\nerrors by type: {r['errors']}")
    print(f"non-idempotent calls run twice: {r['duplicated_plain_calls']}")
    print(f"idempotent calls run more than once (retried after a kill): {r['idempotent_calls_run_more_than_once']}")
    if kills:
        det = sorted(k["detected_s"] for k in kills)
        rec = sorted(k["recovered_s"] for k in kills)
        print(
            f"\n{len(kills)} kills; detection median {det[len(det) // 2]:.2f} s (max {det[-1]:.2f}); "
            f"replacement serving median {rec[len(rec) // 2]:.2f} s (max {rec[-1]:.2f})"
        )
    if opts.json:
        opts.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
