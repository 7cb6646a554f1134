"""The settings a deployment file may change in place: their values blanked, so editing only them is tier 1.

Vast's deployment files carry their autoscaling and ``ttl`` inside the file that is
bundled. Hashing that file as it is would make every such edit a new bundle (tier 2,
workers reload). The code digest instead hashes the file with the *values* of these
settings cut out — the arguments of ``configure_autoscaling(...)``, and ``ttl`` and
``version_label`` in ``Deployment(...)`` — while every other character counts: any
other edit, a comment included, is still tier 2.
"""

from __future__ import annotations

import ast

__all__ = ["BLANK", "blank_settings"]

BLANK = "\u2026"
# Deployment(name, tag, version_label, api_key, ttl): the in-place settings by position and by name.
_DEPLOYMENT_POSITIONS = {2: "version_label", 4: "ttl"}
_DEPLOYMENT_KEYWORDS = frozenset(_DEPLOYMENT_POSITIONS.values())


def _called(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _spans(tree: ast.AST) -> list[tuple[int, int, int, int]]:
    spans: list[ast.expr] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _called(node)
        if name == "configure_autoscaling":
            spans += node.args
            spans += [k.value for k in node.keywords]
        elif name == "Deployment":
            spans += [arg for i, arg in enumerate(node.args) if i in _DEPLOYMENT_POSITIONS]
            spans += [k.value for k in node.keywords if k.arg in _DEPLOYMENT_KEYWORDS]
    found = sorted(
        (e.lineno, e.col_offset, e.end_lineno or e.lineno, e.end_col_offset or e.col_offset)
        for e in spans
        if not isinstance(e, ast.Starred)
    )
    # A setting nested in another one's value is cut with it.
    outer: list[tuple[int, int, int, int]] = []
    for span in found:
        if not outer or (span[0], span[1]) >= (outer[-1][2], outer[-1][3]):
            outer.append(span)
    return outer


def blank_settings(source: bytes) -> bytes:
    """``source`` with the in-place settings' values replaced by ``…`` (unchanged if it does not parse)."""
    try:
        text = source.decode("utf-8")
        tree = ast.parse(text)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return source
    lines = text.splitlines(keepends=True)
    # Offsets are in UTF-8 bytes within a line; cut from the end so earlier spans keep their places.
    encoded = [line.encode("utf-8") for line in lines]
    for start_line, start_col, end_line, end_col in sorted(_spans(tree), reverse=True):
        first, last = encoded[start_line - 1], encoded[end_line - 1]
        encoded[start_line - 1 : end_line] = [first[:start_col] + BLANK.encode() + last[end_col:]]
    return b"".join(encoded)
