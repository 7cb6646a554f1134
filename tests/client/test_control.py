"""The control service client with several addresses: the first that answers, and errors that say what to do."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.control.helpers import make_spec
from vastrpc import ClientConfig, ControlUnavailableError
from vastrpc.api.v1 import control_pb2
from vastrpc.client.control import ControlClient
from vastrpc.deploy.embedded import stop_control

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


class _FreezingProxy:
    """A TCP proxy to the control service that can stop passing bytes, leaving connections open."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.frozen = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.frozen.is_set():
                await asyncio.Event().wait()  # stuck: the bytes go nowhere, the socket stays open
            writer.write(data)
            await writer.drain()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()


@pytest.mark.parametrize("control_service", [{"args": ["--watch-keepalive", "0.2"]}], indirect=True)
async def test_a_quiet_watch_lives_on_keepalives_and_a_stuck_one_fails_after_its_silence(control_service) -> None:
    proxy = _FreezingProxy(control_service.address)
    client = ControlClient(await proxy.start(), control_service.api_key)
    updates: list[control_pb2.WatchEndpointResponse] = []

    async def watch() -> None:
        async for update in client.watch(reg.endpoint_id, silence=1.0):
            updates.append(update)

    try:
        reg = await client.register(make_spec("quiet"))
        watching = asyncio.create_task(watch())
        # Three silences long with nothing changing: the keepalives hold it open, and the
        # watcher sees only the one real update.
        await asyncio.sleep(3.0)
        assert not watching.done()
        assert len(updates) == 1 and not updates[0].keepalive and updates[0].endpoint_id == reg.endpoint_id
        # The stream stops flowing (connection open, nothing through): the watch fails after its silence.
        proxy.frozen.set()
        started = time.monotonic()
        with pytest.raises(ControlUnavailableError, match="carried nothing for 1s"):
            await asyncio.wait_for(watching, 10)
        assert 0.8 < time.monotonic() - started < 3.0
    finally:
        await client.close()
        await proxy.close()


async def test_an_open_home_is_warned_about_at_the_callers_line(tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)  # made by someone else before, world-readable
    with pytest.warns(UserWarning, match=rf"{home} is open to other users \(mode 755\).*chmod 700 {home}") as seen:
        client = await ControlClient.connect(ClientConfig(home=home))
    try:
        # Shown at the user's line, not in a thread of vastrpc's.
        assert [w.filename for w in seen if w.category is UserWarning] == [__file__]
        assert list((await client.list_deployments()).deployments) == []
    finally:
        await client.close()
        assert await asyncio.to_thread(stop_control, home)
