"""Workers import the vastrpc they were started with, never a `vastrpc/` in the caller's working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

REAL = Path(__file__).resolve().parents[2] / "vastrpc"


def _shadowing_folder(tmp_path: Path) -> list[str]:
    """The control service's working directory: it holds a `vastrpc` package that must never be imported."""
    fake = tmp_path / "project" / "vastrpc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('the vastrpc/ of the working directory was imported')\n")
    (fake / "__main__.py").write_text("raise SystemExit('the vastrpc/ of the working directory was run')\n")
    return []


@pytest.mark.parametrize("control_service", [{"setup": _shadowing_folder, "cwd": "project"}], indirect=True)
async def test_workers_ignore_a_vastrpc_folder_in_the_working_directory(project, control_service) -> None:
    mod = project("""
import os
import sys
import vastrpc
from vastrpc import Deployment

app = Deployment(name="{name}")

@app.remote(benchmark_dataset=[{{}}])
async def where() -> dict:
    return {{"vastrpc": vastrpc.__file__, "cwd": os.getcwd(), "path0": sys.path[0]}}
""")
    answer = await mod.where()
    assert Path(answer["vastrpc"]).resolve().parent == REAL, answer
    (worker,) = await project.workers(mod.app)
    log = await project.logs(worker["worker_id"])
    assert "working directory was" not in log and "working directory was" not in control_service.log_text()
    # The serving process runs in its bundle, which is first on its path (the deployment imports from it).
    assert answer["path0"] == answer["cwd"] != str(control_service.home.parent / "project")
