"""An agent's next serving process: started once a revision serves, it waits for the next revision's config (tier 2).

A serving process spends most of its start-up before it reads its config: the interpreter
starting and importing vastrpc and gRPC (about a quarter second on 2 cores). Once a
revision serves, its agent starts the next one with that revision's environment less
what is the revision's own (its folder on ``PYTHONPATH``, its published ports, the root of
its absolute copies) and less its secrets, and leaves it waiting on its stdin. A code
update of the same environment (tier 2) then configures it (``serving.prepare``, checked
by ``_workerenv.fits_spare``): it applies the new revision's environment and secrets from
its config, imports the new code and benchmarks, and the update costs the import of the
deployment rather than a new interpreter. It holds no secret and no token until then.

At most one waits per agent. It is stopped with the agent (and by the kernel when the
agent dies: ``process._exit_with_agent``), replaced when it dies (up to a few times in a
row), and not started for a revision with apt packages or startup commands (which run
again per revision and could change what an interpreter reads at its start) nor on a
container provider. The control service's ``spare_agent`` setting (``--no-spare-agent``)
turns it off with the spare agent (``VASTRPC_SPARE_SERVING=0`` in the agents' environment).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from vastrpc.serve.serving import ServingProcess

log = logging.getLogger("vastrpc.worker")

# A waiting process that dies is replaced this many times in a row at most, this long after.
_REPLACEMENTS = 3
_REPLACE_AFTER = 1.0

_Plan = tuple[dict[str, str], Path, str]


class Standby:
    """At most one serving process started ahead for the agent's next revision, and the means to replace it."""

    def __init__(self, stopping: asyncio.Event | None = None) -> None:
        # Set when the agent stops: a waiting process that exits then (its process group was
        # signalled) is not replaced.
        self._stopping = stopping or asyncio.Event()
        self._waiting: ServingProcess | None = None
        self._plan: _Plan | None = None  # environment, working folder, interpreter
        self._deaths = 0
        self._replacing: asyncio.Task[None] | None = None
        self._spawning = False

    @property
    def waiting(self) -> ServingProcess | None:
        """The process waiting now, if any."""
        return self._waiting

    async def start(self, env: dict[str, str], cwd: Path, python: str) -> None:
        """Start the next serving process with ``env`` (no secret in it), stopping any started before."""
        await self.stop()
        self._plan = (dict(env), cwd, python)
        self._deaths = 0
        await self._spawn()

    def take(self) -> ServingProcess | None:
        """The waiting process, for the revision being installed (``serving.prepare``); None when none waits.

        It is the caller's from now on: this stops neither it nor anything else, and starts no other.
        """
        waiting, self._waiting = self._waiting, None
        self._disarm()
        if waiting is not None and waiting.exited.done():
            return None
        return waiting

    async def stop(self) -> None:
        """Stop the waiting process, if any, and any replacement on its way."""
        waiting, self._waiting = self._waiting, None
        self._disarm()
        if waiting is not None:
            await waiting.stop(0)
        if self._replacing is not None:
            # A replacement spawned meanwhile stops itself (the plan is gone); not awaited
            # directly, so that its own cancellation does not read as ours.
            await asyncio.wait([self._replacing])
            self._replacing = None

    def _disarm(self) -> None:
        self._plan = None
        if self._replacing is not None and not self._spawning:
            self._replacing.cancel()  # still sleeping: nothing started yet

    async def _spawn(self) -> None:
        plan = self._plan
        if plan is None:
            return
        self._spawning = True
        try:
            serving = await ServingProcess.spawn(*plan)
        except OSError as exc:
            log.warning("could not start the next revision's serving process ahead: %s", exc)
            self._plan = None
            return
        finally:
            self._spawning = False
        if self._plan is not plan:  # taken or stopped meanwhile
            await serving.stop(0)
            return
        self._waiting = serving
        serving.exited.add_done_callback(lambda _: self._exited(serving))
        log.info("started the next revision's serving process ahead (pid %d), waiting for its config", serving.proc.pid)

    def _exited(self, serving: ServingProcess) -> None:
        if self._waiting is not serving:
            return  # taken (it serves a revision now) or stopped
        self._waiting = None
        self._deaths += 1
        code = serving.exited.result() if not serving.exited.cancelled() else None
        if self._stopping.is_set():
            return
        if self._plan is None or self._deaths > _REPLACEMENTS:
            log.warning("the serving process started ahead (pid %d) exited (code %s)", serving.proc.pid, code)
            self._plan = None
            return
        log.warning(
            "the serving process started ahead (pid %d) exited (code %s): starting another", serving.proc.pid, code
        )

        async def replace() -> None:
            await asyncio.sleep(_REPLACE_AFTER)
            if not self._stopping.is_set():
                await self._spawn()

        self._replacing = asyncio.get_running_loop().create_task(replace())
        self._replacing.add_done_callback(lambda t: t.cancelled() or t.exception())
