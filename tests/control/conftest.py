"""Fixtures for control service tests: a private PostgreSQL server and databases; control service processes."""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port
from vastrpc.config import ClientConfig

from .helpers import Client

REPO_ROOT = Path(__file__).resolve().parents[2]

# A server someone already runs (CI may start one): its admin URL, e.g.
# postgresql://postgres@127.0.0.1:5432/postgres. Unset: the session starts its own.
ENV_POSTGRES_URL = "VASTRPC_TEST_POSTGRES_URL"


@dataclass
class PostgresServer:
    """A PostgreSQL server tests may create databases on.

    Attributes:
        admin_url: The URL of its ``postgres`` database, as a superuser.
        log_path: Its log file (None for a server the session did not start).
    """

    admin_url: str
    log_path: Path | None = None

    def url(self, dbname: str) -> str:
        """The URL of database ``dbname`` on this server."""
        return self.admin_url.rsplit("/", 1)[0] + "/" + dbname

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by ``create_database``, whoever is still connected to it."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_bindir() -> Path | None:
    """The folder with PostgreSQL's server programs (initdb, pg_ctl), or None when none is installed."""
    candidates: list[str] = []
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    # Debian keeps the server programs in a versioned folder off PATH; the newest first.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).resolve().parent))
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on a free loopback port (trust auth), stopped after the session.

    PostgreSQL refuses to run as root: as root, the cluster runs as the ``postgres`` user
    (the Debian package creates it) from a folder that user owns. With
    ``VASTRPC_TEST_POSTGRES_URL`` set, that server is used instead.
    """
    if url := os.environ.get(ENV_POSTGRES_URL):
        yield PostgresServer(url)
        return
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb): install the postgresql package")
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        prefix = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="vastrpc-pg-"))
    if prefix:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, log = folder / "data", folder / "server.log"
    port = free_port()

    def run(*argv: str) -> None:
        done = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            detail = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}{detail}")

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
    # Durability is not under test (the control service is what gets killed): fsync off is faster.
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start")
    try:
        yield PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", log)
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh database on the session's PostgreSQL server, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@dataclass
class ServiceProcess:
    """A ``vastrpc control serve`` process started by ``control_processes``.

    Attributes:
        process: The process.
        home: Its home folder (several services may share one).
        log_path: Its own log file.
        address: ``host:port`` it listens on (from its log: a shared home's control.json is
            whichever service wrote it last).
        api_key: The API key in ``home/api_key``.
    """

    process: subprocess.Popen[bytes]
    home: Path
    log_path: Path
    address: str = ""
    api_key: str = ""
    log_start: int = 0

    def log_text(self) -> str:
        """What this process has logged so far (a restart on the same name appends to the file)."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[self.log_start :].decode(errors="replace")

    @property
    def leads(self) -> bool:
        """Whether its log says it leads now (became leader, and did not lose it since)."""
        text = self.log_text()
        return text.rfind("became leader") > text.rfind("lost leadership")

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def control_processes(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Starts control service processes: ``start(home, name, *args, wait=True)``; all stopped afterwards.

    ``args`` are more ``control serve`` flags (``--store URL``, ``--worker-command ...``).
    With ``wait``, returns once the service listens; otherwise at once (``wait_listening``).
    """
    started: list[ServiceProcess] = []

    def start(home: Path, name: str, *args: str, wait: bool = True) -> ServiceProcess:
        log_path = tmp_path / f"{name}.log"
        log_start = log_path.stat().st_size if log_path.exists() else 0
        argv = [sys.executable, "-m", "vastrpc", "control", "serve", "--home", str(home), *args]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        with log_path.open("ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        service = ServiceProcess(proc, home, log_path, log_start=log_start)
        started.append(service)
        if wait:
            wait_listening(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            service.process.terminate()
    for service in started:
        try:
            service.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()


def wait_listening(service: ServiceProcess, timeout: float = 30.0) -> ServiceProcess:
    """Wait until the service logs the address it listens on; fills in ``address`` and ``api_key``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise AssertionError(f"control service exited with {service.process.returncode}:\n{service.log_text()}")
        # "listening on HOST:PORT (...)" or, on a wildcard host, "... (local clients dial ADDRESS)".
        found = re.findall(r"control service listening on (\S+) (?:\(local clients dial (\S+)\))?", service.log_text())
        if found:
            bound, dialled = found[-1]
            service.address = dialled or bound
            service.api_key = (service.home / "api_key").read_text().strip()
            return service
        time.sleep(0.05)
    raise AssertionError(f"control service did not listen within {timeout}s:\n{service.log_text()}")


@pytest.fixture
async def load_app(tmp_path: Path) -> AsyncIterator[Callable[..., types.ModuleType]]:
    """Imports deployment modules: ``load_app(source, name, service)`` writes ``source`` (``{name}`` filled in)
    and returns the module, its app configured for ``service``; apps closed afterwards."""
    modules: list[types.ModuleType] = []

    def load(source: str, name: str, service: ServiceProcess) -> types.ModuleType:
        module_name = f"dep_{name}_{uuid.uuid4().hex[:8]}"
        folder = tmp_path / "apps" / module_name
        folder.mkdir(parents=True)
        path = folder / f"{module_name}.py"
        path.write_text(textwrap.dedent(source).format(name=name))
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        configure(module.app, service)
        modules.append(module)
        return module

    yield load
    for module in modules:
        await module.app.close()
        sys.modules.pop(module.__name__, None)


def configure(app: Any, service: ServiceProcess) -> None:
    """Point a deployment's client at ``service`` (close the app first to leave a session with another)."""
    app._config = ClientConfig(
        control_address=service.address, api_key=service.api_key, home=service.home, ready_timeout=90
    )


@pytest.fixture
async def client(control_service) -> AsyncIterator[Client]:
    """A test client of the control service, with its API key."""
    async with Client(control_service.address, control_service.api_key) as c:
        yield c
