"""A headless Chromium driven over the DevTools protocol on a pipe: open a page, run JavaScript, wait, screenshot.

No driver and no library: Chromium started with ``--remote-debugging-pipe`` reads protocol
messages (JSON, each ending in a NUL byte) from its fd 3 and writes answers and events to its
fd 4. Calls are synchronous; from an async test, run the waiting ones in a thread.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Browser", "BrowserError", "Page", "find_chromium"]

# Root in a container has no user namespaces for Chromium's sandbox; the rest keeps it quiet and offline.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)


class BrowserError(Exception):
    """Chromium answered a call with an error, exited, or took too long."""


def find_chromium() -> str | None:
    """Debian's chromium (``apt-get install chromium``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _high_fd(fd: int) -> int:
    """``fd`` moved above 10, so that placing the pipe ends at 3 and 4 in the child overwrites neither."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """A Chromium process; ``close()`` ends it.

    Args:
        executable: The chromium binary.
        profile: A fresh folder for its user data.
        log_path: Where its stderr goes.
    """

    def __init__(self, executable: str, profile: Path, log_path: Path) -> None:
        to_browser_r, to_browser_w = (_high_fd(fd) for fd in os.pipe())
        from_browser_r, from_browser_w = (_high_fd(fd) for fd in os.pipe())

        # Chromium reads DevTools commands on fd 3 and answers on fd 4. Bash moves the pipes
        # there and execs it: no Python runs between fork and exec (preexec_fn in a process with
        # gRPC's threads can clobber gRPC's own descriptors in the child and crash it).
        moves = f"3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "bash",
                    "-c",
                    f'exec "$0" "$@" {moves}',
                    executable,
                    *FLAGS,
                    f"--user-data-dir={profile}",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(to_browser_r, from_browser_w),
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._out = to_browser_w
        self._in = from_browser_r
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._answers: dict[int, dict[str, Any]] = {}
        self._answered = threading.Condition(self._lock)
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, name="chromium-devtools", daemon=True)
        self._reader.start()
        self.version = self.call("Browser.getVersion")["product"]

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(self._in, 1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._answered:
                    self._answered.notify_all()
                return
            buffer += data
            *messages, buffer = buffer.split(b"\0")
            with self._answered:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self.events.append(message)
                self._answered.notify_all()

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None) -> dict[str, Any]:
        """Send one DevTools command and return its result (30 s at most)."""
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 30
        with self._answered:
            while message["id"] not in self._answers:
                if self.process.poll() is not None:
                    raise BrowserError(f"chromium exited with {self.process.returncode} during {method}")
                if not self._answered.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise BrowserError(f"chromium did not answer {method} within 30s")
            answer = self._answers.pop(message["id"])
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def new_page(self, url: str, *, width: int = 1360, height: int = 900) -> Page:
        """A new tab at ``url`` with a window of ``width`` x ``height`` CSS pixels."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            page.call(method)
        page.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        page.call("Page.navigate", {"url": url})
        return page

    def close(self) -> None:
        """End the browser."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass


class Page:
    """One tab, attached to a DevTools session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A DevTools command for this tab."""
        return self.browser.call(method, params, session=self.session)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited); a thrown error raises."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails'].get('exception', result)}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll ``expression`` until it is truthy and return its value; after ``timeout`` seconds, BrowserError."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except BrowserError as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.1)
        raise BrowserError(f"waited {timeout:g}s for {what}; last: {last!r}; page problems: {self.problems()}")

    def problems(self) -> list[str]:
        """What went wrong in the page so far: uncaught exceptions, console errors, refused loads (CSP)."""
        found = []
        for event in list(self.browser.events):
            if event.get("sessionId") != self.session:
                continue
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                found.append(str(params["exceptionDetails"].get("exception", {}).get("description")))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif event["method"] == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", ""))
        return found

    def screenshot(self, path: Path, *, quality: int | None = None) -> None:
        """Save what the tab shows as PNG (or JPEG at ``quality``)."""
        params: dict[str, Any] = {"format": "png"} if quality is None else {"format": "jpeg", "quality": quality}
        data = self.call("Page.captureScreenshot", {**params, "captureBeyondViewport": False})["data"]
        path.write_bytes(base64.b64decode(data))
