"""The user documentation covers the code: every option, field, flag, subcommand and exception, and every link resolves.

These tests read the code by introspection, so adding a parameter, a config field or a CLI flag
without documenting it fails here. Fast: no process is started.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import vastrpc
from vastrpc import cli, config, image
from vastrpc._tls import TlsFiles
from vastrpc.client.output import RemoteOutput
from vastrpc.client.router import CallInfo
from vastrpc.deploy.flow import DeployResult
from vastrpc.deployment import Deployment
from vastrpc.function import RemoteFunction
from vastrpc.image import Autoscaling, Image

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
_SPAN = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def _read(name: str) -> str:
    return (DOCS / name).read_text()


def _documented(name: str, text: str) -> bool:
    """Whether ``name`` is in backticks in ``text``: `name` alone, or opening a span (`--flag VALUE`, `name: int`)."""
    for span in _SPAN.findall(text):
        if span == name or (span.startswith(name) and span[len(name)] in " =[(:,"):
            return True
    return False


def _documented_method(name: str, text: str) -> bool:
    """Whether a method appears in backticks in ``text``: `name`, `app.name`, `await fn.name(...)`."""
    pattern = re.compile(rf"(^|[.\s]){re.escape(name)}(\(|$|\s)")
    return any(pattern.search(span) for span in _SPAN.findall(text))


def _missing(names: list[str], *pages: str, methods: bool = False) -> list[str]:
    texts = [_read(page) for page in pages]
    found = _documented_method if methods else _documented
    return [name for name in names if not any(found(name, text) for text in texts)]


def _keyword_parameters(func: Callable[..., Any]) -> list[str]:
    """The parameters a caller can pass by name (not self, not positional-only, not *args/**kwargs)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in inspect.signature(func).parameters.values() if p.kind in kinds and p.name != "self"]


def _public_methods(cls: type) -> list[str]:
    return [
        name
        for name, member in vars(cls).items()
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, (property, classmethod)))
    ]


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# -- the command line ---------------------------------------------------------------------------


def _cli_parser() -> argparse.ArgumentParser:
    """The parser vastrpc.cli builds: ``_parser(home)`` today; any function of it that returns one otherwise."""
    candidates = [getattr(cli, name, None) for name in ("_parser", "build_parser", "make_parser", "parser")]
    candidates += [f for _, f in inspect.getmembers(cli, inspect.isfunction) if "parser" in f.__name__.lower()]
    for factory in candidates:
        if not callable(factory) or isinstance(factory, type):
            continue
        required = [
            p
            for p in inspect.signature(factory).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        parser = factory(*[Path("HOME") for _ in required])
        if isinstance(parser, argparse.ArgumentParser):
            return parser
    raise AssertionError("vastrpc.cli builds no argparse parser this test can find: update _cli_parser")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:  # argparse has no public way to list subcommands
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path with a parser of its own: ("control",), ("control", "serve"), ("deploy",), ..."""
    for name, sub in _subcommands(parser).items():
        yield (*prefix, name)
        yield from _commands(sub, (*prefix, name))


def _command_parser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = _cli_parser()
    for name in path:
        parser = _subcommands(parser)[name]
    return parser


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    """Option strings a user sees in ``--help`` (not -h/--help, not suppressed ones)."""
    flags = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        flags.extend(action.option_strings)
    return flags


# -- the SDK ------------------------------------------------------------------------------------


def test_every_deployment_parameter_and_method_is_in_the_configuration_reference() -> None:
    names = _keyword_parameters(Deployment.__init__)
    names += _keyword_parameters(Deployment.remote)  # its keyword-only options; fn is positional-only
    names += _keyword_parameters(Deployment.context)
    names += _keyword_parameters(Deployment.image)
    names += _keyword_parameters(Deployment.configure_autoscaling)
    assert {"tag", "ttl", "benchmark_dataset", "max_concurrency", "retries"} <= set(names)
    assert _missing(names, "configuration.md") == []
    methods = _public_methods(Deployment)
    assert {"ensure_ready", "close", "image", "remote", "context"} <= set(methods)
    assert _missing(methods, "configuration.md", methods=True) == []


def test_every_image_method_field_and_require_filter_is_in_the_configuration_reference() -> None:
    methods = _public_methods(Image)
    names = _field_names(Image) + list(getattr(image, "REQUIREMENT_FILTERS", {}))
    for method in methods:
        if inspect.isfunction(vars(Image)[method]):
            names += _keyword_parameters(getattr(Image, method))
    assert {"pip_install", "secrets", "require", "copy", "run_cmd"} <= set(methods)
    assert {"from_image", "startup_timeout", "requirements", "script", "dest"} <= set(names)
    assert _missing(methods, "configuration.md", methods=True) == []
    assert _missing(names, "configuration.md") == []


def test_every_autoscaling_field_is_in_the_configuration_reference() -> None:
    names = _field_names(Autoscaling)
    assert "min_workers" in names
    assert _missing(names, "configuration.md") == []


def test_every_way_to_call_a_remote_function_and_its_options_are_in_the_configuration_reference() -> None:
    methods = _public_methods(RemoteFunction)
    names: list[str] = []
    for method in methods:
        if inspect.isfunction(vars(RemoteFunction)[method]):
            names += _keyword_parameters(getattr(RemoteFunction, method))
    assert {"with_options", "map", "stream", "call_with_info", "local"} <= set(methods)
    assert {"timeout", "logs", "concurrency", "return_exceptions"} <= set(names)
    assert _missing(methods, "configuration.md", methods=True) == []
    assert _missing(names, "configuration.md") == []


@pytest.mark.parametrize(
    "cls", [config.ClientConfig, config.ControlConfig, TlsFiles, DeployResult, CallInfo, RemoteOutput]
)
def test_every_configuration_and_result_field_is_in_the_configuration_reference(cls: type) -> None:
    names = _field_names(cls)
    assert names
    assert _missing(names, "configuration.md") == [], f"fields of {cls.__name__}"


def test_every_environment_variable_is_in_the_configuration_reference() -> None:
    """Every ``"VASTRPC_..."`` string in the package's source (generated stubs aside)."""
    package = ROOT / "vastrpc"
    names = {
        name
        for path in package.rglob("*.py")
        if package / "api" not in path.parents
        for name in re.findall(r"[\"'](VASTRPC_[A-Z0-9_]+)[\"']", path.read_text())
    }
    assert {"VASTRPC_HOME", "VASTRPC_API_KEY", "VASTRPC_CONTROL_ADDRESS", "VASTRPC_TLS_CA"} <= names
    assert _missing(sorted(names), "configuration.md") == []


def test_every_public_exception_is_in_the_concepts_or_the_configuration_reference() -> None:
    names = [
        name
        for name in vastrpc.__all__
        if isinstance(getattr(vastrpc, name), type) and issubclass(getattr(vastrpc, name), BaseException)
    ]
    assert {"VastrpcError", "OverloadedError", "RemoteTraceback"} <= set(names)
    assert _missing(names, "concepts.md", "configuration.md") == []


# -- the CLI ------------------------------------------------------------------------------------


def test_every_control_serve_flag_is_documented() -> None:
    flags = _flags(_command_parser(("control", "serve")))
    assert {"--home", "--port", "--tls", "--store", "--provider"} <= set(flags)
    assert _missing(flags, "configuration.md", "cli.md") == []


def test_every_cli_subcommand_and_its_flags_are_in_the_cli_page() -> None:
    text = _read("cli.md")
    commands = list(_commands(_cli_parser()))
    assert {("control", "serve"), ("deploy",), ("ls",), ("logs",), ("teardown",)} <= set(commands)
    undocumented = [" ".join(c) for c in commands if not _documented("vastrpc " + " ".join(c), text)]
    assert undocumented == [], "subcommands missing from docs/cli.md (as `vastrpc NAME ...`)"
    missing_flags = {
        " ".join(c): missing for c in commands if (missing := _missing(_flags(_command_parser(c)), "cli.md"))
    }
    assert missing_flags == {}, "flags missing from docs/cli.md"


def test_the_cli_exit_codes_are_in_the_cli_page() -> None:
    codes = {value for key, value in vars(cli).items() if key.startswith("EXIT_") and isinstance(value, int)}
    assert {0, 1, 2} <= codes
    rows = {int(m) for m in re.findall(r"^\| (\d+) \|", _read("cli.md"), flags=re.MULTILINE)}
    assert codes - rows == set()


# -- links --------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _pages() -> list[Path]:
    return [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]


def _links(page: Path) -> Iterator[str]:
    fenced = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield from _LINK.findall(line)


def test_every_relative_link_in_the_docs_and_the_readme_resolves() -> None:
    pages = _pages()
    assert DOCS / "configuration.md" in pages
    broken = []
    checked = 0
    for page in pages:
        for target in _links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto: ...: not a file of this repository
            file_part, _, anchor = target.partition("#")
            path = (page.parent / file_part).resolve() if file_part else page
            checked += 1
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading with that anchor)")
    assert checked > 20
    assert broken == []


def test_the_checks_themselves_can_fail() -> None:
    """The matcher finds what is documented and only that, so the tests above are not vacuous."""
    text = "Set `timeout` and `--tls auto`; the `max_queue_time` option."
    assert _documented("timeout", text) and _documented("--tls", text)
    assert not _documented("max_queue", text)  # a prefix of a longer name does not count
    assert not _documented("no_such_option", text)
    assert _slug("ControlConfig and `control serve` flags") == "controlconfig-and-control-serve-flags"
    assert _slug("@app.remote") == "appremote"
    assert _documented_method("ensure_ready", "call `await app.ensure_ready()` first")
    assert not _documented_method("ready", "call `await app.ensure_ready()` first")
