"""Bounded soak: calls run while workers are killed at random; counts failures, losses, duplicates, recovery.

Run: ``python bench/soak.py --minutes 3`` (at most 10; loopback only; stops by itself).
With ``--store postgresql://...`` two control services share that (empty) database, each the
other's ``--peer``; half the callers name them ``a,b``, half ``b,a``; and every third kill is
of the leading control service (SIGKILL, restarted on its port 3 s later).
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
import socket
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """One ``vastrpc control serve`` process of the soak, restartable on its port."""

    def __init__(self, home: Path, name: str, port: int, extra: list[str]) -> None:
        self.home, self.name, self.port, self.extra = home, name, port, extra
        self.log = home / f"control-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(self.home)]
        argv += ["--port", str(self.port), "--autoscale-interval", "0.5", *self.extra]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out)

    @property
    def leads(self) -> bool:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        alive = self.process is not None and self.process.poll() is None
        return alive and text.rfind("became leader") > text.rfind("lost leadership")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        # The log of the next start tells whether that one leads.
        self.log.write_text("")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)


async def soak(
    minutes: float, workers: int, callers: int, kill_every: float, home: Path, store: str | None = None
) -> dict[str, Any]:
    if store is None:
        services = [Service(home, "a", _free_port(), [])]
    else:
        ports = [_free_port(), _free_port()]
        services = [
            Service(home, name, port, ["--store", store, "--peer", f"127.0.0.1:{other}"])
            for name, port, other in (("a", ports[0], ports[1]), ("b", ports[1], ports[0]))
        ]
    try:
        for service in services:
            service.start()
            for _ in range(600):
                if service.log.exists() and "listening on" in service.log.read_text(errors="replace"):
                    break
                await asyncio.sleep(0.05)
        api_key = (home / "api_key").read_text().strip()
        runs = home / "runs"
        runs.mkdir()
        name = f"soak_{uuid.uuid4().hex[:6]}"
        path = home / f"{name}.py"
        path.write_text(SOURCE.format(name=name, runs=str(runs), workers=workers))
        # One copy of the app per order of the control services (a,b and b,a): a group of callers each.
        orders = [[s.address for s in services[i:] + services[:i]] for i in range(len(services))]
        mods = []
        for index, order in enumerate(orders):
            spec = importlib.util.spec_from_file_location(f"{name}_{index}", path)
            assert spec and spec.loader
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            mod.app._config = ClientConfig(control_address=order, api_key=api_key, home=home)
            await mod.app.ensure_ready()
            mods.append(mod)
        admin = ControlClient(orders[0], api_key)
        # (group, time.monotonic(), worker id) of every call that succeeded.
        served: list[tuple[int, float, str]] = []

        outcomes: collections.Counter[str] = collections.Counter()
        errors: collections.Counter[str] = collections.Counter()
        results: dict[str, set[str]] = {"plain": set(), "idempotent": set()}
        deadline = time.monotonic() + minutes * 60

        async def caller(index: int) -> None:
            rng = random.Random(index)
            group = index % len(mods)
            mod = mods[group]
            while time.monotonic() < deadline:
                kind = "idempotent" if rng.random() < 0.5 else "plain"
                key = f"{index}-{uuid.uuid4().hex[:8]}"
                fn = getattr(mod, kind)
                try:
                    info = await asyncio.wait_for(fn.call_with_info(key, rng.uniform(0.0, 0.2)), 120)
                    assert info.value == key
                    outcomes[f"{kind} ok"] += 1
                    results[kind].add(key)
                    served.append((group, time.monotonic(), info.worker_id))
                except TimeoutError:
                    outcomes[f"{kind} lost (no answer in 120 s)"] += 1
                except VastrpcError as exc:
                    outcomes[f"{kind} failed"] += 1
                    errors[type(exc).__name__] += 1

        def every_group_served(since: float, new: set[str] | None) -> bool:
            """Every group of callers had a call served after ``since`` (by one of ``new``, if given)."""
            return all(
                any(g == group and t > since and (new is None or w in new) for g, t, w in served)
                for group in range(len(mods))
            )

        async def workers_now() -> list[Any]:
            listing = await admin.list_deployments(name)
            return [w for d in listing.deployments for e in d.endpoints for w in e.workers]

        kills: list[dict[str, float]] = []

        async def kill_leader(rng: random.Random) -> None:
            leader = next((s for s in services if s.leads), None)
            if leader is None:
                return
            killed_at = time.monotonic()
            leader.kill()
            took_over = clients_calling = watches_moved = 0.0
            while time.monotonic() - killed_at < 60 and not (took_over and clients_calling and watches_moved):
                now = time.monotonic()
                if not took_over and any(s.leads for s in services if s is not leader):
                    took_over = now - killed_at
                if not clients_calling and every_group_served(killed_at, None):
                    clients_calling = now - killed_at
                if not watches_moved and all(watching(mod, leader.address) for mod in mods):
                    watches_moved = now - killed_at
                await asyncio.sleep(0.05)
            await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - killed_at)))
            leader.start()  # back on its port, following
            kills.append(
                {
                    "control": 1.0,
                    "took_over_s": took_over,
                    "clients_calling_s": clients_calling,
                    "watches_moved_s": watches_moved,
                }
            )

        def watching(mod: Any, dead: str) -> bool:
            """The client's endpoint watch runs on a live control service (not ``dead``) again."""
            session = mod.app._handle.live_session()
            return session.control.address != dead and session.router._watch_error is None

        async def killer() -> None:
            rng = random.Random(7)
            count = 0
            while time.monotonic() < deadline - kill_every:
                await asyncio.sleep(kill_every * rng.uniform(0.7, 1.3))
                count += 1
                if len(services) > 1 and count % 3 == 0:
                    await kill_leader(rng)
                    continue
                before = await workers_now()
                ready = [w for w in before if w.state == common_pb2.WORKER_STATE_READY]
                if len(ready) < workers:
                    continue  # still recovering from the last kill
                known = {w.worker_id for w in before}
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
                detected = recovered = clients_on_new = 0.0
                # Until the callers stop: a recovery after that cannot be seen by them (0: not measured).
                while time.monotonic() - killed_at < 120 and time.monotonic() < deadline:
                    now_workers = await workers_now()
                    states = {w.worker_id: w.state for w in now_workers}
                    if not detected and states.get(victim.worker_id) != common_pb2.WORKER_STATE_READY:
                        detected = time.monotonic() - killed_at
                    if (
                        detected
                        and not recovered
                        and list(states.values()).count(common_pb2.WORKER_STATE_READY) >= workers
                    ):
                        recovered = time.monotonic() - killed_at
                    # A killed serving process alone restarts in the same worker; a whole worker is replaced.
                    new = {w for w in states if w not in known} if whole else {victim.worker_id}
                    if recovered and every_group_served(killed_at + recovered, new):
                        clients_on_new = time.monotonic() - killed_at
                        break
                    await asyncio.sleep(0.05)
                kills.append(
                    {
                        "whole_worker": float(whole),
                        "detected_s": detected,
                        "recovered_s": recovered,
                        "clients_on_new_s": clients_on_new,
                    }
                )

        await asyncio.gather(killer(), *(caller(i) for i in range(callers)))
        executions = {kind: collections.Counter((runs / kind).read_text().split()) for kind in ("plain", "idempotent")}
        for counter in executions.values():
            counter.pop("bench", None)  # each worker's own benchmark runs, not calls
        duplicated_plain = sum(1 for key, n in executions["plain"].items() if n > 1)
        for mod in mods:
            await mod.app.close()
        await admin.close()
        return {
            "minutes": minutes,
            "workers": workers,
            "control_services": len(services),
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
        for service in services:
            service.stop()


def _median(kills: list[dict[str, float]], key: str) -> str:
    values = sorted(k[key] for k in kills if k[key] > 0)  # 0: not measured (the soak ended first)
    if not values:
        return "not measured"
    return f"{values[len(values) // 2]:.2f} s (max {values[-1]:.2f}, {len(values)} measured)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--kill-every", type=float, default=15.0, help="seconds between kills (about)")
    parser.add_argument(
        "--store", help="an empty PostgreSQL database (postgresql://...): two control services, the leader killed too"
    )
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    if not 0 < opts.minutes <= 10:
        parser.error("--minutes must be in (0, 10]")
    with tempfile.TemporaryDirectory(prefix="vastrpc-soak-") as tmp:
        r = asyncio.run(soak(opts.minutes, opts.workers, opts.callers, opts.kill_every, Path(tmp), opts.store))
    kills = [k for k in r["kills"] if not k.get("control")]
    control_kills = [k for k in r["kills"] if k.get("control")]
    print(
        f"# soak — {time.strftime('%Y-%m-%d')} — {opts.minutes:g} min, {r['control_services']} control service(s), "
        f"{opts.workers} workers, {opts.callers} callers\n"
    )
    print("| outcome | calls |\n|---|---|")
    for outcome, n in sorted(r["outcomes"].items()):
        print(f"| {outcome} | {n} |")
    print(f"\nerrors by type: {r['errors']}")
    print(f"non-idempotent calls run twice: {r['duplicated_plain_calls']}")
    print(f"idempotent calls run more than once (retried after a kill): {r['idempotent_calls_run_more_than_once']}")
    if kills:
        print(
            f"\n{len(kills)} worker kills; detection median {_median(kills, 'detected_s')}; "
            f"replacement serving median {_median(kills, 'recovered_s')}; "
            f"every client calling the new worker median {_median(kills, 'clients_on_new_s')}"
        )
    if control_kills:
        print(
            f"{len(control_kills)} kills of the leading control service; the other led after median "
            f"{_median(control_kills, 'took_over_s')}; every client called again after median "
            f"{_median(control_kills, 'clients_calling_s')}; every client's endpoint watch ran on a live service "
            f"again after median {_median(control_kills, 'watches_moved_s')}"
        )
    if opts.json:
        opts.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
