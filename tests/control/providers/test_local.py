"""LocalProcessProvider: spawns worker processes with their token, logs their output, stops their groups."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from vastrpc.config import ControlConfig
from vastrpc.control.providers.local import LocalProcessProvider

from ..helpers import eventually, pid_gone

pytestmark = pytest.mark.timeout(20)

# Stands in for `python -m vastrpc worker`; gets `--control ADDR --worker-id ID --token-stdin` appended.
SCRIPT = r"""
import os, signal, subprocess, sys, time
mode = sys.argv[1]
print("argv", sys.argv[2:], "token", sys.stdin.readline().strip(), "home", os.environ["VASTRPC_HOME"],
      "unbuffered", os.environ.get("PYTHONUNBUFFERED"))
if mode == "exit":
    sys.exit(5)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("CHILD" + "-PID", child.pid, flush=True)
time.sleep(60)
"""


def _provider(tmp_path, mode: str, exits: list) -> LocalProcessProvider:
    return LocalProcessProvider(
        tmp_path,
        argv_prefix=[sys.executable, "-c", SCRIPT, mode],
        on_exit=lambda worker_id, pid, code: exits.append((worker_id, code)),
    )


async def test_worker_gets_token_and_log_and_exit_is_reported(tmp_path) -> None:
    exits: list = []
    provider = _provider(tmp_path, "exit", exits)
    pid = await provider.start_worker("w-1", "tok-123", "127.0.0.1:5")
    assert pid > 0
    await eventually(lambda: exits == [("w-1", 5)], what="on_exit called")
    text = provider.log_path("w-1").read_text()
    assert provider.log_path("w-1") == tmp_path / "logs" / "workers" / "w-1.log"
    assert "['--control', '127.0.0.1:5', '--worker-id', 'w-1', '--token-stdin'] token tok-123" in text
    assert f"home {tmp_path} unbuffered 1" in text
    assert "tok-123" not in text.splitlines()[0]  # the provider's own header line never shows the token
    assert not provider.is_running("w-1")


async def test_stop_worker_stops_the_whole_group(tmp_path) -> None:
    exits: list = []
    provider = _provider(tmp_path, "sleep", exits)
    pid = await provider.start_worker("w-1", "tok", "127.0.0.1:5")
    log = provider.log_path("w-1")
    await eventually(lambda: "CHILD-PID" in log.read_text(), what="the worker started its child")
    child = int(log.read_text().split("CHILD-PID ")[1].split()[0])
    assert provider.is_running("w-1")
    assert await provider.stop_worker("w-1", grace=5) is True
    await eventually(lambda: pid_gone(child), what="the worker's child is gone")
    await eventually(lambda: exits == [("w-1", -15)], what="on_exit called")
    assert pid_gone(pid)
    assert await provider.stop_worker("w-1", grace=5) is False
    assert await provider.stop_worker("w-unknown", grace=5) is False


async def test_stubborn_worker_is_killed_after_grace(tmp_path) -> None:
    exits: list = []
    provider = _provider(tmp_path, "stubborn", exits)
    await provider.start_worker("w-1", "tok", "127.0.0.1:5")
    await eventually(lambda: "CHILD-PID" in provider.log_path("w-1").read_text(), what="the worker is running")
    started = asyncio.get_running_loop().time()
    await provider.stop_all(grace=0.5)
    assert 0.4 < asyncio.get_running_loop().time() - started < 5
    assert exits == [("w-1", -9)]


async def test_workers_inherit_only_the_allow_list_and_get_their_token_on_stdin(tmp_path) -> None:
    exits: list = []
    secrets = {"VASTRPC_API_KEY": "vk_x", "AWS_SECRET_ACCESS_KEY": "a", "HF_TOKEN": "h", "PGPASSWORD": "pw"}
    script = "import os, sys; print(sorted(os.environ), 'stdin', sys.stdin.read().strip())"
    provider = LocalProcessProvider(
        tmp_path,
        argv_prefix=[sys.executable, "-c", script],
        environ={**os.environ, **secrets, "CALLER_VARIABLE": "1", "LANG": "C.UTF-8", "HTTPS_PROXY": "http://p:3128"},
        on_exit=lambda worker_id, pid, code: exits.append(code),
    )
    await provider.start_worker("w-1", "tok-9", "127.0.0.1:5")
    await eventually(lambda: exits == [0], what="the worker exited")
    names = provider.log_path("w-1").read_text().splitlines()[-1]
    assert "'PATH'" in names and "'LANG'" in names and "'HTTPS_PROXY'" in names and "'VASTRPC_HOME'" in names
    assert names.endswith("stdin tok-9")
    for name in (*secrets, "CALLER_VARIABLE", "VASTRPC_WORKER_TOKEN"):
        assert f"'{name}'" not in names


async def test_a_spare_agent_waits_without_a_worker_and_goes_with_the_provider(tmp_path) -> None:
    assert not _provider(tmp_path, "sleep", [])._spares_on  # a command of its own: no spare
    provider = LocalProcessProvider(tmp_path, spare=True)
    provider.prestart()
    logs = tmp_path / "logs" / "workers"
    await eventually(lambda: provider._spare is not None, what="the spare agent started")
    spare = provider._spare
    assert spare is not None and spare.proc.returncode is None and not provider.is_running(spare.log.stem)
    await provider.stop_all(1.0)
    assert spare.proc.returncode is not None and not spare.log.exists()
    provider.prestart()  # a stopped provider starts none again
    await asyncio.sleep(0.1)
    assert provider._spare is None and not list(logs.glob("spare-*.log"))


async def test_no_spare_agent_when_the_configuration_turns_it_off(tmp_path) -> None:
    config = ControlConfig(home=tmp_path, worker_user=None, spare_agent=False)
    provider = LocalProcessProvider.from_config(config)
    assert not provider._spares_on
    provider.prestart()
    await asyncio.sleep(0.3)
    assert provider._spare is None and not list((tmp_path / "logs" / "workers").glob("spare-*.log"))
    await provider.stop_all(1.0)
    assert LocalProcessProvider.from_config(ControlConfig(home=tmp_path, worker_user=None))._spares_on
