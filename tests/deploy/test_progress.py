"""Deploy progress (vastrpc.deploy.progress): live on a terminal, a line per step elsewhere, or none."""

from __future__ import annotations

import io
import time

import pytest

from vastrpc import ClientConfig, DefinitionError
from vastrpc.cli.console import console
from vastrpc.deploy.progress import PlainProgress, RichProgress, deploy_progress, wants_terminal


def test_plain_progress_is_one_line_per_step_and_per_change() -> None:
    out = io.StringIO()
    progress = PlainProgress(out)
    progress.step_started("upload", 100)
    progress.upload_progress(50, 100)  # no line per chunk
    progress.step_done("upload", "100 bytes streamed")
    for _ in range(3):
        progress.workers(0, 1, [("w-a", "installing")])
    progress.workers(1, 1, [("w-a", "ready")])
    assert out.getvalue().splitlines() == [
        "upload: 100 bytes streamed",
        "workers: 0/1 ready (w-a installing)",
        "workers: 1/1 ready (w-a ready)",
    ]


def test_rich_progress_draws_spinners_bars_and_a_tick_per_step() -> None:
    out = io.StringIO()
    with RichProgress(console(out, terminal=True)) as progress:
        progress.step_started("package")
        progress.step_done("package", "hello — 3 files, 10240 bytes")
        progress.step_started("upload", 2_000_000)
        progress.upload_progress(1_000_000, 2_000_000)
        time.sleep(0.3)  # drawn 10 times a second: let a frame show the half-done upload
        progress.step_done("upload", "2000000 bytes streamed")
        progress.step_started("ready")
        progress.workers(1, 2, [("w-a", "ready"), ("w-b", "installing")])
        progress.step_done("ready", "2 worker(s) serve revision r-2" + " very long" * 50)
    text = out.getvalue()
    assert "\x1b[" in text and "━" in text and "✓" in text
    assert "1.0 MB / 2.0 MB" in text and "1/2 ready · w-a ready, w-b installing" in text
    last_frame = text.rsplit("\x1b[2K", 1)[-1]
    assert all(len(line) <= 200 for line in last_frame.splitlines())  # long summaries are cut, not wrapped


def test_wants_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_terminal("auto", Tty()) and not wants_terminal("auto", io.StringIO())
    assert wants_terminal("always", io.StringIO()) and not wants_terminal("never", Tty())


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_deploy_progress_picks_live_plain_or_none_by_mode_and_terminal() -> None:
    with deploy_progress("off", "hello:default", io.StringIO()) as progress:
        assert progress is None
    plain = io.StringIO()
    with deploy_progress("auto", "hello:default", plain) as progress:
        assert isinstance(progress, PlainProgress)
        progress.step_done("package", "hello — 1 files")
    assert plain.getvalue().splitlines() == ["vastrpc: deploying hello:default", "vastrpc: package: hello — 1 files"]
    tty = _Tty()
    with deploy_progress("auto", "hello:default", tty) as progress:
        assert isinstance(progress, RichProgress)
        progress.step_done("package", "hello — 1 files")
    assert "\x1b[" in tty.getvalue() and "✓" in tty.getvalue()
    with deploy_progress("plain", "hello:default", _Tty()) as progress:
        assert isinstance(progress, PlainProgress)
    with deploy_progress("live", "hello:default", io.StringIO()) as progress:
        assert isinstance(progress, RichProgress)


def test_progress_setting_comes_from_the_environment_and_is_checked() -> None:
    assert ClientConfig.from_env({}).progress == "auto"
    assert ClientConfig.from_env({"VASTRPC_PROGRESS": "off"}).progress == "off"
    with pytest.raises(DefinitionError, match="VASTRPC_PROGRESS.*auto, live, plain, off"):
        ClientConfig.from_env({"VASTRPC_PROGRESS": "quiet"})
