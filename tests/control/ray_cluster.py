"""A real multi-node Ray cluster on this machine for tests: a head and a second node started with ``ray start``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ports import free_ports

# A token in ~/.ray would switch Ray to token authentication; these nodes and their drivers
# run without, whatever the machine holds (every process of the test sets the same mode).
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# The node that declares (fake) GPUs: what tests ask for and expect.
GPU_NODE_GPUS = 2
GPU_NODE_ACCELERATOR = "FAKEGPU"
GPU_NODE_LABELS = {"vastrpc.io/gpu-ram-gb": "24", "zone": "gpu"}
HEAD_LABELS = {"zone": "head"}


def ray_binary() -> str | None:
    """The ``ray`` command next to this interpreter (or on PATH), None when Ray is not installed."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else shutil.which("ray")


@dataclass
class RayNode:
    """One ``ray start --block`` process; stopping it stops the node's processes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False

    def stop(self) -> None:
        """SIGTERM the ``ray start --block`` process (it stops the node's processes), SIGKILL its group if stuck."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL every process of the node at once, as if its machine went away.

        The whole tree under ``ray start``: the raylet, Ray's workers (actors) and what they
        started in sessions of their own (worker agents, serving processes).
        """
        doomed = _descendants(self.process.pid)
        for pid in [self.process.pid, *doomed]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self.killed = True


@dataclass
class RayCluster:
    """A head node without GPUs and a second node with fake GPUs, on one machine.

    Attributes:
        address: ``127.0.0.1:PORT`` of the head's GCS (what ``--ray-address`` takes).
        root: The folder of the nodes' temp dirs and logs.
    """

    address: str
    root: Path
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables every driver of this cluster needs."""
        return dict(RAY_ENV)

    def run(self, code: str, timeout: float = 60) -> object:
        """Run ``code`` in a fresh driver connected to the cluster; it sets ``result``, returned decoded from JSON."""
        script = (
            "import json, ray\n"
            f"ray.init(address={self.address!r}, namespace='vastrpc', log_to_driver=False, logging_level='ERROR')\n"
            f"{code}\n"
            "print('RESULT=' + json.dumps(result))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, **RAY_ENV},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        for line in done.stdout.splitlines():
            if line.startswith("RESULT="):
                return json.loads(line.removeprefix("RESULT="))
        raise AssertionError(f"driver failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def logs(self) -> str:
        """The ``ray start`` output of every node (for failure messages)."""
        return "\n".join(f"--- {n.name}\n{n.log_path.read_text(errors='replace')}" for n in self.nodes)

    def start_gpu_node(self, name: str = "gpu", timeout: float = 120.0) -> RayNode:
        """Start (again) a node like the GPU node, named ``name`` (a new one each time); returns once it is alive."""
        ray = ray_binary()
        assert ray is not None
        gpu_labels = ",".join(f"{k}={v}" for k, v in GPU_NODE_LABELS.items())
        second = ["--address", self.address, "--num-cpus", "2", "--num-gpus", str(GPU_NODE_GPUS)]
        second += ["--resources", json.dumps({f"accelerator_type:{GPU_NODE_ACCELERATOR}": GPU_NODE_GPUS})]
        second += ["--labels", gpu_labels]
        alive = sum(1 for n in self.nodes if n.process.poll() is None)
        node = _start_node(name, ray, self.root, second)
        self.nodes.append(node)
        _wait_nodes(self, alive + 1, timeout)
        return node

    def stop(self) -> None:
        """Stop every node, the second one first, and remove the temp dirs."""
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_cluster() -> Iterator[RayCluster]:
    """A cluster started for a test module (``start_cluster``) and stopped after it; skips without Ray."""
    if ray_binary() is None:
        pytest.skip("the ray command is not installed: pip install 'vastrpc[ray]'")
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def _start_node(name: str, ray: str, root: Path, args: list[str]) -> RayNode:
    temp = root / name
    temp.mkdir(parents=True)
    log_path = root / f"{name}.log"
    # Fixed defaults would collide with another Ray on the machine: every listening port is chosen here.
    ports = [
        "--ray-client-server-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
        "--node-manager-port",
        "--object-manager-port",
    ]
    argv = [ray, "start", "--block", "--temp-dir", str(temp), "--disable-usage-stats", *args]
    for flag, port in zip(ports, free_ports(len(ports)), strict=True):
        argv += [flag, str(port)]
    argv += ["--object-store-memory", str(100_000_000)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **RAY_ENV},
            start_new_session=True,
        )
    return RayNode(name, process, log_path)


def start_cluster(timeout: float = 120.0) -> RayCluster:
    """Start the head (2 CPUs, no GPU) and the GPU node (2 CPUs, 2 fake GPUs); returns once both are alive.

    Raises:
        RuntimeError: ``ray`` is not installed, or the nodes did not come up within ``timeout``.
    """
    ray = ray_binary()
    if ray is None:
        raise RuntimeError("the ray command is not installed: pip install 'vastrpc[ray]'")
    # The system's temp folder, not pytest's deeper one: Ray's unix sockets live under it, and
    # their paths are limited to about 100 bytes.
    root = Path(tempfile.mkdtemp(prefix="vr-ray-"))
    port, dashboard_port = free_ports(2)
    cluster = RayCluster(f"127.0.0.1:{port}", root)
    labels = ",".join(f"{k}={v}" for k, v in HEAD_LABELS.items())
    head = ["--head", "--port", str(port), "--num-cpus", "2", "--num-gpus", "0", "--labels", labels]
    head += ["--include-dashboard=false", "--dashboard-port", str(dashboard_port)]
    try:
        cluster.nodes.append(_start_node("head", ray, root, head))
        _wait_nodes(cluster, 1, timeout)
        cluster.start_gpu_node("gpu", timeout)
    except BaseException:
        logs = cluster.logs()
        cluster.stop()
        raise RuntimeError(f"the Ray cluster did not start:\n{logs}") from None
    return cluster


def _descendants(root: int) -> list[int]:
    """The pids of every process below ``root`` (children, theirs, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_nodes(cluster: RayCluster, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            if not node.killed and node.process.poll() is not None:
                raise RuntimeError(f"ray start ({node.name}) exited with {node.process.returncode}")
        try:
            alive = cluster.run("result = sum(1 for n in ray.nodes() if n['Alive'])", timeout=60)
        except (AssertionError, subprocess.TimeoutExpired):
            alive = 0
        if isinstance(alive, int) and alive >= count:
            return
        time.sleep(1)
    raise RuntimeError(f"fewer than {count} Ray node(s) alive after {timeout:g}s")
