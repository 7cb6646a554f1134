"""Warnings shown at the user's own line, not at vastrpc's or asyncio's."""

from __future__ import annotations

import asyncio
import os
import sys
import warnings

__all__ = ["warn_user"]

# Frames in these folders are ours or the event loop's: a warning shown there tells a user nothing.
_NOT_THE_USERS = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep,
)


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` with the stack level of the first caller outside vastrpc and asyncio."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_NOT_THE_USERS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
