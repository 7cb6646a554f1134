"""How image settings apply on a shared host: ports picked and named, the venv check, the deploy's warnings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vastrpc._hostimage import (
    HostPort,
    allocate_ports,
    copy_root,
    image_warnings,
    port_environment,
    python_for,
    venv_python,
)
from vastrpc.api.v1 import common_pb2, control_pb2

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
TCP, UDP = common_pb2.PORT_PROTOCOL_TCP, common_pb2.PORT_PROTOCOL_UDP


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def test_each_published_port_gets_a_free_host_port_of_its_protocol_on_the_serving_address() -> None:
    ports = allocate_ports(
        "127.0.0.1",
        [common_pb2.PublishedPort(port=8080, protocol=TCP), common_pb2.PublishedPort(port=8080, protocol=UDP)],
    )
    assert [(p.port, p.protocol, p.host) for p in ports] == [(8080, "tcp", "127.0.0.1"), (8080, "udp", "127.0.0.1")]
    for p, kind in zip(ports, (socket.SOCK_STREAM, socket.SOCK_DGRAM), strict=True):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", p.host_port))  # free for the deployment to take
        assert p.address == f"127.0.0.1:{p.host_port}"


def test_the_port_variables_name_the_host_port_in_vastrpcs_and_vasts_words() -> None:
    env = port_environment([HostPort(8080, "udp", 40001, "127.0.0.1"), HostPort(8080, "tcp", 40000, "127.0.0.1")])
    assert env == {
        "VASTRPC_PORT_8080": "40000",  # the TCP one where both are published
        "VAST_TCP_PORT_8080": "40000",
        "VAST_UDP_PORT_8080": "40001",
        "VASTRPC_PORTS_HOST": "127.0.0.1",
        "PUBLIC_IPADDR": "127.0.0.1",
    }
    assert port_environment([HostPort(53, "udp", 40002, "[::1]")])["VASTRPC_PORTS_HOST"] == "::1"
    assert port_environment([]) == {}
    assert copy_root(Path("/w/b")) == Path("/w/b/.vastrpc-absolute")


def test_a_venv_serves_only_when_it_exists_and_imports_vastrpc(tmp_path: Path) -> None:
    assert venv_python(str(tmp_path / "none"), _env())[0] is None
    assert "no virtual environment at" in venv_python(str(tmp_path / "none"), _env())[1]
    bare, usable = tmp_path / "bare", tmp_path / "usable"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(usable)], check=True, timeout=60
    )
    python, reason = venv_python(str(bare), _env())
    assert python is None and "cannot import vastrpc" in reason
    python, reason = venv_python(str(usable), _env())
    assert (python, reason) == (str(usable / "bin" / "python"), "")
    image = control_pb2.ImageSpec(python_environment=control_pb2.PythonEnvironment(venv_path=str(usable)))
    assert python_for(image, _env())[0] == str(usable / "bin" / "python")
    image.python_environment.venv_path = str(bare)
    chosen, note = python_for(image, _env())
    assert chosen == sys.executable and "cannot import vastrpc" in note and "instead" in note
    # Neither the local provider's deploy says a word about a usable venv.
    assert (
        image_warnings(
            control_pb2.ImageSpec(python_environment=control_pb2.PythonEnvironment(venv_path=str(usable))),
            provider="p",
            environ=_env(),
        )
        == []
    )


def test_the_warnings_say_what_a_shared_host_does_instead_of_each_setting() -> None:
    image = control_pb2.ImageSpec(
        absolute_copies=[
            control_pb2.AbsoluteCopy(bundle_path=".vastrpc-absolute/app/config.json", destination="/app/config.json")
        ],
        python_environment=control_pb2.PythonEnvironment(venv_path="/venv/does-not-exist"),
        published_ports=[common_pb2.PublishedPort(port=8080, protocol=TCP)],
    )
    local = image_warnings(image, provider="the local provider runs workers as processes on this host", environ=_env())
    assert len(local) == 3
    assert local[0].startswith("copy to /app/config.json: the local provider runs workers as processes on this host")
    assert "$VASTRPC_COPY_ROOT/app/config.json" in local[0] and "overwrite any file" in local[0]
    assert local[1].startswith("venv /venv/does-not-exist: there is no virtual environment at /venv/does-not-exist")
    assert sys.executable in local[1]
    assert local[2].startswith("publish_port 8080/tcp") and "$VASTRPC_PORT_8080" in local[2]
    ray = image_warnings(image, provider="the Ray provider runs workers on each node", environ=None)
    assert "where it exists there" in ray[1]  # checked by each worker on its node, not here
    system = control_pb2.ImageSpec(python_environment=control_pb2.PythonEnvironment(system_python=True))
    (note,) = image_warnings(system, provider="p", environ=_env())
    assert note.startswith("use_system_python(): p") and "a provider that runs the image" in note
