"""Unit tests of the SDK's definitions: decorators record and validate, and fail at once on bad input."""

from __future__ import annotations

import asyncio
import gc

import pytest

from vastrpc import ContextError, DefinitionError, Deployment, DeployResult, RemoteFunction, get_context
from vastrpc.deploy.flow import validate
from vastrpc.image import Autoscaling
from vastrpc.query import num_gpus


def test_name_defaults_to_module_file_name() -> None:
    app = Deployment()
    assert app.name == "test_deployment"
    assert app.tag == "default"


def test_remote_rejects_plain_function_at_decoration() -> None:
    app = Deployment(name="x")
    with pytest.raises(DefinitionError, match="must be declared with 'async def'"):

        @app.remote(benchmark_dataset=[{}])
        def sync_fn() -> int:
            return 1


def test_async_generator_is_streamed_not_awaited() -> None:
    app = Deployment(name="x")

    @app.remote
    async def gen():  # type: ignore[no-untyped-def]
        yield 1

    @app.remote
    async def plain() -> int:
        return 1

    assert gen.options.generator and not plain.options.generator
    with pytest.raises(DefinitionError, match="async generator"):
        asyncio.run(gen.call_with_info())
    with pytest.raises(DefinitionError, match="not an async generator"):
        plain.stream()
    with pytest.raises(DefinitionError, match="max_queue_time"):
        app.remote(max_queue_time=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"benchmark_dataset": []}, "empty"),
        ({"benchmark_runs": 0}, "benchmark_runs"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"timeout": -1}, "timeout"),
        ({"benchmark_dataset": [{}], "benchmark_generator": dict}, "not both"),
    ],
)
def test_remote_validates_options(kwargs: dict, match: str) -> None:
    app = Deployment(name="x")
    with pytest.raises(DefinitionError, match=match):
        app.remote(**kwargs)


def test_remote_returns_wrapper_that_keeps_identity_and_runs_locally() -> None:
    app = Deployment(name="x")

    async def double(x: int) -> int:
        """Doubles."""
        return 2 * x

    wrapped = app.remote(benchmark_dataset=[{"x": 1}])(double)
    assert isinstance(wrapped, RemoteFunction)
    assert wrapped.__wrapped__ is double
    assert wrapped.__doc__ == "Doubles."
    assert app.functions["double"] is wrapped
    assert asyncio.run(wrapped.local(4)) == 8


def test_duplicate_function_name_rejected() -> None:
    app = Deployment(name="x")

    async def f() -> None: ...

    app.remote(benchmark_dataset=[{}])(f)
    with pytest.raises(DefinitionError, match="already declared"):
        app.remote(benchmark_dataset=[{}])(f)


def test_context_returns_class_unchanged_and_requires_async_methods() -> None:
    app = Deployment(name="x")

    class Good:
        async def __aenter__(self):  # type: ignore[no-untyped-def]
            return self

        async def __aexit__(self, *exc):  # type: ignore[no-untyped-def]
            pass

    assert app.context(Good) is Good
    assert app.contexts == [Good]

    class Bad:
        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

    with pytest.raises(DefinitionError, match="__aenter__"):
        app.context(Bad)


def test_get_context_outside_worker_is_a_clear_error() -> None:
    class Ctx:
        pass

    with pytest.raises(ContextError, match="only works inside a remote function"):
        get_context(Ctx)


def test_no_benchmark_anywhere_fails_at_ensure_ready() -> None:
    app = Deployment(name="x")

    @app.remote
    async def f() -> None: ...

    with pytest.raises(DefinitionError, match="no function has a benchmark"):
        validate(app.describe())
    with pytest.raises(DefinitionError, match="no function has a benchmark"):
        app.ensure_ready()  # no event loop runs here: it blocks, and raises before connecting


@pytest.mark.parametrize("bad", [{"name": "has space"}, {"name": "x", "tag": ""}, {"name": "x", "ttl": 0}])
def test_deployment_arguments_validated(bad: dict) -> None:
    with pytest.raises(DefinitionError):
        Deployment(**bad)


