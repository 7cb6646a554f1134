"""Tests for vastrpc.serve.install: pip/apt installs and startup commands."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from vastrpc._errors import DeploymentError
from vastrpc.serve.install import (
    PythonTarget,
    _installer,
    ensure_apt,
    ensure_pip_env,
    requirements_key,
    run_startup_commands,
)

# --------------------------------------------------------------------------- pip


def test_requirements_key() -> None:
    assert requirements_key(["b", " a ", "a", ""]) == requirements_key(["a", "b"])
    assert requirements_key(["a"]) != requirements_key(["a==1"])
    assert requirements_key([]) == requirements_key([""]) == requirements_key(["  "])
    assert len(requirements_key([])) == 64


def test_another_python_gets_its_own_environment_of_wheels_for_its_version_and_platform(tmp_path: Path) -> None:
    target = PythonTarget(version=(3, 13), machine="x86_64", manylinux="manylinux_2_28")
    assert requirements_key(["six"], target) != requirements_key(["six"])
    other = PythonTarget(version=(3, 12), machine="x86_64", manylinux="manylinux_2_28")
    assert requirements_key(["six"], target) != requirements_key(["six"], other)
    argv, tool = _installer(tmp_path, ["six"], target)
    assert tool == "uv" and argv[-1] == "six" and "--python" not in argv
    joined = " ".join(argv)
    assert "--python-version 3.13 --python-platform x86_64-manylinux_2_28 --only-binary :all:" in joined


def test_pip_env_empty_is_none(tmp_path: Path) -> None:
    assert ensure_pip_env([], tmp_path) is None
    assert ensure_pip_env([" "], tmp_path) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(300)
def test_pip_env_installs_once(tmp_path: Path) -> None:
    lines: list[str] = []
    site = ensure_pip_env(["six"], tmp_path, log=lines.append, timeout=240)
    assert site is not None and site.name == "site"
    assert site.parent.name == requirements_key(["six"])
    assert (site / "six.py").is_file()
    assert any("installing pip packages" in line for line in lines)
    mtime = site.stat().st_mtime_ns
    # No temporary folders left behind.
    assert sorted(p.name for p in site.parent.iterdir()) == [".lock", "site"]

    second: list[str] = []
    start = time.perf_counter()
    again = ensure_pip_env([" six", "six"], tmp_path, log=second.append, timeout=240)
    assert time.perf_counter() - start < 0.5
    assert again == site
    assert site.stat().st_mtime_ns == mtime
    assert not any("installing" in line for line in second)
    assert any("already installed" in line for line in second)


@pytest.mark.timeout(300)
def test_pip_env_installs_from_uvs_cache_alone_when_it_holds_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, tool = _installer(tmp_path, ["six"], None)
    if tool != "uv":
        pytest.skip("uv is not installed")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    first: list[str] = []
    site = ensure_pip_env(["six==1.16.0"], tmp_path / "a", log=first.append, timeout=240)
    assert site is not None and (site / "six.py").is_file()
    assert any("asking the package index" in line for line in first)  # a new cache lacks it
    second: list[str] = []
    site = ensure_pip_env(["six==1.16.0"], tmp_path / "b", log=second.append, timeout=240)
    assert site is not None and (site / "six.py").is_file()
    assert not any("asking the package index" in line for line in second)
    assert sorted(p.name for p in site.parent.iterdir()) == [".lock", "site"]


@pytest.mark.timeout(300)
def test_pip_env_concurrent_installs_once(tmp_path: Path) -> None:
    logs: list[list[str]] = [[], []]
    results: list[Path | None] = [None, None]

    def worker(i: int) -> None:
        results[i] = ensure_pip_env(["idna"], tmp_path, log=logs[i].append, timeout=240)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=260)
    assert results[0] is not None and results[0] == results[1]
    installs = sum(any("installing pip packages" in line for line in log) for log in logs)
    assert installs == 1


@pytest.mark.timeout(300)
def test_pip_env_bad_package(tmp_path: Path) -> None:
    name = "vastrpc-no-such-package-xyz==0.0.1"
    lines: list[str] = []
    with pytest.raises(DeploymentError) as info:
        ensure_pip_env([name], tmp_path, log=lines.append, timeout=240)
    err = info.value
    assert err.step == "install"
    assert name in str(err)
    assert err.log_tail.strip()
    assert lines  # output was streamed too
    env_dir = tmp_path / requirements_key([name])
    assert not (env_dir / "site").exists()
    assert [p.name for p in env_dir.iterdir()] == [".lock"]  # temp folder cleaned up


# --------------------------------------------------------------------------- apt


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs a Debian-based host")
def test_apt_already_installed(tmp_path: Path) -> None:
    lines: list[str] = []
    start = time.perf_counter()
    ensure_apt(["coreutils"], log=lines.append, timeout=30)
    assert time.perf_counter() - start < 5
    assert any("already installed" in line for line in lines)
    ensure_apt([], log=lines.append)


@pytest.mark.timeout(200)
def test_apt_missing_package_named() -> None:
    name = "vastrpc-no-such-apt-package-xyz"
    with pytest.raises(DeploymentError) as info:
        ensure_apt([name], log=lambda _line: None, timeout=120)
    assert info.value.step == "install"
    assert name in str(info.value)


# --------------------------------------------------------------------------- startup


@pytest.mark.timeout(30)
def test_startup_commands_success(tmp_path: Path) -> None:
    lines: list[str] = []
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GREETING": "hello-from-env"}
    run_startup_commands(
        ['echo "$GREETING" > out.txt', "echo second-ran", 'test -z "$HOME_SHOULD_NOT_LEAK"'],
        cwd=tmp_path,
        env={**env, "HOME_SHOULD_NOT_LEAK": ""},
        log=lines.append,
    )
    assert (tmp_path / "out.txt").read_text() == "hello-from-env\n"
    assert "second-ran" in lines


@pytest.mark.timeout(30)
def test_startup_commands_only_given_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VASTRPC_TEST_OUTER", "leak")
    run_startup_commands(
        ['echo "[$VASTRPC_TEST_OUTER]" > o.txt'], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, log=lambda _l: None
    )
    assert (tmp_path / "o.txt").read_text() == "[]\n"


@pytest.mark.timeout(30)
def test_startup_command_failure(tmp_path: Path) -> None:
    secret = "sk-very-secret-value"
    with pytest.raises(DeploymentError) as info:
        run_startup_commands(
            ["true", "echo boom; exit 3", "touch never.txt"],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "API_KEY": secret},
            log=lambda _l: None,
        )
    err = info.value
    assert err.step == "startup"
    assert "exit 3" in str(err) and "code 3" in str(err)
    assert "boom" in err.log_tail
    assert secret not in str(err)
    assert not (tmp_path / "never.txt").exists()


@pytest.mark.timeout(30)
def test_startup_command_timeout_kills_group(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(DeploymentError, match="timed out after 1 s") as info:
        # The background sleep shares the process group: it must die too.
        run_startup_commands(
            ["sleep 30 & echo started; wait"],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin"},
            log=lambda _l: None,
            timeout=1,
        )
    assert info.value.step == "startup"
    assert "started" in info.value.log_tail
    assert time.perf_counter() - start < 10
