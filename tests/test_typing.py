"""Typing: mypy is clean on vastrpc/, and `await square(5)` is typed as the function's return type."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SAMPLE = textwrap.dedent(
    """
    from vastrpc import Deployment

    app = Deployment(name="typed")

    @app.remote(benchmark_dataset=[{"x": 1}])
    async def square(x: int) -> int:
        return x * x

    async def main() -> None:
        reveal_type(await square(5))
        reveal_type((await square.call_with_info(5)).worker_id)
        await square("five")
    """
)


def _mypy(*targets: str, cache: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache)]
    return subprocess.run([*argv, *targets], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_mypy_is_clean_on_the_package(tmp_path: Path) -> None:
    result = _mypy("vastrpc", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_remote_calls_are_typed_as_the_function(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE)
    out = _mypy(str(sample), cache=tmp_path / "cache").stdout
    assert 'Revealed type is "int"' in out
    assert 'Revealed type is "str"' in out
    assert 'Argument 1 to "__call__" of "RemoteFunction" has incompatible type "str"; expected "int"' in out
