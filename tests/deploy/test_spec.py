"""The DeploymentSpec: queries enter the environment digest, autoscaling settings the autoscaling digest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vastrpc import Deployment
from vastrpc._errors import DefinitionError
from vastrpc._manifest import FileEntry, encode_manifest
from vastrpc.api.v1 import common_pb2, control_pb2
from vastrpc.control.lifecycle.rules import validate_spec
from vastrpc.control.providers.requirements import spec_queries
from vastrpc.definition import DeploymentDefinition
from vastrpc.deploy.bundle import Bundle
from vastrpc.deploy.spec import _digest, build_spec, revision_digests
from vastrpc.query import H100_SXM, RTX_4090, RTX_5090, gpu_name, gpu_ram, num_gpus

BUNDLE = Bundle(
    content_digest="1" * 64,
    module="deploy",
    manifest=encode_manifest([FileEntry("deploy.py", 0o644, 1, "2" * 64)]),
    members={},
)


def _app() -> Deployment:
    app = Deployment(name="spec-test")

    @app.remote(benchmark_dataset=[{"x": 1}])
    async def f(x: int) -> int:
        return x

    app.module_file = Path(__file__)  # as if it were the deployment module
    return app


def test_the_spec_carries_the_queries_and_the_service_reads_back_the_same() -> None:
    app = _app()
    app.image("python:3.11-slim").require(gpu_name.in_([RTX_4090, RTX_5090]), gpu_ram >= 48, gpus=1)
    spec = build_spec(app.describe(), BUNDLE, "api-key")
    wire = control_pb2.DeploymentSpec.FromString(spec.SerializeToString())
    assert [(r.column, control_pb2.RequirementOperator.Name(r.op), list(r.values)) for r in wire.image.queries] == [
        ("num_gpus", "REQUIREMENT_OPERATOR_GE", ["1"]),
        ("gpu_name", "REQUIREMENT_OPERATOR_IN", ["RTX 4090", "RTX 5090"]),
        ("gpu_ram", "REQUIREMENT_OPERATOR_GE", ["48"]),
    ]
    assert dict(wire.image.requirements) == {}  # the old map is no longer filled
    assert spec_queries(wire.image) == [num_gpus >= 1, gpu_name.in_([RTX_4090, RTX_5090]), gpu_ram >= 48]
    validate_spec(wire)


def test_a_changed_query_changes_the_environment_digest_only() -> None:
    app = _app()
    plain = revision_digests(app.describe(), BUNDLE.digest, "k")
    app.image("python:3.11-slim").require(gpu_name == H100_SXM)
    h100 = revision_digests(app.describe(), BUNDLE.digest, "k")
    app.image("python:3.11-slim").requirements[:] = [gpu_name == RTX_4090]
    rtx = revision_digests(app.describe(), BUNDLE.digest, "k")
    assert len({plain.environment, h100.environment, rtx.environment}) == 3  # tier 3 each time
    assert plain.code == h100.code == rtx.code and plain.autoscaling == h100.autoscaling == rtx.autoscaling


VAST = {
    "min_load": 100.0,
    "min_cold_load": 50.0,
    "cold_mult": 2.0,
    "max_queue_time": 12.0,
    "target_queue_time": 3.0,
    "inactivity_timeout": -1.0,
    "cold_workers": 2,
    "max_workers": 10,
    "target_util": 0.5,
}


def _autoscaled(**autoscaling: float) -> DeploymentDefinition:
    app = Deployment(name="spec-test")

    @app.remote(benchmark_dataset=[{"x": 1}])
    async def square(x: int) -> int:
        return x * x

    app.configure_autoscaling(**autoscaling)  # type: ignore[arg-type]
    return app.describe()


def test_every_autoscaling_setting_is_in_the_spec() -> None:
    d = _autoscaled(**VAST)
    bundle = BUNDLE
    spec = build_spec(d, bundle, "api-key").autoscaling
    for name, value in VAST.items():
        assert getattr(spec, name) == value, name


@pytest.mark.parametrize("name", sorted(VAST))
def test_a_change_of_any_autoscaling_setting_changes_only_the_autoscaling_digest(name: str) -> None:
    base = _autoscaled()
    changed = dataclasses.replace(base, autoscaling=dataclasses.replace(base.autoscaling, **{name: VAST[name]}))
    d1 = revision_digests(base, "0" * 64, "api-key")
    d2 = revision_digests(changed, "0" * 64, "api-key")
    # Tier 1 (the control service's classify): bundle, code and environment the same.
    assert (d1.bundle, d1.code, d1.environment) == (d2.bundle, d2.code, d2.environment)
    assert d1.autoscaling != d2.autoscaling


def test_python_environment_ports_and_absolute_copies_travel_in_the_image_spec() -> None:
    app = _app()
    image = app.image("python:3.11-slim").venv("/venv/main").publish_port(8080, "tcp").publish_port(53, "udp")
    image.copy("cfg.json", "/app/config.json").copy("models", "/data/models").copy("x.txt", "rel/x.txt")
    wire = control_pb2.DeploymentSpec.FromString(build_spec(app.describe(), BUNDLE, "k").SerializeToString())
    assert (wire.image.python_environment.venv_path, wire.image.python_environment.system_python) == (
        "/venv/main",
        False,
    )
    assert [(p.port, p.protocol, p.address) for p in wire.image.published_ports] == [
        (8080, common_pb2.PORT_PROTOCOL_TCP, ""),
        (53, common_pb2.PORT_PROTOCOL_UDP, ""),
    ]
    assert [(c.bundle_path, c.destination) for c in wire.image.absolute_copies] == [
        (".vastrpc-absolute/app/config.json", "/app/config.json"),
        (".vastrpc-absolute/data/models", "/data/models"),
    ]
    validate_spec(wire)
    plain = _app()
    assert not build_spec(plain.describe(), BUNDLE, "k").image.HasField("python_environment")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda i: setattr(i.python_environment, "system_python", True), "both venv and use_system_python"),
        (lambda i: setattr(i.python_environment, "venv_path", "venv"), "absolute path"),
        (lambda i: i.published_ports.add(port=70000, protocol=common_pb2.PORT_PROTOCOL_TCP), "1 to 65535"),
        (lambda i: i.published_ports.add(port=80), "tcp or udp"),
        (lambda i: i.absolute_copies.add(bundle_path=".vastrpc-absolute/x", destination="/../x"), "without '..'"),
        (lambda i: i.absolute_copies.add(bundle_path="deploy.py", destination="/app/x"), "must hold it at"),
    ],
)
def test_the_control_service_refuses_image_settings_no_image_records(change, match: str) -> None:  # type: ignore[no-untyped-def]
    app = _app()
    app.image("python:3.11-slim").venv("/venv/main")
    spec = build_spec(app.describe(), BUNDLE, "k")
    change(spec.image)
    with pytest.raises(DefinitionError, match=match):
        validate_spec(spec)


def test_python_environment_and_ports_enter_the_environment_digest_and_copies_the_bundle() -> None:
    app = _app()
    app.image("python:3.11-slim")
    plain = revision_digests(app.describe(), BUNDLE.digest, "k")
    app.image("python:3.11-slim").venv("/venv/main")
    venv = revision_digests(app.describe(), BUNDLE.digest, "k")
    app.image("python:3.11-slim").use_system_python()
    system = revision_digests(app.describe(), BUNDLE.digest, "k")
    app.image("python:3.11-slim").publish_port(8080, "tcp")
    port = revision_digests(app.describe(), BUNDLE.digest, "k")
    app.image("python:3.11-slim").publish_port(8080, "udp")
    udp = revision_digests(app.describe(), BUNDLE.digest, "k")
    # Without them the digest is what it was before they existed: upgrading is no tier 3.
    assert plain.environment == _digest(["python:3.11-slim", {}, {}, {}, 50.0])
    environments = {d.environment for d in (plain, venv, system, port, udp)}
    assert len(environments) == 5  # tier 3 each time
    assert len({d.code for d in (plain, venv, system, port, udp)}) == 1
    # The order ports were published in is no change.
    app.image("python:3.11-slim").publish_port(8443, "tcp").publish_port(8080, "tcp")
    one = revision_digests(app.describe(), BUNDLE.digest, "k").environment
    app.image("python:3.11-slim").publish_port(8080, "tcp").publish_port(8443, "tcp")
    assert revision_digests(app.describe(), BUNDLE.digest, "k").environment == one
    # A copy to an absolute path is bundle content: the bundle's digests decide (tier 2), not the environment.
    app.image("python:3.11-slim").copy("cfg.json", "/app/config.json")
    copied = revision_digests(app.describe(), "2" * 64, "k", content_digest="3" * 64)
    assert copied.environment == plain.environment and copied.code != plain.code
