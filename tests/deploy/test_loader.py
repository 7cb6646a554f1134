"""``vastrpc deploy FILE`` as a user runs it, against a real control service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vastrpc import DefinitionError
from vastrpc.deploy import load_deployments

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
