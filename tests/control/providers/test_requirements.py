"""The one evaluator of requirements against inventories, declared or probed, and the local provider's warnings."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from vastrpc._errors import DefinitionError
from vastrpc.api.v1 import control_pb2
from vastrpc.config import ControlConfig
from vastrpc.control.providers.inventory import GpuInfo, Inventory, InventoryError, probe_machine
from vastrpc.control.providers.local import LocalProcessProvider
from vastrpc.control.providers.requirements import Status, evaluate, spec_queries
from vastrpc.query import (
    A100_SXM4,
    H100_SXM,
    RTX_4090,
    RTX_5090,
    bw_nvlink,
    compute_cap,
    cpu_arch,
    cpu_cores,
    cpu_cores_effective,
    cpu_name,
    cpu_ram,
    cuda_max_good,
    disk_space,
    dph_total,
    driver_vers,
    gpu_arch,
    gpu_name,
    gpu_ram,
    gpu_total_ram,
    host_id,
    label,
    num_gpus,
    reliability,
)

H100 = GpuInfo(
    "NVIDIA H100 80GB HBM3", memory_gb=81.559, compute_cap=900, driver_version="550.54.15", cuda_version=12.4
)
EIGHT_H100 = Inventory(
    cpu_cores=64,
    cpu_cores_effective=64,
    ram_gb=1024,
    disk_gb=2000,
    cpu_arch="amd64",
    cpu_name="AMD EPYC 9454",
    gpus=(H100,) * 8,
    labels={"zone": "us-east"},
)
LAPTOP = Inventory(cpu_cores=8, cpu_cores_effective=8, ram_gb=16, disk_gb=50, cpu_arch="arm64")


def _status(query, inventory: Inventory) -> Status:
    (outcome,) = evaluate([query], inventory).outcomes
    return outcome.status


@pytest.mark.parametrize(
    "query",
    [
        gpu_name == H100_SXM,
        gpu_name.notin_([RTX_4090, RTX_5090]),
        gpu_name != A100_SXM4,
        gpu_ram >= 80,
        gpu_total_ram >= 640,
        num_gpus == 8,
        num_gpus.in_([4, 8]),
        compute_cap >= 8.9,
        cuda_max_good >= 12.2,
        driver_vers >= "535.104",
        driver_vers == "550",
        gpu_arch == "nvidia",
        cpu_cores >= 16,
        cpu_cores_effective > 32,
        cpu_ram <= 1024,
        cpu_arch == "amd64",
        cpu_name != "Intel Xeon",
        disk_space >= 100,
        label("zone") == "us-east",
        label("rack").notin_(["r1"]),
    ],
)
def test_queries_the_host_meets_are_met(query) -> None:
    assert _status(query, EIGHT_H100) is Status.MET, str(query)


@pytest.mark.parametrize(
    "query, reason",
    [
        (gpu_ram >= 48, "gpu_ram >= 48 (this machine: 0 GPUs)"),
        (gpu_name == H100_SXM, 'gpu_name == "H100 SXM" (this machine: 0 GPUs)'),
        (num_gpus >= 1, "num_gpus >= 1 (this machine: 0 GPUs)"),
        (cpu_cores >= 16, "cpu_cores >= 16 (this machine: 8)"),
        (cpu_ram > 32, "cpu_ram > 32 (this machine: 16)"),
        (cpu_arch == "amd64", 'cpu_arch == "amd64" (this machine: arm64)'),
        (disk_space >= 100, "disk_space >= 100 (this machine: 50)"),
        (cpu_name == "AMD EPYC 9454", 'cpu_name == "AMD EPYC 9454" (this machine: cpu_name unknown)'),
        (label("zone") == "us-east", 'label("zone") == "us-east" (this machine: none)'),
    ],
)
def test_unmet_queries_say_what_the_machine_offers(query, reason: str) -> None:
    (outcome,) = evaluate([query], LAPTOP).unmet
    assert outcome.reason() == reason


def test_per_gpu_queries_hold_for_every_gpu_and_unknown_values_are_unmet() -> None:
    mixed = Inventory(gpus=(H100, GpuInfo("NVIDIA GeForce RTX 4090", memory_gb=24.564)))
    (outcome,) = evaluate([gpu_ram >= 48], mixed).outcomes
    assert outcome.status is Status.UNMET and outcome.offered == "24.564/81.559"
    assert _status(gpu_name.in_([H100_SXM, RTX_4090]), mixed) is Status.MET
    (unknown,) = evaluate([compute_cap >= 800], mixed).unmet
    assert unknown.reason() == "compute_cap >= 800 (this machine: compute_cap unknown)"


def test_columns_no_provider_can_know_are_not_applicable_never_dropped() -> None:
    queries = [dph_total < 2, reliability > 0.99, host_id == 12, bw_nvlink >= 100, gpu_ram >= 48]
    evaluation = evaluate(queries, EIGHT_H100)
    assert [o.query for o in evaluation.not_applicable] == queries[:4]
    assert evaluation.met  # not applicable is not unmet
    assert evaluation.not_applicable[0].reason() == (
        "dph_total < 2 (not applicable here: dph_total is Vast's marketplace's to know)"
    )


def test_inventory_from_json_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps({"cpu_cores": 4, "gpus": [{"name": "NVIDIA L4", "memory_gb": 23}]}))
    inventory = Inventory.load(path)
    assert inventory.cpu_cores == 4 and inventory.gpus == (GpuInfo("NVIDIA L4", memory_gb=23),)
    assert _status(gpu_total_ram >= 20, inventory) is Status.MET
    path.write_text(json.dumps({"cores": 4}))
    with pytest.raises(
        InventoryError, match="the declared inventory is invalid .*cores.*give an object with cpu_cores"
    ):
        Inventory.load(path)
    path.write_text("[1]")
    with pytest.raises(InventoryError, match="must hold a JSON object"):
        Inventory.load(path)
    with pytest.raises(InventoryError, match="cannot read the inventory file"):
        Inventory.load(tmp_path / "missing.json")


FAKE_SMI = """#!/bin/sh
if [ "$1" = "--query-gpu=name,memory.total,compute_cap,driver_version" ]; then
  echo "NVIDIA A100-SXM4-80GB, 81920, 8.0, 535.104.05"
  echo "NVIDIA A100-SXM4-80GB, 81920, 8.0, 535.104.05"
