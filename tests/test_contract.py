"""The protobuf contract: buf lint is clean and the committed stubs match a fresh generation."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_buf_lint_passes() -> None:
    buf = shutil.which("buf")
    if buf is None:
        pytest.fail("buf is not installed: pip install buf-bin (part of the [test] extra)")
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format_is_clean() -> None:
    buf = shutil.which("buf")
    if buf is None:
        pytest.fail("buf is not installed: pip install buf-bin (part of the [test] extra)")
    result = subprocess.run(
        [buf, "format", "--diff", "--exit-code"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, "run `buf format -w`:\n" + result.stdout + result.stderr


def test_no_pb2_type_in_public_api() -> None:
    import vastrpc

    for name in vastrpc.__all__:
        obj = getattr(vastrpc, name)
        assert "_pb2" not in getattr(obj, "__module__", ""), name


def test_buf_breaking_against_the_previous_commit() -> None:
    buf = shutil.which("buf")
    if buf is None:
        pytest.fail("buf is not installed: pip install buf-bin (part of the [test] extra)")
    previous = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "HEAD~1"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    if previous.returncode != 0:
        pytest.skip("this clone has no previous commit to compare the contract with (a shallow clone?)")
    result = subprocess.run(
        [buf, "breaking", "--against", f".git#ref={previous.stdout.strip()}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, "a breaking change to vastrpc.api.v1 needs a new version:\n" + result.stdout
