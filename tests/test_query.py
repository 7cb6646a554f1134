"""vastrpc.query: Vast's query builder (columns, operators, GPU names), its errors, and GPU name matching."""

from __future__ import annotations

from typing import Any

import pytest

from vastrpc import Deployment
from vastrpc._errors import DefinitionError
from vastrpc.image import keyword_queries, stored_keyword_queries
from vastrpc.query import (
    A100_SXM4,
    COLUMNS,
    GPU_NAMES,
    H100_NVL,
    H100_PCIE,
    H100_SXM,
    L40,
    L40S,
    RTX_4080S,
    RTX_4090,
    RTX_5090,
    InstinctMI250X,
    Operator,
    Query,
    RTX_6000Ada,
    Tesla_T4,
    Tesla_V100,
    compute_cap,
    cpu_arch,
    cpu_cores_effective,
    cpu_ram,
    cuda_max_good,
    dph_total,
    driver_vers,
    gpu_model,
    gpu_name,
    gpu_ram,
    has_avx,
    label,
    num_gpus,
    same_gpu,
)

# The documented example of Vast's configuration page, with only the import changed.
VAST_EXAMPLE = """
from vastrpc.query import gpu_name, gpu_ram, cpu_cores, RTX_4090, RTX_5090, H100_SXM
from vastrpc import Deployment

app = Deployment(name="vast-file")
image = app.image("python:3.11-slim")
image.require(gpu_name.in_([RTX_4090, RTX_5090]))
image.require(gpu_ram >= 48, cpu_cores >= 16)
image.require(gpu_name == H100_SXM)
"""


def test_a_vast_deployment_file_runs_with_only_its_import_changed() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(VAST_EXAMPLE, "vast_file.py", "exec"), namespace)
    assert namespace["image"].requirements == [
        Query("gpu_name", Operator.IN, ("RTX 4090", "RTX 5090")),
        Query("gpu_ram", Operator.GE, (48.0,)),
        Query("cpu_cores", Operator.GE, (16.0,)),
        Query("gpu_name", Operator.EQ, ("H100 SXM",)),
    ]


def test_every_operator_builds_a_query_and_prints_as_written() -> None:
    cases = [
        (gpu_ram == 80, Operator.EQ, "gpu_ram == 80"),
        (gpu_ram != 80, Operator.NE, "gpu_ram != 80"),
        (gpu_ram < 80, Operator.LT, "gpu_ram < 80"),
        (gpu_ram <= 80.5, Operator.LE, "gpu_ram <= 80.5"),
        (gpu_ram > 24, Operator.GT, "gpu_ram > 24"),
        (gpu_ram >= 24, Operator.GE, "gpu_ram >= 24"),
        (gpu_name.in_([RTX_4090, RTX_5090]), Operator.IN, 'gpu_name.in_(["RTX 4090", "RTX 5090"])'),
        (gpu_name.notin_((Tesla_T4,)), Operator.NOT_IN, 'gpu_name.notin_(["Tesla T4"])'),
        (gpu_name == H100_SXM, Operator.EQ, 'gpu_name == "H100 SXM"'),
        (has_avx == True, Operator.EQ, "has_avx == True"),  # noqa: E712 (a query, not a comparison)
        (label("zone") == "us-east", Operator.EQ, 'label("zone") == "us-east"'),
    ]
    for query, op, text in cases:
        assert isinstance(query, Query) and query.op is op and str(query) == text
    # Reflected comparisons too: 48 <= gpu_ram is gpu_ram >= 48.
    assert (48 <= gpu_ram) == (gpu_ram >= 48)


def test_queries_are_immutable_values_and_columns_stay_hashable() -> None:
    query = gpu_ram >= 48
    assert query == (gpu_ram >= 48) and hash(query) == hash(gpu_ram >= 48)
    with pytest.raises(AttributeError):
        query.column = "cpu_ram"  # type: ignore[misc]
    # Columns compare into queries, yet still go in sets and dicts (hashed by identity).
    assert {gpu_ram: 1, gpu_name: 2}[gpu_ram] == 1 and len({gpu_ram, gpu_ram, cpu_ram}) == 2
    # A query is not a condition: testing it says so instead of being always true.
    with pytest.raises(TypeError, match="pass it to image.require"):
        if gpu_name == H100_SXM:
            pass


def test_units_and_types_follow_vast() -> None:
    # compute_cap as Vast writes it (890), 8.9 accepted; versions as text or numbers.
    assert (compute_cap >= 8.9) == (compute_cap >= 890)
    assert (compute_cap >= 9).values == (900.0,)
    assert (driver_vers >= 535).values == ("535",) and (driver_vers >= "535.104.05").values == ("535.104.05",)
    assert (cuda_max_good >= 12.4).texts() == ["12.4"]
    assert (has_avx == False).texts() == ["false"]  # noqa: E712


