"""The README's quick start, run as a user runs it: a fresh home, the embedded control service, one command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT / "examples" / "quickstart", env=env, capture_output=True, text=True, timeout=120
    )


def test_quickstart_runs_on_the_embedded_default(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASTRPC_")}
    env["VASTRPC_HOME"] = str(tmp_path / "home")
    try:
        run = _run([sys.executable, "client.py"], env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "square(5) = 25" in run.stdout
        assert "squares 0..9 = [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in run.stdout
        # Not a terminal and no logging configured: the deploy still says what it does, a line per step.
        assert "vastrpc: deploying quickstart:default" in run.stderr
        for step in ("package:", "hash:", "register:", "upload:", "provision:", "workers: 1/1 ready", "ready:"):
            assert step in run.stderr
        info = json.loads((tmp_path / "home" / "control.json").read_text())
        # The embedded default is encrypted: the service, its workers and the client speak TLS.
        assert info["tls"] is True and info["tls_ca"] == str(tmp_path / "home" / "tls" / "ca.pem")
        # A second run reuses the same embedded control service and changes nothing (tier 0).
        again = _run([sys.executable, "client.py"], env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "tier 0" in again.stdout
        # One switch silences it.
        quiet = _run([sys.executable, "client.py"], {**env, "VASTRPC_PROGRESS": "off"})
        assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
        assert json.loads((tmp_path / "home" / "control.json").read_text())["pid"] == info["pid"]
    finally:
        stop = _run([sys.executable, "-m", "vastrpc", "control", "stop"], env)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not (tmp_path / "home" / "control.json").exists()


def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    """The tour's deploy.py and client.py, copied from the README, run without any variable set."""
    tour = (ROOT / "README.md").read_text().split("## A short tour", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", tour, re.S)
    files = {block.splitlines()[0].removeprefix("# ").strip(): block for block in blocks[:2]}
    assert set(files) == {"deploy.py", "client.py"}, list(files)
    project = tmp_path / "tour"
    project.mkdir()
    for name, text in files.items():
        (project / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASTRPC_") and k != "HF_TOKEN"}
    env["VASTRPC_HOME"] = str(tmp_path / "home")
    try:
        run = subprocess.run(
            [sys.executable, "client.py"], cwd=project, env=env, capture_output=True, text=True, timeout=240
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.strip() == "25"
        assert "vastrpc: deploying hello:default" in run.stderr
    finally:
        subprocess.run([sys.executable, "-m", "vastrpc", "control", "stop"], env=env, capture_output=True, timeout=60)
