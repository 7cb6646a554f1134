"""Free loopback TCP ports for the servers tests start."""

from __future__ import annotations

import contextlib
import socket

# Ray's default range for its worker processes' ports: no port handed out falls in it.
RAY_WORKER_PORTS = (10002, 19999)


def free_port() -> int:
    """A TCP port nobody listens on now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports nobody listens on now, none among Ray's worker ports.

    The sockets stay bound until all are chosen: ports picked one by one can repeat (the
    kernel may hand a just-closed port out again), and a server given one twice fails.
    """
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if not RAY_WORKER_PORTS[0] <= port <= RAY_WORKER_PORTS[1]:
                ports.append(port)
        return ports
