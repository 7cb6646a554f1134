"""The dashboard in a real headless Chromium against a real control service and deployment: what the page shows.

Set ``DASHBOARD_SCREENSHOT=docs/dashboard.png`` to also save the page as the docs show it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .browser import Browser, Page, find_chromium

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(find_chromium() is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run)"),
]

SOURCE = """
import asyncio
from vastrpc import Deployment

app = Deployment(name="{name}")


@app.context
class Model:
    async def __aenter__(self):
        # Loading takes a while, as a model's would: the page sees the worker before it is ready.
        await asyncio.sleep(3)
        return self

    async def __aexit__(self, *exc):
        return None


@app.remote(benchmark_dataset=[{{"x": 1}}])
async def predict(x: int) -> int:
    print(f"dashboard-marker {{x}}")
    if x < 0:
        raise ValueError("negative")
    await asyncio.sleep(0.01)
    return 2 * x
"""
FAST = ["--dashboard-port", "0", "--heartbeat-interval", "0.3"]
# The states of the workers the page lists, e.g. "loading".
STATES = "Array.from(document.querySelectorAll('tr[data-worker-id]')).map(r => r.dataset.state).join(',')"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    chromium = find_chromium()
    assert chromium is not None
    started = Browser(chromium, tmp_path / "chromium-profile", tmp_path / "chromium.log")
    yield started
    started.close()


def card(endpoint: str) -> str:
    """JavaScript for the endpoint's card on the page."""
    return f"document.querySelector({json.dumps(f'.endpoint[data-endpoint={json.dumps(endpoint)}]')})"


def chart(endpoint: str, kind: str) -> str:
    """JavaScript for the largest value a chart of the endpoint holds (its ``data-max``; 0 before any point)."""
    return f"Number({card(endpoint)}?.querySelector('.chart[data-kind={kind}]').dataset.max || 0)"


async def wait(page: Page, expression: str, timeout: float, what: str) -> object:
    """``page.wait_for`` off the event loop, which the deployment's calls and watch need meanwhile."""
    return await asyncio.to_thread(page.wait_for, expression, timeout, what)


def shown(element_id: str) -> str:
    """JavaScript: whether the element is displayed (not merely without ``hidden``)."""
    return f"getComputedStyle(document.getElementById({json.dumps(element_id)})).display !== 'none'"


async def sign_in(page: Page, key: str) -> None:
    await wait(page, f"{shown('login')} && !{shown('main')}", 30, "the sign-in form alone")
    submit = "document.getElementById('key').value = {}; document.getElementById('login-form').requestSubmit(); true"
    page.evaluate(submit.format(json.dumps("vk_not-the-key")))
    await wait(page, "document.getElementById('login-error').textContent.includes('not this')", 15, "a key refused")
    page.evaluate(submit.format(json.dumps(key)))
    await wait(page, f"{shown('main')} && !{shown('login')}", 15, "the page in place of the sign-in form")


@pytest.mark.parametrize("control_service", [{"args": FAST}], indirect=True)
async def test_the_page_shows_a_worker_come_up_its_calls_charted_and_its_log_live(
    project, control_service, browser: Browser
) -> None:
    url = json.loads((control_service.home / "control.json").read_text())["dashboard_url"]
    page = browser.new_page(url, width=1360, height=880)
    await sign_in(page, control_service.api_key)
    # The browser reports the wrong key's 401, and nothing else goes wrong from here on.
    refused = page.problems()
    assert all("401" in problem for problem in refused), refused
    await wait(page, shown("empty"), 15, "the empty-state hint")
    assert "vk_" not in page.evaluate("location.href")  # the key never enters the address

    # Deploy, and watch the page: the worker appears before it is ready, then turns ready.
    module = project(SOURCE, name="sentiment")
    endpoint = f"{module.app.name}:default"
    deploying = asyncio.create_task(module.app.ensure_ready())
    seen = [await wait(page, STATES, 120, "a worker on the page")]
    while seen[-1] != "ready":
        seen.append(await wait(page, f"({STATES}) !== {json.dumps(seen[-1])} && ({STATES})", 120, f"not {seen[-1]}"))
    await deploying
    assert len(seen) >= 2 and "ready" not in seen[:-1], seen
    (worker,) = await project.workers(module.app)
    row = f"document.querySelector('tr[data-worker-id={json.dumps(worker['worker_id'])}]')"
    assert page.evaluate(f"{row}.dataset.state") == "ready"
    assert page.evaluate(f"{card(endpoint)}.querySelector('.badge').textContent") == "ready"

    # Calls, some failing: the charts receive points.
    for _ in range(3):
        await asyncio.gather(*(module.predict(i) for i in range(20)))
        for bad in (-1, -2):
            with pytest.raises(ValueError):
                await module.predict(bad)
        await asyncio.sleep(0.5)
    assert await wait(page, f"{chart(endpoint, 'calls')} > 0 && {chart(endpoint, 'calls')}", 30, "calls charted")
    await wait(page, f"{chart(endpoint, 'errors')} > 0", 30, "failed calls charted")
    latency = await wait(page, chart(endpoint, "latency"), 30, "latency charted")
    assert isinstance(latency, (int, float)) and 10 <= latency < 60_000  # ms: each call sleeps 10
    plotted = f"window.vastrpcDashboard.charts[{json.dumps(endpoint)}].calls.data[1].filter(v => v > 0).length"
    assert page.evaluate(plotted) >= 1  # in uPlot's own data, not only the attribute

    # The worker's log, followed live: a line printed after the view opened appears in it.
    page.evaluate(f"{row}.querySelector('button.show-log').click(); true")
    await wait(page, f"{shown('log-panel')} && window.vastrpcDashboard.log.open", 15, "the log view open")
    log = "document.getElementById('log').textContent"
    await wait(page, f"{log}.includes('dashboard-marker')", 15, "the log's tail")
    assert "dashboard-marker 4242" not in page.evaluate(log)
    assert await module.predict(4242) == 8484
    await wait(page, f"{log}.includes('dashboard-marker 4242')", 20, "the printed line in the log view")

    # A settings change (tier 1) adds to the revision history, newest first.
    module.app.version_label = "release-2"
    await module.app.ensure_ready()
    cells = f"{card(endpoint)}.querySelectorAll('tr[data-revision-id] td:nth-child(2)')"
    history = f"Array.from({cells}).map(t => t.textContent.trim())"
    tiers = await wait(page, f"{history}.length === 2 && {history}", 15, "two revisions")
    assert [t.split()[0] for t in tiers] == ["1", "4"], tiers  # type: ignore[union-attr]
    await wait(page, f"{card(endpoint)}.textContent.includes('release-2')", 15, "the new version label")
    assert page.problems() == refused

    wanted = os.environ.get("DASHBOARD_SCREENSHOT")
    if wanted:
        # For the docs: half a minute of varying load, so that the charts have a shape.
        for second in range(30):
            await asyncio.gather(*(module.predict(i) for i in range(10 + 8 * (second % 7))))
            if second % 5 == 0:
                with pytest.raises(ValueError):
                    await module.predict(-1)
            await asyncio.sleep(0.8)
    picture = Path(wanted or control_service.home.parent / "dashboard.png")
    page.screenshot(picture)
    assert picture.read_bytes().startswith(b"\x89PNG") and picture.stat().st_size > 10_000
