"""Sessions benchmark: LLM-style conversations with a per-worker cache, pinned (one session each) vs unpinned.

Run: ``python bench/sessions.py`` (about 20 seconds on 2 vCPUs). Starts its own control service
on a temporary home and deploys a function with a per-worker cache, a dict in an
``@app.context`` standing in for a KV cache: it holds, per conversation, how many turns the
worker has seen. A turn whose conversation is cached up to the turn before is a hit (1 ms of
work, ``--hit-ms``); otherwise the worker recomputes the whole prefix, a miss (20 ms,
``--miss-ms``). ``--conversations`` conversations of ``--turns`` turns each run at once (each
conversation's turns one after the other) on ``--workers`` workers, first unpinned (each turn
where the balancer sends it), then pinned (one ``app.session()`` per conversation), each with
fresh conversation ids, ``--rounds`` times alternated. Reported: the cache hit rate, and the
medians over the rounds of the wall time and the mean and median time per turn of both, and
their ratios. ``--json FILE`` keeps the raw figures.
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

from _common import control_service, load_module, machine

SOURCE = """
import asyncio, os
from vastrpc import Deployment, get_context

app = Deployment(name="{name}")
app.configure_autoscaling(min_workers={workers}, max_workers={workers})

@app.context
class KVCache:
    async def __aenter__(self):
        self.turns = {{}}  # conversation id -> turns this worker has seen of it
        return self
    async def __aexit__(self, *exc):
        pass

@app.remote(benchmark_dataset=[{{"conversation": "bench", "turn": 0}}], max_concurrency=8)
async def chat(conversation: str, turn: int) -> tuple[bool, int]:
    cache = get_context(KVCache)
    hit = cache.turns.get(conversation) == turn  # cached up to the turn before this one
    await asyncio.sleep({hit_s} if hit else {miss_s})  # a hit extends the cache; a miss recomputes the prefix
    cache.turns[conversation] = turn + 1
    return hit, os.getpid()
"""


async def _conversations(mod: Any, prefix: str, conversations: int, turns: int, pinned: bool) -> dict[str, Any]:
    seconds: list[float] = []
    hits = 0
    workers_per_conversation: list[int] = []

    async def conversation(index: int) -> None:
        nonlocal hits
        conversation_id = f"{prefix}-{index}"
        pids = set()
        session = mod.app.session(ttl=60) if pinned else None
        try:
            for turn in range(turns):
                started = time.perf_counter()
                if session is not None:
                    hit, pid = await session.call(mod.chat, conversation_id, turn)
                else:
                    hit, pid = await mod.chat(conversation_id, turn)
                seconds.append(time.perf_counter() - started)
                hits += hit
                pids.add(pid)
        finally:
            if session is not None:
                await session.close()
        workers_per_conversation.append(len(pids))

    started = time.perf_counter()
    await asyncio.gather(*(conversation(i) for i in range(conversations)))
    wall = time.perf_counter() - started
    total = conversations * turns
    return {
        "turns": total,
        "hits": hits,
        "hit_rate": round(hits / total, 3),
        "wall_seconds": round(wall, 3),
        "mean_turn_ms": round(statistics.mean(seconds) * 1000, 2),
        "p50_turn_ms": round(statistics.median(seconds) * 1000, 2),
        "workers_per_conversation": round(statistics.mean(workers_per_conversation), 2),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (the hit rate over all of them)."""
    merged = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    merged["hit_rate"] = round(sum(r["hits"] for r in runs) / sum(r["turns"] for r in runs), 3)
    merged["rounds"] = len(runs)
    return merged


async def run(
    workers: int, conversations: int, turns: int, rounds: int, miss_ms: float = 20.0, hit_ms: float = 1.0
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vastrpc-sessions-") as tmp:
        home = Path(tmp)
        async with control_service(home / "home") as control:
            name = f"sessions_{uuid.uuid4().hex[:6]}"
            folder = home / "project"
            folder.mkdir()
            source = SOURCE.format(name=name, workers=workers, hit_s=hit_ms / 1000, miss_s=miss_ms / 1000)
            mod = load_module(folder, name, source)
            mod.app._config = control.config
            try:
                deployed = await mod.app.ensure_ready()
                await asyncio.gather(*(mod.chat("warmup", 0) for _ in range(4 * workers)))
                runs: dict[str, list[dict[str, Any]]] = {"unpinned": [], "pinned": []}
                for round_ in range(rounds):  # alternated, so that a noisy moment hits both alike
                    for label in runs:
                        prefix = f"{label}-{round_}"
                        runs[label].append(await _conversations(mod, prefix, conversations, turns, label == "pinned"))
                unpinned, pinned = _median(runs["unpinned"]), _median(runs["pinned"])
            finally:
                await mod.app.close()
    return {
        "workers": deployed.ready_workers,
        "conversations": conversations,
        "turns_per_conversation": turns,
        "miss_ms": miss_ms,
        "hit_ms": hit_ms,
        "unpinned": unpinned,
        "pinned": pinned,
        "hit_rate_ratio": round(pinned["hit_rate"] / max(unpinned["hit_rate"], 1e-9), 2),
        "wall_speedup": round(unpinned["wall_seconds"] / pinned["wall_seconds"], 2),
        "turn_speedup": round(unpinned["mean_turn_ms"] / pinned["mean_turn_ms"], 2),
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each, alternated; medians reported")
    parser.add_argument("--miss-ms", type=float, default=20.0, help="work of a turn whose conversation is not cached")
    parser.add_argument("--hit-ms", type=float, default=1.0, help="work of a turn whose conversation is cached")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    figures = asyncio.run(run(args.workers, args.conversations, args.turns, args.rounds, args.miss_ms, args.hit_ms))
    print(
        f"{figures['workers']} workers, {figures['conversations']} conversations × "
        f"{figures['turns_per_conversation']} turns (miss {figures['miss_ms']:g} ms, hit {figures['hit_ms']:g} ms), "
        f"medians of {figures['pinned']['rounds']} rounds"
    )
    print("| routing | cache hit rate | workers per conversation | wall time | mean turn | median turn |")
    print("|---|---|---|---|---|---|")
    for label in ("unpinned", "pinned"):
        f = figures[label]
        print(
            f"| {label} | {f['hit_rate']:.1%} | {f['workers_per_conversation']} | {f['wall_seconds']} s | "
            f"{f['mean_turn_ms']} ms | {f['p50_turn_ms']} ms |"
        )
    print(
        f"pinned / unpinned: hit rate × {figures['hit_rate_ratio']}, wall time ÷ {figures['wall_speedup']}, "
        f"mean turn ÷ {figures['turn_speedup']}"
    )
    print(f"machine: {figures['machine']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
