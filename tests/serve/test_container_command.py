"""The container engine's command line, storage check and provider choice, without running an engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from vastrpc._errors import DefinitionError, DeploymentError
from vastrpc.config import ControlConfig
from vastrpc.control.backends import open_provider
from vastrpc.serve.container import ContainerEngine, check_storage, runtime_mounts


def test_the_container_gets_its_env_by_name_its_mounts_and_the_runtime() -> None:
    engine = ContainerEngine("podman", runtime="runc")
    launch = engine.launch(
        worker_id="w-1",
        image="localhost/img:1",
        python="python3",
        version="3.13",
        workdir=Path("/h/work/w-1/r"),
        mounts=[("/h/work/w-1/r", "/h/work/w-1/r", False), ("/site", "/opt/vastrpc/site0", True)],
        env={"SECRET": "s3cr3t", "PYTHONPATH": "/x"},
        client_env={"PATH": "/usr/bin"},
    )
    argv = launch.argv
    assert argv[:3] == ["podman", "run", "--rm"] and "--runtime" in argv and "runc" in argv
    assert ["--network", "host"] == argv[argv.index("--network") : argv.index("--network") + 2]
    assert "/site:/opt/vastrpc/site0:ro" in argv and "/h/work/w-1/r:/h/work/w-1/r" in argv
    assert "s3cr3t" not in " ".join(argv)  # values travel in the engine command's environment
    assert launch.env["SECRET"] == "s3cr3t" and launch.env["PATH"] == "/usr/bin"
    assert argv[argv.index("localhost/img:1") + 1] == "python3" and argv[-1] == "3.13"
    assert "vastrpc.worker=w-1" in argv


def test_gpus_become_the_engines_device_options() -> None:
    assert ContainerEngine("podman", gpus=(0, 2)).gpu_options() == [
        "--device",
        "nvidia.com/gpu=0",
        "--device",
        "nvidia.com/gpu=2",
    ]
    assert ContainerEngine("docker", gpus=(1,)).gpu_options() == ["--gpus", "device=1"]
    assert ContainerEngine("podman").gpu_options() == []


def test_the_gpus_the_provider_assigned_reach_the_container_and_no_others() -> None:
    env = {"VASTRPC_CONTAINER_ENGINE": "podman", "VASTRPC_CONTAINER_RUNTIME": "runc"}
    assert ContainerEngine.from_env({**env, "NVIDIA_VISIBLE_DEVICES": "2,3"}).gpus == (2, 3)  # type: ignore[union-attr]
    for unassigned in ({}, {"NVIDIA_VISIBLE_DEVICES": "none"}, {"NVIDIA_VISIBLE_DEVICES": "all"}):
        assert ContainerEngine.from_env({**env, **unassigned}).gpus == ()  # type: ignore[union-attr]
    assert ContainerEngine.from_env({"NVIDIA_VISIBLE_DEVICES": "0"}) is None


def test_vastrpc_itself_is_mounted_first_on_the_containers_path() -> None:
    mounts, paths = runtime_mounts()
    assert mounts[0][0].endswith("vastrpc") and paths[0] == "/opt/vastrpc/pkg"
    assert (Path(mounts[0][0]) / "serve" / "process.py").exists()


def test_a_runtime_built_for_the_images_python_replaces_the_hosts_site_directories(tmp_path: Path) -> None:
    mounts, paths = runtime_mounts(tmp_path)
    assert mounts[1:] == [(str(tmp_path), "/opt/vastrpc/site0")] and paths == ["/opt/vastrpc/pkg", "/opt/vastrpc/site0"]


def test_storage_beyond_the_free_disk_says_both(tmp_path: Path) -> None:
    check_storage("1GB", tmp_path)
    check_storage("", tmp_path)
    with pytest.raises(DeploymentError, match=r"storage=1e\+09 GB per worker but only .* GB is free") as info:
        check_storage("1000000000GB", tmp_path)
    assert info.value.step == "placement"


def test_a_missing_engine_fails_the_provider_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DefinitionError, match="no docker command on this host's PATH"):
        open_provider(ControlConfig(home=tmp_path, provider="docker"))
    with pytest.raises(DefinitionError, match="--container-runtime applies to the Podman provider"):
        open_provider(ControlConfig(home=tmp_path, provider="local", container_runtime="runc"))
