"""Loads a deployment file by path and deploys what it defines: the ``vastrpc deploy FILE`` command."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vastrpc._errors import DefinitionError
from vastrpc._mode import deferring_deploys
from vastrpc.deployment import Deployment

if TYPE_CHECKING:
    from vastrpc.deploy.flow import DeployProgress, DeployResult


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
        with deferring_deploys():  # the command deploys with its own flags, below
            spec.loader.exec_module(module)
    except Exception as exc:
        raise DefinitionError(f"importing {path} raised {type(exc).__name__}: {exc}") from exc
    apps = [value for value in vars(module).values() if isinstance(value, Deployment)]
    if not apps:
        raise DefinitionError(f"{path} defines no vastrpc.Deployment at module level")
    return apps


async def deploy_app(
    app: Deployment, *, progress: DeployProgress | None = None, overrides: Mapping[str, Any] | None = None
) -> DeployResult:
    """Deploy one app and wait until its workers are ready, keeping no connection afterwards.

    Args:
        app: The deployment.
        progress: Told about each step (``vastrpc deploy`` draws it).
        overrides: ClientConfig fields that replace the app's own (the command line's flags).

    Raises:
        VastrpcError: The deploy failed.
    """
    from vastrpc.deploy.flow import ensure_ready

    config = dataclasses.replace(app.client_config(), **dict(overrides or {}))
    # No app session is kept: the command exits once the workers are ready.
    session = await ensure_ready(app.describe(), config, progress=progress)
    await session.close()
    return session.result


async def cli_deploy(
    path: Path,
    *,
    progress: Callable[[Deployment], DeployProgress | None] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[tuple[Deployment, DeployResult]]:
    """Deploy every Deployment in ``path``, one after the other; returns what each deploy did.

    Args:
        path: The deployment file.
        progress: Makes the reporter told about each app's deploy.
        overrides: ClientConfig fields that replace each app's own.

    Raises:
        DefinitionError: The file cannot be imported or defines no Deployment.
        VastrpcError: A deploy failed; the apps before it stay deployed.
    """
    results: list[tuple[Deployment, DeployResult]] = []
    for app in load_deployments(path):
        reporter = progress(app) if progress is not None else None
        results.append((app, await deploy_app(app, progress=reporter, overrides=overrides)))
    return results
