"""Loads a deployment file by path and deploys what it defines: the ``vastrpc deploy FILE`` command."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

from vastrpc._errors import DefinitionError
from vastrpc.deployment import Deployment


def load_deployments(path: Path) -> list[Deployment]:
    """Import a deployment file as a top-level module (its folder on ``sys.path``) and return its Deployments."""
    path = path.resolve()
    name = path.stem
    if not name.isidentifier():
        raise DefinitionError(f"{path.name}: a deployment file's name must be a valid Python module name")
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DefinitionError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise DefinitionError(f"importing {path} raised {type(exc).__name__}: {exc}") from exc
    apps = [value for value in vars(module).values() if isinstance(value, Deployment)]
    if not apps:
        raise DefinitionError(f"{path} defines no vastrpc.Deployment at module level")
    return apps


async def cli_deploy(path: Path) -> int:
    """Deploy every Deployment in ``path``, printing each result; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    for app in load_deployments(path):
        try:
            result = await app.ensure_ready()
        finally:
            await app.close()
        print(
            f"{app.name}:{app.tag} ready — tier {result.tier} ({result.description}); endpoint {result.endpoint_id}, "
            f"revision {result.revision_id}, {result.ready_workers} worker(s), {result.seconds:.2f}s"
        )
    return 0
