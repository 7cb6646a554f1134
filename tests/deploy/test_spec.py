"""The spec and digests of a deployment: autoscaling settings go in the spec and in the autoscaling digest only."""

from __future__ import annotations

import dataclasses

import pytest

from vastrpc import Deployment
from vastrpc.definition import DeploymentDefinition
from vastrpc.deploy.bundle import Bundle
from vastrpc.deploy.spec import build_spec, revision_digests

pytestmark = pytest.mark.timeout(10)

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


def definition(**autoscaling: float) -> DeploymentDefinition:
    app = Deployment(name="spec-test")

    @app.remote(benchmark_dataset=[{"x": 1}])
    async def square(x: int) -> int:
        return x * x

    app.configure_autoscaling(**autoscaling)  # type: ignore[arg-type]
    return app.describe()


def test_every_autoscaling_setting_is_in_the_spec() -> None:
    d = definition(**VAST)
    bundle = Bundle(digest="0" * 64, files=(), module="spec_test", size=0, members={}, data=b"")
    spec = build_spec(d, bundle, "api-key").autoscaling
    for name, value in VAST.items():
        assert getattr(spec, name) == value, name


@pytest.mark.parametrize("name", sorted(VAST))
def test_a_change_of_any_autoscaling_setting_changes_only_the_autoscaling_digest(name: str) -> None:
    base = definition()
    changed = dataclasses.replace(base, autoscaling=dataclasses.replace(base.autoscaling, **{name: VAST[name]}))
    d1 = revision_digests(base, "0" * 64, "api-key")
    d2 = revision_digests(changed, "0" * 64, "api-key")
    # Tier 1 (the control service's classify): bundle, code and environment the same.
    assert (d1.bundle, d1.code, d1.environment) == (d2.bundle, d2.code, d2.environment)
    assert d1.autoscaling != d2.autoscaling
