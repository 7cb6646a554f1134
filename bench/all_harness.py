"""What the sections of bench/all.py share: the Bench handle (control service, folder, options, results), a no-op."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from _common import Control, load_module

from vastrpc.client.control import ControlClient

NOOP = textwrap.dedent(
    """
    from vastrpc import Deployment

    app = Deployment(name="{name}")
    {autoscaling}

    @app.remote(benchmark_dataset=[{{"x": 1}}])
    async def noop(x):
        return x
    """
)


@dataclasses.dataclass
class Bench:
    control: Control
    folder: Path
    opts: argparse.Namespace
    results: dict[str, Any]

    def module(self, prefix: str, template: str, **fields: Any) -> Any:
        name = f"{prefix}_{uuid.uuid4().hex[:6]}"
        mod = load_module(self.folder, name, template.format(name=name, **fields))
        mod.app._config = self.control.config
        return mod

    async def teardown(self, app: Any) -> None:
        """Close the client and stop the app's workers, so that idle workers do not disturb what follows."""
        await app.close()
        client = await ControlClient.connect(self.control.config)
        try:
            await client.teardown(app.name)
        finally:
            await client.close()

    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
