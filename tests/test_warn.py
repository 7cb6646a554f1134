"""Warnings point at the user's line, through vastrpc's and asyncio's frames."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pytest

import vastrpc
from vastrpc._warn import warn_user

pytestmark = pytest.mark.timeout(10)


def test_a_direct_call_is_shown_at_the_callers_line() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warn_user("look here")
    assert [(str(w.message), w.filename, w.category) for w in seen] == [("look here", __file__, UserWarning)]


def test_frames_of_vastrpc_and_asyncio_between_are_passed_over() -> None:
    # A function that vastrpc would define: its code names a file in vastrpc's folder.
    namespace: dict[str, object] = {"warn_user": warn_user}
    inside = str(Path(vastrpc.__file__).parent / "_pretend.py")
    exec(compile("async def deep():\n    warn_user('from inside', RuntimeWarning)\n", inside, "exec"), namespace)

    async def user_code() -> None:
        await asyncio.sleep(0)
        await namespace["deep"]()  # type: ignore[operator]

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        asyncio.run(user_code())
    assert [(str(w.message), w.filename, w.category) for w in seen] == [("from inside", __file__, RuntimeWarning)]