else
  echo "| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2 |"
fi
"""


def test_probing_reads_gpus_from_nvidia_smi_when_nvml_is_missing(tmp_path: Path, monkeypatch) -> None:
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(FAKE_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("vastrpc.control.providers.inventory._has_nvml", lambda: False)
    inventory = probe_machine(tmp_path / "home-not-made-yet")
    a100 = GpuInfo(
        "NVIDIA A100-SXM4-80GB", memory_gb=81.92, compute_cap=800, driver_version="535.104.05", cuda_version=12.2
    )
    assert inventory.gpus == (a100, a100)
    assert inventory.cpu_cores and inventory.ram_gb and inventory.disk_gb and inventory.cpu_arch
    queries = [gpu_name == A100_SXM4, num_gpus == 2, gpu_ram >= 80, compute_cap == 8.0, cuda_max_good >= 12]
    assert evaluate(queries, inventory).met


def test_probing_without_any_gpu_tool_finds_no_gpu(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("vastrpc.control.providers.inventory._has_nvml", lambda: False)
    assert probe_machine(tmp_path).gpus == ()


async def test_the_local_provider_warns_about_unmet_queries_and_lists_not_applicable_ones(tmp_path: Path) -> None:
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps({"cpu_cores": 8, "cpu_cores_effective": 8, "ram_gb": 16}))
    provider = LocalProcessProvider.from_config(ControlConfig(home=tmp_path / "home", inventory_file=path))
    warnings = await provider.requirement_warnings([gpu_name == H100_SXM, cpu_cores >= 4, dph_total < 1])
    assert warnings == [
        'requirement not met on this machine, running anyway: gpu_name == "H100 SXM" (this machine: 0 GPUs)',
        "requirement not checked: dph_total < 1 (not applicable here: dph_total is Vast's marketplace's to know)",
    ]
    assert await provider.requirement_warnings([cpu_cores >= 4]) == []


def test_stored_specs_give_queries_and_old_specs_their_keyword_filters() -> None:
    image = control_pb2.ImageSpec(
        queries=[
            control_pb2.Requirement(column="gpu_ram", op=control_pb2.REQUIREMENT_OPERATOR_GE, values=["48"]),
            control_pb2.Requirement(
                column="gpu_name", op=control_pb2.REQUIREMENT_OPERATOR_IN, values=["RTX 4090", "RTX 5090"]
            ),
        ]
    )
    assert spec_queries(image) == [gpu_ram >= 48, gpu_name.in_([RTX_4090, RTX_5090])]
    old = control_pb2.ImageSpec(requirements={"gpus": "1", "label:zone": "gpu"})
    assert spec_queries(old) == [num_gpus >= 1, label("zone") == "gpu"]
    bad = control_pb2.ImageSpec(queries=[control_pb2.Requirement(column="gpu_ram", values=["48"])])
    with pytest.raises(DefinitionError, match="has no operator"):
        spec_queries(bad)
    unknown = control_pb2.ImageSpec(
        queries=[control_pb2.Requirement(column="vram", op=control_pb2.REQUIREMENT_OPERATOR_GE, values=["48"])]
    )
    with pytest.raises(DefinitionError, match="unknown column 'vram'; known columns: gpu_name"):
        spec_queries(unknown)
