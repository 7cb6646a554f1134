"""Turns a deployment's definition and bundle into the DeploymentSpec the control service stores, with its digests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from vastrpc._hostimage import PORT_PROTOCOL_VALUES
from vastrpc._secrets import seal, secret_digest
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.definition import DeploymentDefinition
from vastrpc.deploy.bundle import Bundle
from vastrpc.image import Image, absolute_copy_bundle_path
from vastrpc.query import Query


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def revision_digests(
    app: DeploymentDefinition, bundle_digest: str, secret_key: str, *, content_digest: str = ""
) -> control_pb2.RevisionDigests:
    """The digests the control service compares to pick an update tier.

    The code digest is made of ``content_digest`` (the bundle's files with the deployment
    file's in-place settings blanked, ``Bundle.content_digest``), so an edit of only
    ``configure_autoscaling(...)``, ``ttl`` or ``version_label`` in the file is a settings
    change (tier 1), not a code change; without it, of the bundle's digest.

    Secrets enter the environment digest only as an HMAC keyed with ``secret_key`` (the
    API key), so a changed secret changes the digest without its value being readable
    from it (see vastrpc/_secrets.py for the whole rule).
    """
    image = app.image
    secrets = {k: secret_digest(secret_key, k, v) for k, v in image.secret_vars.items()}
    a = app.autoscaling
    return control_pb2.RevisionDigests(
        bundle=bundle_digest,
        code=_digest(
            [
                content_digest or bundle_digest,
                image.pip_packages,
                image.apt_packages,
                image.startup_commands,
                image.startup_timeout,
                _function_options(app),
            ]
        ),
        environment=_digest(
            [image.from_image, image.env_vars, _queries_digested(app), secrets, image.storage, *_runtime_digested(app)]
        ),
        # Every setting applied in place, without touching a worker (tier 1): autoscaling, ttl, label.
        autoscaling=_digest(
            [
                a.min_workers,
                a.max_workers,
                a.cold_workers,
                a.target_util,
                a.inactivity_timeout,
                a.min_load,
                a.min_cold_load,
                a.cold_mult,
                a.max_queue_time,
                a.target_queue_time,
                app.ttl,
                app.version_label,
            ]
        ),
    )


def _queries_digested(app: DeploymentDefinition) -> Any:
    """The requirements as the environment digest takes them (``{}`` with none, as before queries existed)."""
    return [[q.column, q.op.name, q.texts()] for q in app.image.requirements] or {}


def _runtime_digested(app: DeploymentDefinition) -> list[Any]:
    """The Python environment and published ports as the environment digest takes them (nothing when unset)."""
    image = app.image
    if image.venv_path is None and not image.system_python and not image.published_ports:
        return []  # the digest of an image without them stays what it was before they existed
    return [[image.venv_path or "", image.system_python], sorted([n, p] for n, p in image.published_ports)]


def python_environment(image: Image) -> control_pb2.PythonEnvironment | None:
    """``Image.venv`` / ``Image.use_system_python`` as the contract carries them; None when neither was called."""
    if image.venv_path is None and not image.system_python:
        return None
    return control_pb2.PythonEnvironment(venv_path=image.venv_path or "", system_python=image.system_python)


def published_port_messages(image: Image) -> list[common_pb2.PublishedPort]:
    """``Image.publish_port`` as the contract carries it (no address: each worker has its own)."""
    return [common_pb2.PublishedPort(port=n, protocol=PORT_PROTOCOL_VALUES[p]) for n, p in image.published_ports]


def absolute_copy_messages(image: Image) -> list[control_pb2.AbsoluteCopy]:
    """Each ``Image.copy`` with an absolute destination: where the bundle holds it, and that destination."""
    out: dict[str, control_pb2.AbsoluteCopy] = {}
    for _, dest in image.copies:
        if PurePosixPath(dest).is_absolute() and dest not in out:
            out[dest] = control_pb2.AbsoluteCopy(bundle_path=absolute_copy_bundle_path(dest), destination=dest)
    return list(out.values())


def requirement_messages(queries: Sequence[Query]) -> list[control_pb2.Requirement]:
    """The queries as the contract carries them."""
    return [
        control_pb2.Requirement(
            column=q.column,
            op=f"REQUIREMENT_OPERATOR_{q.op.name}",
            values=q.texts(),
        )
        for q in queries
    ]


def _function_options(app: DeploymentDefinition) -> list[Any]:
    return [
        [
            f.name,
            f.options.max_concurrency,
            f.options.timeout,
            f.options.benchmark_runs,
            f.options.max_queue,
            f.options.max_queue_time,
            f.options.generator,
            f.options.max_argument_bytes,
        ]
        for f in sorted(app.functions.values(), key=lambda f: f.name)
    ]


def build_spec(app: DeploymentDefinition, bundle: Bundle, secret_key: str) -> control_pb2.DeploymentSpec:
    """The full spec of this revision of ``app``."""
    image = app.image
    a = app.autoscaling
    return control_pb2.DeploymentSpec(
        name=app.name,
        tag=app.tag,
        version_label=app.version_label,
        module=bundle.module,
        image=control_pb2.ImageSpec(
            from_image=image.from_image,
            pip_packages=image.pip_packages,
            apt_packages=image.apt_packages,
            env=image.env_vars,
            sealed_secrets=seal(secret_key, image.secret_vars),
            startup_commands=image.startup_commands,
            queries=requirement_messages(image.requirements),
            storage=f"{image.storage:g}GB",
            startup_timeout=image.startup_timeout,
            python_environment=python_environment(image),
            published_ports=published_port_messages(image),
            absolute_copies=absolute_copy_messages(image),
        ),
        autoscaling=control_pb2.AutoscalingSpec(
            min_workers=a.min_workers,
            max_workers=a.max_workers,
            cold_workers=a.cold_workers,
            target_util=a.target_util,
            inactivity_timeout=a.inactivity_timeout,
            min_load=a.min_load,
            min_cold_load=a.min_cold_load,
            cold_mult=a.cold_mult,
            max_queue_time=a.max_queue_time,
            target_queue_time=a.target_queue_time,
        ),
        functions=[
            control_pb2.FunctionSpec(
                name=f.name,
                max_concurrency=f.options.max_concurrency,
                has_benchmark=f.options.has_benchmark,
                timeout=f.options.timeout or 0.0,
                is_generator=f.options.generator,
                max_queue=f.options.max_queue,
                max_queue_time=f.options.max_queue_time,
                max_argument_bytes=f.options.max_argument_bytes,
            )
            for f in app.functions.values()
        ],
        ttl=app.ttl or 0.0,
        digests=revision_digests(app, bundle.digest, secret_key, content_digest=bundle.content_digest),
        bundle_size=bundle.size,
    )