def test_all_of_vasts_columns_and_gpu_names_are_there() -> None:
    assert len(COLUMNS) == 63 and len(GPU_NAMES) == 41
    for name in ("gpu_name", "gpu_total_ram", "cpu_cores_effective", "disk_space", "dph_total", "geolocation"):
        assert COLUMNS[name].name == name
    assert GPU_NAMES["H100_SXM"] == "H100 SXM" and GPU_NAMES["RTX_6000Ada"] == "RTX 6000Ada"
    import vastrpc.query

    assert set(COLUMNS) | set(GPU_NAMES) <= set(vastrpc.query.__all__)
    # Every column is a module attribute, as in vastai.data.query.
    assert all(getattr(vastrpc.query, name) is column for name, column in COLUMNS.items())


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: gpu_ram >= "48", r"gpu_ram takes numbers \(GB per GPU\), got '48'"),
        (lambda: gpu_ram >= True, "gpu_ram takes numbers"),
        (lambda: gpu_ram >= float("nan"), "gpu_ram takes numbers"),
        (lambda: gpu_name == 4090, "gpu_name takes names, got 4090"),
        (lambda: gpu_name > RTX_4090, r"gpu_name takes ==, !=, in_, notin_, not >"),
        (lambda: has_avx == 1, r"has_avx takes True or False"),
        (lambda: has_avx < True, "has_avx takes ==, !="),
        (lambda: driver_vers >= "new", "driver_vers takes version strings"),
        (lambda: gpu_name.in_(RTX_4090), r"gpu_name.in_\(...\) takes a list of values"),
        (lambda: gpu_name.in_([]), "needs at least one value"),
        (lambda: label("bad key") == "x", "label name 'bad key' is invalid"),
        (lambda: label("zone") == "us east", "value of label 'zone'"),
    ],
)
def test_a_wrong_value_type_is_refused_when_the_query_is_built(build: Any, match: str) -> None:
    with pytest.raises(DefinitionError, match=match):
        build()


def test_require_refuses_what_is_not_a_query_and_unknown_columns() -> None:
    image = Deployment(name="x").image("python:3.11-slim")
    with pytest.raises(DefinitionError, match=r"require: True is not a query; build one from a column"):
        image.require(gpu_ram is not None)
    with pytest.raises(DefinitionError, match=r"'gpu_ram >= 48' is not a query"):
        image.require("gpu_ram >= 48")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match=r"unknown column 'gpu_memory'; known columns: gpu_name, gpu_ram, "):
        Query.from_texts("gpu_memory", Operator.GE, ["48"])
    with pytest.raises(DefinitionError, match="gpu_ram takes numbers"):
        Query.from_texts("gpu_ram", Operator.GE, ["lots"])
    with pytest.raises(DefinitionError, match="takes one value, got 2"):
        Query.from_texts("gpu_ram", Operator.GE, ["1", "2"])
    assert image.requirements == []  # a refused call records nothing


def test_queries_round_trip_through_their_text() -> None:
    queries = [gpu_ram >= 40.5, gpu_name.notin_([L40, L40S]), has_avx != False, driver_vers < "550"]  # noqa: E712
    for query in [*queries, cpu_arch == "arm64", dph_total < 2]:
        assert Query.from_texts(query.column, query.op, query.texts()) == query


def test_keyword_filters_are_shorthand_for_the_same_queries() -> None:
    by_keyword = (
        Deployment(name="a").image("python:3.11-slim").require(gpus=2, gpu_name="A100", gpu_ram_gb=80, cpus=2, ram_gb=8)
    )
    by_query = (
        Deployment(name="b")
        .image("python:3.11-slim")
        .require(num_gpus >= 2, gpu_name == "A100", gpu_ram >= 80, cpu_cores_effective >= 2, cpu_ram >= 8)
    )
    assert by_keyword.requirements == by_query.requirements
    assert keyword_queries({"labels": {"zone": "us-east"}}) == [label("zone") == "us-east"]
    # The contract's old map (clients before queries) reads as the same queries.
    stored = {"gpus": "2", "gpu_name": "A100", "gpu_ram_gb": "80", "cpus": "2", "ram_gb": "8"}
    assert stored_keyword_queries(stored) == by_keyword.requirements
    assert stored_keyword_queries({"label:zone": "us-east"}) == [label("zone") == "us-east"]


def test_calling_require_again_adds_and_a_keyword_replaces_its_own_query() -> None:
    image = Deployment(name="x").image("python:3.11-slim").require(gpus=1, gpu_name="A100")
    image.require(gpu_ram >= 24, gpus=2)
    image.require(gpu_ram >= 24)  # the same query twice is kept once
    assert image.requirements == [gpu_name == "A100", num_gpus >= 2, gpu_ram >= 24]


@pytest.mark.parametrize(
    "driver_name, constant",
    [
        ("NVIDIA H100 80GB HBM3", H100_SXM),
        ("NVIDIA H100 PCIe", H100_PCIE),
        ("NVIDIA H100 NVL", H100_NVL),
        ("NVIDIA GeForce RTX 4090", RTX_4090),
        ("NVIDIA GeForce RTX 4080 SUPER", RTX_4080S),
        ("NVIDIA A100-SXM4-80GB", A100_SXM4),
        ("NVIDIA A100-SXM4-40GB", A100_SXM4),
        ("NVIDIA RTX 6000 Ada Generation", RTX_6000Ada),
        ("Tesla T4", Tesla_T4),
        ("Tesla V100-SXM2-16GB", Tesla_V100),
        ("NVIDIA L40S", L40S),
        ("AMD Instinct MI250X", InstinctMI250X),
    ],
)
def test_a_drivers_gpu_name_matches_its_constant_and_no_other(driver_name: str, constant: str) -> None:
    assert gpu_model(driver_name) == constant
    assert same_gpu(constant, driver_name)
    others = [value for value in GPU_NAMES.values() if value != constant and same_gpu(value, driver_name)]
    assert others == []


def test_gpu_names_match_loosely_only_where_a_form_factor_is_left_out() -> None:
    assert same_gpu("A100", "NVIDIA A100-SXM4-80GB") and same_gpu("a100", "A100 PCIE")  # the keyword shorthand
    assert same_gpu(H100_SXM, "H100")  # Ray's accelerator type names no form factor
    assert not same_gpu(H100_PCIE, "NVIDIA H100 80GB HBM3")
    assert not same_gpu("A10", "NVIDIA A100-SXM4-80GB") and not same_gpu(L40, "NVIDIA L40S")
    assert gpu_model("NVIDIA Quadro P1000") is None
