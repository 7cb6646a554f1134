"""Container provider benchmark: cold start of a new deployment in a container next to the process provider, and tier 3.

Run: ``python bench/containers.py`` (as root, with podman and runc; about a minute, plus
about 45 s the first time to build the Debian image with debootstrap, as the tests do).
For each provider (``local``, ``podman``) it starts a control service, then deploys
``--rounds`` fresh deployments of one worker, timing ``ensure_ready`` plus the first call
(cold start; the image is present). Then, with two workers, a tier 3 update — a new image on
podman, a new env var on the local provider — under a steady caller loop (4 callers): the
time until every worker serves the new revision, and the calls that failed. Prints a
Markdown table; ``--json FILE`` also writes the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import control_service, load_module, machine  # noqa: E402
from container_images import IMAGE_ONE, IMAGE_TWO, MARKER, ensure_images  # noqa: E402

from vastrpc.client.control import ControlClient  # noqa: E402
from vastrpc.config import ClientConfig  # noqa: E402

SOURCE = """
from vastrpc import Deployment

app = Deployment(name="{name}")
app.image("{image}", storage=1).env(STAGE="{stage}")
app.configure_autoscaling(min_workers={workers}, max_workers={workers})

@app.remote(benchmark_dataset=[{{}}])
async def stage() -> str:
    try:
        with open("{marker}") as f:
            return f.read().strip() + "/" + "{stage}"
    except OSError:
        return "host/{stage}"
"""


def _module(folder: Path, config: ClientConfig, *, image: str, stage: str, workers: int, name: str = "") -> Any:
    name = name or f"bench_{uuid.uuid4().hex[:8]}"
    source = SOURCE.format(name=name, image=image, stage=stage, workers=workers, marker=MARKER)
    sub = folder / name
    sub.mkdir(exist_ok=True)
    mod = load_module(sub, name, source)
    mod.app._config = config
    return mod


async def _all_on(config: ClientConfig, mod: Any, revision_id: str, workers: int) -> None:
    client = ControlClient(config.control_address or "", config.api_key or "", None)
    try:
        while True:
            listing = await client.list_deployments(mod.app.name)
            (endpoint,) = listing.deployments[0].endpoints
            ready = [w for w in endpoint.workers if w.state == 6 and w.revision_id == revision_id]
            others = [w for w in endpoint.workers if w.state not in (6, 8, 9)]
            if len(ready) == workers and not others:
                return
            await asyncio.sleep(0.05)
    finally:
        await client.close()


async def _tier3(folder: Path, config: ClientConfig, provider: str) -> dict[str, Any]:
    mod = _module(folder, config, image=IMAGE_ONE, stage="a", workers=2)
    await mod.app.ensure_ready()
    answers: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            try:
                answers.append(await mod.stage())
            except Exception as exc:  # counted, reported
                failures.append(repr(exc))
            await asyncio.sleep(0.005)

    callers = [asyncio.create_task(caller()) for _ in range(4)]
    await asyncio.sleep(1.0)
    image, stage = (IMAGE_TWO, "a") if provider == "podman" else (IMAGE_ONE, "b")
    Path(mod.__file__).write_text(SOURCE.format(name=mod.app.name, image=image, stage=stage, workers=2, marker=MARKER))
    mod.app.image(image, storage=1).env(STAGE=stage)
    started = time.perf_counter()
    result = await mod.app.ensure_ready()
    await asyncio.wait_for(_all_on(config, mod, result.revision_id, 2), 120)
    took = time.perf_counter() - started
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*callers)
    return {
        "tier": result.tier,
        "seconds": took,
        "calls": len(answers),
        "failed": len(failures),
        "first_failures": failures[:3],
        "last_answer": answers[-1] if answers else "",
    }


async def _provider(provider: str, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"vastrpc-bench-{provider}-") as tmp:
        folder = Path(tmp)
        async with control_service(folder / "home", "--provider", provider) as control:
            config = ClientConfig(
                control_address=control.address, api_key=control.config.api_key, home=control.home, ready_timeout=120
            )
            cold = []
            for _ in range(rounds):
                mod = _module(folder, config, image=IMAGE_ONE, stage="a", workers=1)
                started = time.perf_counter()
                await mod.app.ensure_ready()
                answer = await mod.stage()
                cold.append(time.perf_counter() - started)
                assert answer == ("one/a" if provider == "podman" else "host/a"), answer
            tier3 = await _tier3(folder, config, provider)
    return {"cold_start": cold, "tier3": tier3}


def _report(figures: dict[str, Any]) -> str:
    lines = [
        f"{figures['date']}, {figures['machine']}",
        "",
        "| measure | local (process) provider | podman provider | goal |",
        "|---|---|---|---|",
    ]
    local, podman = figures["local"], figures["podman"]
    lines.append(
        "| cold start, new deployment, ensure_ready + first call (median of "
        f"{len(podman['cold_start'])}) | {statistics.median(local['cold_start']):.2f} s "
        f"| {statistics.median(podman['cold_start']):.2f} s | ≤ 0.6 s (podman) |"
    )
    lines.append(
        f"| … min / max | {min(local['cold_start']):.2f} / {max(local['cold_start']):.2f} s "
        f"| {min(podman['cold_start']):.2f} / {max(podman['cold_start']):.2f} s | |"
    )
    t_local, t_podman = local["tier3"], podman["tier3"]
    lines.append(
        "| tier 3, two workers, until both serve the new revision (local: new env var; podman: new image) "
        f"| {t_local['seconds']:.2f} s | {t_podman['seconds']:.2f} s | ≤ 3 s |"
    )
    lines.append(
        "| … calls during it (4 steady callers) / failed "
        f"| {t_local['calls']} / {t_local['failed']} | {t_podman['calls']} / {t_podman['failed']} | 0 failed |"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="cold starts per provider (default 5)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    ensure_images()
    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    for provider in ("local", "podman"):
        figures[provider] = asyncio.run(_provider(provider, args.rounds))
    print(_report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
