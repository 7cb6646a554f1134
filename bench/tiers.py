"""Update-tier benchmark: ensure_ready time for tiers 0, 1 and 2, on a small project and a 1,000-file / 100 MB one.

Run: ``python bench/tiers.py`` (about a minute). Starts its own control service on a
temporary home, then for each project measures ``ensure_ready`` when nothing changed
(tier 0), when only autoscaling settings changed (tier 1) and when the code changed
(tier 2: one small file, the deployment module, edited; until ``ensure_ready`` returns,
when every worker serves the new revision, checked with a call). In the same run it
times packaging the big project from scratch (``build_bundle`` without the stat cache)
and a plain read + SHA-256 of its files, the baselines tier 0 is reported against; and,
for the same project with data new to the service (fresh random files each run), a first
deploy's package + upload (``build_bundle``, then ``MissingFiles``/``UploadFiles``/
``UploadBundle``) and a worker's download + verify + materialise of it into a file cache
new to it (the worker agent's own ``_download``), beside the time to create as many empty
files in the same filesystem (each side creates one per new file). Prints Markdown tables;
``--json FILE`` also writes the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import types
import uuid
from pathlib import Path
from typing import Any

import grpc

from vastrpc.api.v1 import common_pb2
from vastrpc.client.control import ControlClient
from vastrpc.config import ClientConfig
from vastrpc.deploy.bundle import build_bundle
from vastrpc.deploy.statcache import cached_bundle
from vastrpc.serve.agent import Agent

SOURCE = textwrap.dedent(
    """
    from vastrpc import Deployment

    app = Deployment(name="{name}")
    {image}

    VERSION = {version}

    @app.remote(benchmark_dataset=[{{"x": 1}}])
    async def bump(x: int) -> int:
        return x + VERSION
    """
)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def settle() -> None:
    # The stat cache does not trust files written in the last ~50 ms (see
    # vastrpc/deploy/statcache.py); wait that out so tier 0 measures a cache hit.
    time.sleep(0.2)


class Project:
    """One deployment module in its own folder, optionally with a copied data folder."""

    def __init__(self, root: Path, config: ClientConfig, *, files: int = 0, file_bytes: int = 0) -> None:
        self.name = f"tiers_{uuid.uuid4().hex[:8]}"
        self.folder = root / self.name
        self.folder.mkdir(parents=True)
        self.image = ""
        if files:
            data = self.folder / "data"
            data.mkdir()
            for i in range(files):
                (data / f"f{i:04d}.bin").write_bytes(os.urandom(file_bytes))
            self.image = 'app.image("python:3.11-slim").copy("data")'
        self.path = self.folder / f"{self.name}.py"
        self.version = 0
        self.write()
        spec = importlib.util.spec_from_file_location(self.name, self.path)
        assert spec and spec.loader
        self.module: types.ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[self.name] = self.module
        spec.loader.exec_module(self.module)
        self.app = self.module.app
        self.app._config = config

    def write(self) -> None:
        self.path.write_text(SOURCE.format(name=self.name, image=self.image, version=self.version))

    def data_files(self) -> list[Path]:
        return sorted((self.folder / "data").iterdir())


async def all_workers_serve(config: ClientConfig, app: Any, revision_id: str) -> bool:
    """Whether every worker of the app's endpoint that is not stopped serves ``revision_id``."""
    client = await ControlClient.connect(config)
    try:
        listing = await client.list_deployments(app.name)
    finally:
        await client.close()
    workers = [w for d in listing.deployments for e in d.endpoints for w in e.workers]
    live = [w for w in workers if w.state != common_pb2.WORKER_STATE_STOPPED]
    return bool(live) and all(w.revision_id == revision_id for w in live)


