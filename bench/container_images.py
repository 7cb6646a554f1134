"""Container images beyond the host's Python: vastrpc's runtime for a Python 3.13 image; derived images of build steps.

Run: ``python bench/container_images.py`` (as root, with podman and runc; about a minute, plus
about 45 s the first time to build the Debian trixie image, as the tests do). Measures:

- preparing vastrpc's runtime for Python 3.13 (``runtime_site``: uv installs vastrpc's
  dependencies as cp313 wheels into a fresh folder) with uv's download cache empty, with it
  warm, and the cached case (the folder is there);
- cold start (``ensure_ready`` + first call) of a one-worker deployment of the trixie image on
  a fresh control service home (the runtime is prepared), then of a second one (cached);
- cold start of a deployment with one ``run_script`` step (the derived image is built), then
  of a second deployment with the same step (the derived image is reused).

Prints a Markdown table; ``--json FILE`` also writes the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import control_service, load_module, machine  # noqa: E402
from container_images import _env, ensure_images, ensure_trixie_image  # noqa: E402

from vastrpc.client.control import ControlClient  # noqa: E402
from vastrpc.config import ClientConfig  # noqa: E402
from vastrpc.serve.image_python import runtime_site  # noqa: E402
from vastrpc.serve.install import PythonTarget  # noqa: E402

SOURCE = """
import sys
from vastrpc import Deployment

app = Deployment(name="{name}")
image = app.image("{image}", storage=1)
{steps}

@app.remote(benchmark_dataset=[{{}}])
async def where() -> str:
    return "{{}}.{{}}".format(*sys.version_info[:2])
"""


def _runtime() -> dict[str, float]:
    target = PythonTarget(version=(3, 13), machine="x86_64", manylinux="manylinux_2_28")
    figures = {}
    with tempfile.TemporaryDirectory(prefix="vastrpc-bench-runtime-") as tmp:
        cold_cache = Path(tmp) / "uv-cache"
        saved = os.environ.get("UV_CACHE_DIR")
        os.environ["UV_CACHE_DIR"] = str(cold_cache)  # an empty download cache: every wheel fetched
        try:
            for label, folder in (("uv cache empty", "a"), ("uv cache warm", "b"), ("cached", "b")):
                started = time.perf_counter()
                runtime_site(target, Path(tmp) / folder, log=lambda _line: None)
                figures[label] = time.perf_counter() - started
        finally:
            if saved is None:
                os.environ.pop("UV_CACHE_DIR", None)
            else:
                os.environ["UV_CACHE_DIR"] = saved
    return figures


async def _cold(folder: Path, config: ClientConfig, image: str, steps: str = "") -> tuple[float, str]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    sub = folder / name
    sub.mkdir()
    mod = load_module(sub, name, SOURCE.format(name=name, image=image, steps=steps))
    mod.app._config = config
    started = time.perf_counter()
    await mod.app.ensure_ready()
    version = await mod.where()
    took = time.perf_counter() - started
    client = ControlClient(config.control_address or "", config.api_key or "", None)
    try:
        listing = await client.list_deployments(name)
        (worker,) = listing.deployments[0].endpoints[0].workers
        log = await client.worker_logs(worker.worker_id)
    finally:
        await client.close()
    await mod.app.close()
    return took, f"{version}\n{log}"


async def _deployments() -> dict[str, Any]:
    trixie = ensure_trixie_image()
    bookworm = ensure_images()[0]
    nonce = uuid.uuid4().hex[:12]
    step = f'image.run_script("echo {nonce} > /opt/marker")'
    with tempfile.TemporaryDirectory(prefix="vastrpc-bench-images-") as tmp:
        folder = Path(tmp)
        async with control_service(folder / "home", "--provider", "podman") as control:
            config = ClientConfig(
                control_address=control.address, api_key=control.config.api_key, home=control.home, ready_timeout=180
            )
            figures: dict[str, Any] = {}
            figures["bookworm (host's 3.11)"], _ = await _cold(folder, config, bookworm)
            figures["trixie 3.13, first"], out = await _cold(folder, config, trixie)
            assert out.startswith("3.13"), out[:200]
            figures["trixie 3.13, second"], _ = await _cold(folder, config, trixie)
            figures["run_script, first"], out = await _cold(folder, config, bookworm, step)
            built = re.search(r"build steps: (\S+) built in ([0-9.]+)s", out)
            assert built is not None, out[-2000:]
            figures["build alone"] = float(built.group(2))
            figures["run_script, second"], out = await _cold(folder, config, bookworm, step)
            assert "build steps: reusing" in out, out[-2000:]
    # The bench's derived image (its step holds a fresh nonce: no one else uses it).
    subprocess.run(["podman", "rmi", "-f", built.group(1)], env=_env(), capture_output=True, check=False)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    figures["runtime"] = _runtime()
    figures["cold_start"] = asyncio.run(_deployments())
    print(f"{figures['date']}, {figures['machine']}\n")
    print("| measure | seconds |\n|---|---|")
    for label, seconds in figures["runtime"].items():
        print(f"| vastrpc's runtime for Python 3.13, {label} | {seconds:.2f} |")
    for label, seconds in figures["cold_start"].items():
        what = "the derived image's build (its log)" if label.endswith("alone") else f"cold start, {label}"
        print(f"| {what} | {seconds:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
