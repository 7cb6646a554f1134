"""The control service client with several addresses: the first that answers, and errors that say what to do."""

from __future__ import annotations

import time

import pytest

from vastrpc import ClientConfig, ControlUnavailableError
from vastrpc.client.control import ControlClient

pytestmark = pytest.mark.timeout(60)


async def test_connect_passes_over_a_dead_address_and_calls_go_to_the_live_one(control_service, tmp_path) -> None:
    config = ClientConfig(
        control_address=f"127.0.0.1:1,{control_service.address}", api_key=control_service.api_key, home=tmp_path
    )
    client = await ControlClient.connect(config)
    try:
        assert client.address == control_service.address
        assert list((await client.list_deployments()).deployments) == []
    finally:
        await client.close()


async def test_no_address_answering_lists_each_with_its_reason_within_the_timeout(tmp_path) -> None:
    both = ClientConfig(control_address="127.0.0.1:1,127.0.0.1:2", api_key="k", home=tmp_path, connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(
        ControlUnavailableError, match=r"any of the control services 127\.0\.0\.1:1, 127\.0\.0\.1:2"
    ) as e:
        await ControlClient.connect(both)
    assert time.monotonic() - started < 4
    assert "127.0.0.1:1: UNAVAILABLE" in str(e.value) and "127.0.0.1:2: UNAVAILABLE" in str(e.value)
    one = ClientConfig(control_address="127.0.0.1:1", api_key="k", home=tmp_path, connect_timeout=1)
    with pytest.raises(ControlUnavailableError, match="VASTRPC_CONTROL_ADDRESS=127.0.0.1:1,OTHER_HOST:PORT"):
        await ControlClient.connect(one)
