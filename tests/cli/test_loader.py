"""``vastrpc deploy FILE`` as a user runs it, against a real control service."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vastrpc import DefinitionError
from vastrpc.cli.loader import load_deployments

ROOT = Path(__file__).resolve().parents[2]


def test_load_deployments_errors_are_clear(tmp_path: Path) -> None:
    empty = tmp_path / "nothing_here.py"
    empty.write_text("x = 1\n")
    with pytest.raises(DefinitionError, match="defines no vastrpc.Deployment"):
        load_deployments(empty)
    broken = tmp_path / "broken_dep.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(DefinitionError, match="boom at import"):
        load_deployments(broken)


@pytest.mark.e2e
def test_cli_deploy_then_tier0(control_service) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ)
    env.update(VASTRPC_CONTROL_ADDRESS=control_service.address, VASTRPC_API_KEY=control_service.api_key)
    argv = [sys.executable, "-m", "vastrpc", "deploy", str(ROOT / "examples" / "quickstart" / "deploy.py")]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "quickstart:default ready — tier 4" in first.stdout
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "tier 0" in second.stdout
    assert "upload: skipped" in second.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "vastrpc", "deploy", "missing.py"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1 and "no such file" in bad.stderr


@pytest.mark.e2e
def test_two_clients_deploying_at_once_get_one_endpoint_and_one_worker(control_service, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "twice.py").write_text(
        "from vastrpc import Deployment\n"
        "app = Deployment(name='twice')\n"
        "app.image('python:3.11-slim').secrets(TOKEN='same-secret')\n"
        "@app.remote(benchmark_dataset=[{}])\n"
        "async def f() -> int:\n"
        "    return 1\n"
    )
    env = dict(os.environ)
    env.update(VASTRPC_CONTROL_ADDRESS=control_service.address, VASTRPC_API_KEY=control_service.api_key)
    argv = [sys.executable, "-m", "vastrpc", "deploy", str(project / "twice.py")]
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    printed = "\n".join(out for out, _ in outputs)
    endpoints = set(re.findall(r"endpoint (e-[0-9a-f]+)", printed))
    revisions = set(re.findall(r"revision (r-[0-9a-f]+)", printed))
    assert len(endpoints) == 1 and len(revisions) == 1, outputs
    listing = subprocess.run(
        [sys.executable, "-m", "vastrpc", "ls", "--json", "twice"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    (deployment,) = json.loads(listing.stdout)
    (endpoint,) = deployment["endpoints"]
    live = [w for w in endpoint.get("workers", []) if w.get("state") != "WORKER_STATE_STOPPED"]
    assert len(live) == 1, endpoint