async def measure(project: Project, config: ClientConfig, runs: int, code_runs: int, pause: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    app = project.app
    first = await app.ensure_ready()
    assert first.tier == 4, first
    settle()
    await app.ensure_ready()  # the first build was racy-fresh: this one saves the cache

    t0: list[float] = []
    for _ in range(runs):
        r = await app.ensure_ready()
        assert r.tier == 0 and not r.uploaded, r
        t0.append(r.seconds)
    out["tier0_ms"] = median_ms(t0)
    out["tier0_all_ms"] = [x * 1e3 for x in t0]

    # The package step alone: the stat cache's check, no RPC.
    copies = app.image_spec.copies
    cache_dir = config.home / "cache" / "bundles"
    pkg = []
    for _ in range(runs):
        t = time.perf_counter()
        b = cached_bundle(project.path, copies=copies, cache_dir=cache_dir)
        pkg.append(time.perf_counter() - t)
        assert b.from_cache
    out["package_cached_ms"] = median_ms(pkg)

    t1: list[float] = []
    for i in range(runs):
        app.configure_autoscaling(min_workers=1, max_workers=2 + i % 2)
        r = await app.ensure_ready()
        assert r.tier == 1 and not r.uploaded and r.workers_started == 0, r
        t1.append(r.seconds)
    out["tier1_ms"] = median_ms(t1)

    t2: list[float] = []
    for _ in range(code_runs):
        await asyncio.sleep(pause)  # the time an edit takes (0: one update right after the other)
        project.version += 1
        project.write()
        start = time.perf_counter()
        r = await app.ensure_ready()
        t2.append(time.perf_counter() - start)
        assert r.tier == 2 and r.uploaded, r
        info = await project.module.bump.call_with_info(1)
        assert (info.value, info.revision_id) == (1 + project.version, r.revision_id), (info, r)
        assert await all_workers_serve(config, app, r.revision_id)
    out["tier2_s"] = statistics.median(t2)
    out["tier2_all_s"] = t2
    return out


def scratch_baselines(project: Project, runs: int) -> dict[str, float]:
    """Packaging the big project from scratch, and a bare read + SHA-256 of its files."""
    copies = project.app.image_spec.copies
    builds, hashes = [], []
    for _ in range(runs):
        t = time.perf_counter()
        bundle = build_bundle(project.path, copies=copies)
        builds.append(time.perf_counter() - t)
        t = time.perf_counter()
        total = 0
        for path in [project.path, *project.data_files()]:
            data = path.read_bytes()
            hashlib.sha256(data).digest()
            total += len(data)
        hashes.append(time.perf_counter() - t)
    return {
        "build_bundle_ms": median_ms(builds),
        "read_sha256_ms": median_ms(hashes),
        "create_files_ms": median_ms([create_files(project.folder, len(project.data_files())) for _ in range(runs)]),
        "bytes": float(total),
        "bundle_bytes": float(bundle.total_size),
    }


def create_files(root: Path, count: int) -> float:
    """Seconds to create ``count`` empty files (open O_CREAT, close) in a new folder under ``root``.

    The service stores each new file of a first deploy as a file and a worker caches each as
    one: this is the filesystem's floor for either, whatever is written in them.
    """
    folder = root / f"create-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    t = time.perf_counter()
    for i in range(count):
        os.close(os.open(folder / f"{i:064x}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    elapsed = time.perf_counter() - t
    shutil.rmtree(folder)
    return elapsed


async def first_deploy(config: ClientConfig, root: Path, files: int, file_bytes: int, runs: int) -> dict[str, Any]:
    """A first deploy's package + upload of data new to the service, and a new worker's download of it."""
    packs, uploads, downloads = [], [], []
    total = 0
    for _ in range(runs):
        project = Project(root, config, files=files, file_bytes=file_bytes)  # fresh random data
        copies = project.app.image_spec.copies
        t = time.perf_counter()
        bundle = build_bundle(project.path, copies=copies)
        packs.append(time.perf_counter() - t)
        total = bundle.total_size
        client = await ControlClient.connect(config)
        try:
            t = time.perf_counter()
            up = await client.upload_bundle(bundle.manifest, bundle.read_chunks)
            uploads.append(time.perf_counter() - t)
        finally:
            await client.close()
        assert up.files == len(bundle.manifest.by_digest()) and up.stored, up
        worker_home = root / f"worker-{uuid.uuid4().hex[:8]}"
        agent = Agent(config.control_address, "w-bench", config.api_key, worker_home)
        try:
            t = time.perf_counter()
            folder = await agent._download("e-bench", "r-bench", bundle.digest, bundle.size)
            downloads.append(time.perf_counter() - t)
        finally:
            await agent._channel.close()
        assert sorted(p.name for p in (folder / "data").iterdir()) == [p.name for p in project.data_files()]
        shutil.rmtree(worker_home)
        shutil.rmtree(project.folder)
    package, upload, download = (statistics.median(x) for x in (packs, uploads, downloads))
    return {
        "first_bytes": total,
        "first_package_s": package,
        "first_upload_s": upload,
        "first_package_upload_mb_s": total / 1e6 / (package + upload),
        "first_package_upload_all_s": [p + u for p, u in zip(packs, uploads, strict=True)],
        "worker_download_s": download,
        "worker_download_all_s": downloads,
    }


async def bench(home: Path, files: int, file_bytes: int, runs: int, code_runs: int, pause: float) -> dict[str, Any]:
    with open(home / "control.log", "ab") as log:
        control = subprocess.Popen(
            [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(home)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        for _ in range(400):
            if (home / "control.json").exists():
                break
            await asyncio.sleep(0.05)
        info = json.loads((home / "control.json").read_text())
        config = ClientConfig(
            control_address=info["address"], api_key=(home / "api_key").read_text().strip(), home=home
        )
        projects = home / "projects"
        results: dict[str, Any] = {}

        small = Project(projects, config)
        results["small"] = await measure(small, config, runs, code_runs, pause)
        await small.app.close()

        big = Project(projects, config, files=files, file_bytes=file_bytes)
        results["big"] = await measure(big, config, runs, code_runs, pause)
        results["big"].update(scratch_baselines(big, 3))
        await big.app.close()
        results["big"].update(await first_deploy(config, projects, files, file_bytes, 3))
        return results
    finally:
        control.terminate()
        control.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1000, help="files in the big project's copied folder")
    parser.add_argument("--file-kb", type=int, default=100, help="size of each of those files, in KB (1,000 bytes)")
    parser.add_argument("--runs", type=int, default=9, help="tier 0 and tier 1 runs (median reported)")
    parser.add_argument("--code-runs", type=int, default=3, help="tier 2 runs (median reported)")
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds before each tier 2 run, as an edit takes (default: none)"
    )
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vastrpc-tiers-") as tmp:
        r = asyncio.run(bench(Path(tmp), opts.files, opts.file_kb * 1000, opts.runs, opts.code_runs, opts.pause))
    r["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, grpcio {grpc.__version__}"
    )
    r["date"] = time.strftime("%Y-%m-%d")
    s, b = r["small"], r["big"]
    mb = b["bytes"] / 1e6
    print(f"# vastrpc update tiers — {r['date']} — {r['machine']}\n")
    print(f"| ensure_ready | small project (1 module) | {opts.files:,} files / {mb:.0f} MB |")
    print("|---|---|---|")
    print(f"| tier 0, nothing changed (median) | {s['tier0_ms']:.1f} ms | {b['tier0_ms']:.1f} ms |")
    print(
        f"| … of which packaging (stat cache hit) | {s['package_cached_ms']:.2f} ms | {b['package_cached_ms']:.2f} ms |"
    )
    print(f"| tier 1, autoscaling changed (median) | {s['tier1_ms']:.1f} ms | {b['tier1_ms']:.1f} ms |")
    print(
        f"| tier 2, code changed, until every worker serves it (median) | {s['tier2_s']:.2f} s | {b['tier2_s']:.2f} s |"
    )
    print(f"\nBaselines for the {opts.files:,}-file project, same run (medians of 3):\n")
    print("| from scratch | time | tier 0 ensure_ready / it |")
    print("|---|---|---|")
    for label, key in (
        ("build_bundle, no cache (discover, read, SHA-256, manifest)", "build_bundle_ms"),
        ("plain read + SHA-256 of the files", "read_sha256_ms"),
    ):
        print(f"| {label} | {b[key]:.0f} ms | {b['tier0_ms'] / b[key]:.3f}× |")
    print(f"\nData new to the service and the worker, {b['first_bytes'] / 1e6:.0f} MB (medians of 3):\n")
    print("| step | time | throughput |")
    print("|---|---|---|")
    first = b["first_package_s"] + b["first_upload_s"]
    print(
        f"| first deploy: package + upload (MissingFiles, UploadFiles, UploadBundle) | {first:.2f} s "
        f"(package {b['first_package_s']:.2f} + upload {b['first_upload_s']:.2f}) | "
        f"{b['first_package_upload_mb_s']:.0f} MB/s |"
    )
    down = b["worker_download_s"]
    print(
        f"| a worker's download + verify + materialise, cache new to it | {down:.3f} s | "
        f"{b['first_bytes'] / 1e6 / down:.0f} MB/s |"
    )
    print(
        f"| bare baseline: plain read + SHA-256 of the files | {b['read_sha256_ms'] / 1e3:.3f} s | "
        f"{b['bytes'] / 1e6 / (b['read_sha256_ms'] / 1e3):.0f} MB/s |"
    )
    print(
        f"| bare baseline: create {opts.files:,} empty files in the same filesystem | "
        f"{b['create_files_ms'] / 1e3:.3f} s | each service and worker creates that many |"
    )
    t2s = ", ".join(f"{x:.2f}" for x in s["tier2_all_s"])
    t2b = ", ".join(f"{x:.2f}" for x in b["tier2_all_s"])
    print(f"\ntier 2 runs ({opts.pause:g} s before each): small {t2s} s; big {t2b} s")
    firsts = ", ".join(f"{x:.2f}" for x in b["first_package_upload_all_s"])
    downs = ", ".join(f"{x:.3f}" for x in b["worker_download_all_s"])
    print(f"first deploy package + upload runs: {firsts} s; worker download runs: {downs} s")
    if opts.json:
        opts.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
