"""docs/multi-machine.md's one-machine walkthrough, run as written: two Ray nodes, a control service, a GPU deploy."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ..ray_cluster import RAY_ENV, ray_binary

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[3]
SECTION = "## Trying it on one machine"


def _blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "multi-machine.md").read_text().split(SECTION, 1)[1]
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def _kill_everything_under(root: Path) -> None:
    """SIGKILL every process whose command line names ``root`` (the nodes' and the service's)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if str(root).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)


def test_the_one_machine_walkthrough_runs_as_written() -> None:
    ray = ray_binary()
    if ray is None:
        pytest.fail("the ray command is not installed: pip install 'vastrpc[ray]' (part of the [test] extra)")
    setup, run = _blocks("bash")
    deploy, client = _blocks("python")
    assert deploy.startswith("# deploy.py") and client.startswith("# client.py")
    # A short $HOME: Ray's unix sockets live under its temp dirs, and their paths are limited.
    home = Path(tempfile.mkdtemp(prefix="vr-wt-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASTRPC_")}
    tools = os.pathsep.join(dict.fromkeys([str(Path(ray).parent), str(Path(sys.executable).parent)]))
    env.update(RAY_ENV, HOME=str(home), PATH=f"{tools}{os.pathsep}{env.get('PATH', '')}")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    log = home / "walkthrough.log"
    try:
        with log.open("ab") as out:
            started = subprocess.run(
                ["bash", "-e", "-c", setup], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=180
            )
        assert started.returncode == 0, log.read_text()
        info_path = home / "vastrpc-ray" / "control.json"
        deadline = time.monotonic() + 60
        while not info_path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert info_path.exists(), log.read_text()
        assert json.loads(info_path.read_text())["address"]

        project = home / "project"
        project.mkdir()
        (project / "deploy.py").write_text(deploy)
        (project / "client.py").write_text(client)
        lines = [line.split("#", 1)[0].strip() for line in run.strip().splitlines()]
        called = subprocess.run(
            ["bash", "-e", "-c", lines[0]], cwd=project, env=env, capture_output=True, text=True, timeout=180
        )
        assert called.returncode == 0, called.stderr + log.read_text()
        # The worker holds one of the GPU node's two (fake) GPUs: the head has none.
        assert re.fullmatch(r"CUDA_VISIBLE_DEVICES=[01]", called.stdout.strip()), called.stdout
        listed = subprocess.run(
            ["bash", "-e", "-c", lines[1]], cwd=project, env=env, capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0 and re.search(r"gpu-demo:default\s+ready", listed.stdout), listed.stdout
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [sys.executable, "-m", "vastrpc", "control", "stop", "--home", str(home / "vastrpc-ray")],
                env=env,
                capture_output=True,
                timeout=60,
            )
        _kill_everything_under(home)
        shutil.rmtree(home, ignore_errors=True)
