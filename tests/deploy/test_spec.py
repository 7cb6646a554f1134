"""The DeploymentSpec built from a deployment: its requirements travel as queries and enter the environment digest."""

from __future__ import annotations

from pathlib import Path

from vastrpc import Deployment
from vastrpc.api.v1 import control_pb2
from vastrpc.control.lifecycle.rules import validate_spec
from vastrpc.control.providers.requirements import spec_queries
from vastrpc.deploy.bundle import Bundle
from vastrpc.deploy.spec import build_spec, revision_digests
from vastrpc.query import H100_SXM, RTX_4090, RTX_5090, gpu_name, gpu_ram, num_gpus

BUNDLE = Bundle(digest="0" * 64, content_digest="1" * 64, files=("deploy.py",), module="deploy", size=1, members={})


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
