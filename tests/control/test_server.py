"""The control service process as an operator starts it: what it says about where it listens."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.timeout(60)


def test_a_wildcard_host_is_logged_as_such_with_the_address_local_clients_dial(control_processes, tmp_path) -> None:
    service = control_processes(tmp_path / "home", "wild", "--host", "0.0.0.0")
    port = service.address.rsplit(":", 1)[1]
    line = re.search(r"control service listening on .*", service.log_text()).group(0)  # type: ignore[union-attr]
    assert line.startswith(f"control service listening on 0.0.0.0:{port} (local clients dial 127.0.0.1:{port})")
    assert service.address == f"127.0.0.1:{port}"
    assert json.loads((tmp_path / "home" / "control.json").read_text())["address"] == service.address