def test_image_chain_records_everything() -> None:
    app = Deployment(name="x")
    image = (
        app.image("python:3.11-slim", storage="5GB")
        .pip_install("numpy>=2", "six")
        .apt_get("curl")
        .env(MODE="fast")
        .secrets(TOKEN="s3cret")
        .run_script("echo hi")
        .run_cmd("touch", "a file")
        .copy("data", "assets/data")
        .require(gpus=1)
    )
    assert image is app.image_spec
    assert image.pip_packages == ["numpy>=2", "six"]
    assert image.apt_packages == ["curl"]
    assert image.env_vars == {"MODE": "fast"}
    assert image.secret_vars == {"TOKEN": "s3cret"}
    assert "s3cret" not in repr(image)
    assert image.startup_commands == ["echo hi", "touch 'a file'"]
    assert image.copies == [("data", "assets/data")]
    assert image.requirements == [num_gpus >= 1]  # the keyword shorthand is a query


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda i: i.env(**{"1BAD": "x"}), "not a valid environment variable"),
        (lambda i: i.env(X=1), "must be a string"),
        (lambda i: i.pip_install("two words"), "not a package name"),
        (lambda i: i.copy("a", "../outside"), "relative path"),
        (lambda i: i.run_cmd(), "run_cmd"),
    ],
)
def test_image_rejects_bad_input(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DefinitionError, match=match):
        call(Deployment(name="x").image("python:3.11-slim"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_workers": 3, "max_workers": 2}, "above max_workers"),
        ({"max_workers": 0}, "at least 1"),
        ({"target_util": 0}, "target_util"),
        ({"target_util": 1.5}, "target_util"),
        ({"min_load": -1}, "min_load must be >= 0"),
        ({"min_cold_load": -0.5}, "min_cold_load must be >= 0"),
        ({"cold_mult": -2}, "cold_mult must be >= 0"),
        ({"max_queue_time": -1}, "max_queue_time must be >= 0"),
        ({"target_queue_time": -1}, "target_queue_time must be >= 0"),
        ({"min_load": float("nan")}, "min_load must be a finite number"),
        ({"inactivity_timeout": float("inf")}, "inactivity_timeout must be a finite number"),
        ({"cold_workers": 1.5}, "cold_workers must be a non-negative integer"),
        ({"max_workers": True}, "max_workers must be a non-negative integer"),
        ({"target_queue_time": "5"}, "target_queue_time must be a finite number"),
    ],
)
def test_autoscaling_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(DefinitionError, match=match):
        Deployment(name="x").configure_autoscaling(**kwargs)


def test_deployment_takes_vasts_arguments_in_vasts_order() -> None:
    app = Deployment("vast", "canary", "1.2", "vk_key", 900)
    assert (app.name, app.tag, app.version_label, app._api_key, app.ttl) == ("vast", "canary", "1.2", "vk_key", 900)
    with pytest.raises(TypeError):
        Deployment("x", "default", None, None, None, "127.0.0.1:1")  # the rest is keyword-only


