"""A spare worker agent: an interpreter with the agent imported and a serving process started, waiting for its worker.

The local provider keeps one per host (``python -P -m vastrpc.serve.spare``, started as a
worker agent is: same user, same environment, its own session). Starting two interpreters
and importing vastrpc and gRPC in each is most of a cold start; the spare has done both
before a deployment asks. When a worker is wanted, the provider writes its assignment as
one JSON line on the spare's stdin — the control service's address, the worker's id and
token (never in argv or the environment) and the environment the agent runs with — and
the spare becomes that worker's agent. Its pre-started serving process serves the
worker's first revision when that revision's environment is the base one
(``vastrpc._workerenv.fits_spare``: no pip packages, no venv, nothing of the deployment's
own read at an interpreter's start); otherwise it is stopped and a new one started, as
without a spare. The spare and its serving process were started before any deployment
was known, from the provider's base environment: neither can carry another deployment's
environment. Each serves one worker only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from vastrpc._workerenv import make_undumpable, serving_environ
from vastrpc.config import tls_from_env
from vastrpc.serve.agent import main as agent_main
from vastrpc.serve.serving import ServingProcess

log = logging.getLogger("vastrpc.worker")


async def wait_and_serve() -> int:
    """Start the serving process, wait for the assignment on stdin, then run the agent; returns its exit code."""
    serving = await ServingProcess.spawn(serving_environ(), Path.cwd())
    line = await asyncio.to_thread(sys.stdin.readline)
    if not line.strip():  # the provider went away (or stopped its spare) before it had a worker
        await serving.stop(0)
        return 0
    assignment = json.loads(line)
    os.environ.clear()
    os.environ.update(assignment["env"])
    log.info("spare agent (pid %d) becomes worker %s", os.getpid(), assignment["worker_id"])
    return await agent_main(
        assignment["control"],
        assignment["worker_id"],
        assignment["token"],
        tls=tls_from_env(),
        spare_serving=serving,
    )


def main() -> int:
    """Entry point: ``python -P -m vastrpc.serve.spare`` with the assignment to come on stdin."""
    # Before it holds a token: the deployments' code may run as this user, and must not read
    # it from this process's /proc files.
    make_undumpable()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s", stream=sys.stderr)
    return asyncio.run(wait_and_serve())


if __name__ == "__main__":
    sys.exit(main())