def test_image_takes_vasts_from_image_and_storage_in_gb() -> None:
    app = Deployment(name="x")
    assert app.image("pytorch/pytorch", 32).storage == 32.0
    assert app.image("pytorch/pytorch").storage == 50.0
    assert app.image("pytorch/pytorch", "16GB").storage == 16.0
    for bad in (0, -1, "lots", True, float("nan")):
        with pytest.raises(DefinitionError, match="storage is GB of disk"):
            app.image("pytorch/pytorch", bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        app.image()  # type: ignore[call-arg]
    spec_storage = app.image("pytorch/pytorch", 32).storage
    assert f"{spec_storage:g}GB" == "32GB"


def test_context_in_all_three_spellings_records_constructor_arguments() -> None:
    app = Deployment(name="x")

    @app.context
    class Bare:
        async def __aenter__(self):  # type: ignore[no-untyped-def]
            return self

        async def __aexit__(self, *exc): ...  # type: ignore[no-untyped-def]

    @app.context()
    class Empty(Bare):
        pass

    @app.context("Qwen/Qwen3-0.6B", max_len=512)
    class Engine(Bare):
        def __init__(self, model_name: str, max_len: int = 1024) -> None:
            self.model_name, self.max_len = model_name, max_len

    assert [Bare, Empty, Engine] == app.contexts
    contexts = app.describe().contexts
    assert [(c.cls, c.args, dict(c.kwargs)) for c in contexts] == [
        (Bare, (), {}),
        (Empty, (), {}),
        (Engine, ("Qwen/Qwen3-0.6B",), {"max_len": 512}),
    ]
    with pytest.raises(DefinitionError, match=r"Engine\(1, 2, 3\) does not fit its __init__"):
        app.context(1, 2, 3)(Engine)


def test_app_get_context_raises_key_error_for_unknown_or_unentered_contexts() -> None:
    app = Deployment(name="x")

    @app.context()
    class Known:
        async def __aenter__(self):  # type: ignore[no-untyped-def]
            return self

        async def __aexit__(self, *exc): ...  # type: ignore[no-untyped-def]

    class Unknown:
        pass

    with pytest.raises(KeyError, match="not a context of 'x'"):
        app.get_context(Unknown)
    with pytest.raises(KeyError, match="only works inside a remote function"):
        app.get_context(Known)
    with pytest.raises(ContextError):
        app.get_context(Unknown)


def test_ensure_ready_in_a_running_loop_must_be_awaited_and_says_so() -> None:
    app = Deployment(name="x")

    async def forgotten() -> None:
        app.ensure_ready()  # never awaited: nothing is deployed, and a warning says what to write

    with pytest.warns(RuntimeWarning, match="await app.ensure_ready"):
        asyncio.run(forgotten())
        gc.collect()


def test_ensure_ready_deploys_nothing_while_a_command_loads_the_file() -> None:
    from vastrpc._mode import deferring_deploys

    app = Deployment(name="x")
    with deferring_deploys():
        result = app.ensure_ready()
    assert isinstance(result, DeployResult) and result.tier == 0 and "nothing deployed" in result.description
    assert asyncio.run(_awaited(result)) is result


async def _awaited(result: DeployResult) -> DeployResult:
    return await result


def test_configure_autoscaling_updates_rather_than_replaces() -> None:
    app = Deployment(name="x")
    app.configure_autoscaling(max_workers=10, cold_workers=2, min_load=100)
    app.configure_autoscaling(target_util=0.5, max_queue_time=12.5)
    app.configure_autoscaling(min_cold_load=50, cold_mult=2, target_queue_time=3.0, inactivity_timeout=-1)
    assert app.autoscaling == Autoscaling(
        min_workers=1,
        max_workers=10,
        cold_workers=2,
        target_util=0.5,
        inactivity_timeout=-1,
        min_load=100,
        min_cold_load=50,
        cold_mult=2,
        max_queue_time=12.5,
        target_queue_time=3.0,
    )
    # A call that names nothing changes nothing; one that names a setting again overrides it.
    before = app.autoscaling
    app.configure_autoscaling()
    assert app.autoscaling == before
    app.configure_autoscaling(max_workers=4)
    assert app.autoscaling.max_workers == 4 and app.autoscaling.cold_workers == 2


def test_configure_autoscaling_checks_the_settings_together_and_keeps_the_last_good_ones() -> None:
    app = Deployment(name="x")
    app.configure_autoscaling(max_workers=4)
    app.configure_autoscaling(min_workers=3)  # valid with the max_workers of the earlier call
    with pytest.raises(DefinitionError, match=r"min_workers \(3\) is above max_workers \(2\): raise max_workers"):
        app.configure_autoscaling(max_workers=2)
    assert (app.autoscaling.min_workers, app.autoscaling.max_workers) == (3, 4)


def test_vast_autoscaling_example_is_accepted_unchanged() -> None:
    """The call in Vast's Deployments SDK configuration guide, as written there."""
    app = Deployment(name="x")
    app.configure_autoscaling(
        cold_workers=2,
        max_workers=10,
        min_load=100,
        min_cold_load=50,
        target_util=0.8,
        cold_mult=2,
        max_queue_time=30.0,
        target_queue_time=5.0,
        inactivity_timeout=300,
    )
    assert app.autoscaling.min_load == 100 and app.autoscaling.min_workers == 1


def test_vasts_remaining_image_methods_record_and_chain() -> None:
    app = Deployment(name="img")
    image = app.image("vastai/base-image:@vastai-automatic-tag")
    same = (
        image.copy("./local_config.json", "/app/config.json")
        .copy("data", "static/data")
        .venv("/venv/main")
        .publish_port(8080, "tcp")
        .publish_port(8443, "tcp")
        .publish_port(8080, "TCP")  # the same port again: recorded once
        .publish_port(8080, "udp")  # another protocol: a port of its own
    )
    assert same is image
    assert image.copies == [("local_config.json", "/app/config.json"), ("data", "static/data")]
    assert (image.venv_path, image.system_python) == ("/venv/main", False)
    assert image.published_ports == [(8080, "tcp"), (8443, "tcp"), (8080, "udp")]
    assert image.venv("/opt/env//other/").venv_path == "/opt/env/other"  # again: replaces, normalised
    system = app.image("python:3.11-slim").use_system_python().use_system_python()
    assert (system.system_python, system.venv_path) == (True, None)
    # A relative destination keeps meaning a path inside the bundle, as before.
    assert app.image("python:3.11-slim").copy("conf/a.yaml").copies == [("conf/a.yaml", "conf/a.yaml")]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda i: i.copy("a", "/../etc/x"), r"must not contain '\.\.'"),
        (lambda i: i.copy("a", "/app/../../etc/x"), r"must not contain '\.\.'"),
        (lambda i: i.copy("a", "/"), "names no file"),
        (lambda i: i.copy("a", ".vastrpc-absolute/etc/x"), "reserves for absolute destinations"),
        (lambda i: i.copy("a", ""), "non-empty path"),
        (lambda i: i.venv("venv/main"), "absolute path"),
        (lambda i: i.venv("/venv/../main"), "absolute path"),
        (lambda i: i.venv("/venv/main").use_system_python(), "exclusive"),
        (lambda i: i.use_system_python().venv("/venv/main"), "exclusive"),
        (lambda i: i.publish_port(0, "tcp"), "1 to 65535"),
        (lambda i: i.publish_port(65536, "tcp"), "1 to 65535"),
        (lambda i: i.publish_port("8080", "tcp"), "integer"),
        (lambda i: i.publish_port(True, "tcp"), "integer"),
        (lambda i: i.publish_port(8080, "http"), "'tcp' or 'udp'"),
    ],
)
def test_vasts_remaining_image_methods_reject_bad_input_saying_what_to_write(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DefinitionError, match=match):
        call(Deployment(name="img").image("python:3.11-slim"))
