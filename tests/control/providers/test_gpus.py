"""GpuSlots: which of a host's GPUs each worker holds, from its num_gpus and per-GPU queries."""

from __future__ import annotations

import pytest

from vastrpc._errors import DeploymentError
from vastrpc.control.providers.gpus import GpuPlacementError, GpuSlots, gpu_count, visible_devices
from vastrpc.control.providers.inventory import GpuInfo
from vastrpc.query import H100_SXM, RTX_4090, compute_cap, cpu_ram, gpu_name, gpu_ram, num_gpus

H100 = GpuInfo("NVIDIA H100 80GB HBM3", memory_gb=81.6, compute_cap=900)
R4090 = GpuInfo("NVIDIA GeForce RTX 4090", memory_gb=24.6, compute_cap=890)


def test_num_gpus_forms() -> None:
    assert gpu_count([num_gpus == 2]) == 2
    assert gpu_count([num_gpus >= 3]) == 3
    assert gpu_count([num_gpus > 1]) == 2
    assert gpu_count([num_gpus.in_([4, 2, 8])]) == 2
    assert gpu_count([num_gpus <= 4]) == 1
    assert gpu_count([num_gpus == 0]) == 0
    assert gpu_count([num_gpus >= 2, num_gpus <= 4]) == 2
    # No num_gpus query: one GPU when a kind of GPU is asked for, else none.
    assert gpu_count([gpu_ram >= 40]) == 1
    assert gpu_count([cpu_ram >= 16]) == 0
    assert gpu_count([]) == 0
    with pytest.raises(GpuPlacementError, match="no number of GPUs meets num_gpus > 4, num_gpus < 2"):
        gpu_count([num_gpus > 4, num_gpus < 2])


def test_workers_get_disjoint_gpus_lowest_first() -> None:
    slots = GpuSlots([H100] * 4)
    assert slots.take("w-a", [num_gpus == 2]) == (0, 1)
    assert slots.take("w-b", [num_gpus == 2]) == (2, 3)
    assert slots.held("w-a") == (0, 1)
    assert slots.held("w-b") == (2, 3)
    assert slots.held("w-c") == ()
    # Taking again returns what the worker holds.
    assert slots.take("w-a", [num_gpus == 2]) == (0, 1)
    assert visible_devices(slots.held("w-b")) == "2,3"
    assert visible_devices(()) == ""


def test_full_host_fails_naming_the_query_and_the_holders() -> None:
    slots = GpuSlots([H100] * 4)
    slots.take("w-a", [num_gpus == 2])
    slots.take("w-b", [num_gpus == 2])
    with pytest.raises(GpuPlacementError) as caught:
        slots.take("w-c", [num_gpus == 2])
    error = caught.value
    assert isinstance(error, DeploymentError)
    assert error.step == "placement"
    assert "worker w-c needs 2 GPUs (num_gpus == 2)" in error.reason
    assert "GPUs 0, 1 held by worker w-a" in error.reason
    assert "GPUs 2, 3 held by worker w-b" in error.reason
    assert "scale down" in error.reason
    assert slots.held("w-c") == ()


def test_give_back_frees_the_gpus_for_others() -> None:
    slots = GpuSlots([H100] * 4)
    slots.take("w-a", [num_gpus == 2])
    slots.take("w-b", [num_gpus == 2])
    slots.give_back("w-a")
    slots.give_back("w-unknown")  # nothing held: nothing happens
    assert slots.held("w-a") == ()
    assert slots.take("w-c", [num_gpus == 2]) == (0, 1)


def test_a_worker_taking_again_gets_the_gpus_it_last_held() -> None:
    slots = GpuSlots([H100] * 4)
    slots.take("w-a", [num_gpus == 1])
    slots.take("w-b", [num_gpus == 1])
    slots.give_back("w-a")
    slots.give_back("w-b")
    # w-b restarts in its slot (tier 3): GPU 1 again, though 0 is free and lower.
    assert slots.take("w-b", [num_gpus == 1]) == (1,)
    slots.forget("w-b")
    assert slots.take("w-b", [num_gpus == 1]) == (0,)


def test_per_gpu_queries_pick_matching_gpus() -> None:
    slots = GpuSlots([R4090, H100, R4090, H100])
    assert slots.take("w-a", [gpu_name == H100_SXM]) == (1,)
    assert slots.take("w-b", [num_gpus == 1, gpu_ram >= 40]) == (3,)
    assert slots.take("w-c", [gpu_name == RTX_4090, num_gpus == 2]) == (0, 2)
    with pytest.raises(GpuPlacementError, match=r"needs 1 GPU \(compute_cap >= 900\).*GPU 1 held by worker w-a"):
        slots.take("w-d", [compute_cap >= 900])


def test_a_host_that_can_never_meet_the_queries_runs_the_worker_anyway() -> None:
    slots = GpuSlots([R4090, R4090])
    # No H100 here: the worker gets a GPU of another kind (the provider warns).
    assert slots.take("w-a", [gpu_name == H100_SXM]) == (0,)
    # More GPUs than the host has: all it has, when they are free.
    with pytest.raises(GpuPlacementError, match="needs 2 GPUs"):
        slots.take("w-b", [num_gpus == 8])
    assert GpuSlots([R4090, R4090]).take("w-b", [num_gpus == 8]) == (0, 1)
    # No GPU at all on the host (development): nothing to hold, no error.
    assert GpuSlots([]).take("w-c", [num_gpus == 2]) == ()


def test_no_gpu_asked_holds_none() -> None:
    slots = GpuSlots([H100] * 2)
    assert slots.take("w-a", [cpu_ram >= 1]) == ()
    assert slots.take("w-b", [num_gpus == 0]) == ()
    assert slots.take("w-c", [num_gpus == 2]) == (0, 1)


def test_adopt_records_gpus_of_an_earlier_service() -> None:
    slots = GpuSlots([H100] * 4)
    assert slots.adopt("w-old", [2, 3, 9]) == (2, 3)  # 9: not on this host
    assert slots.adopt("w-other", [3]) == ()  # held already
    assert slots.take("w-new", [num_gpus == 2]) == (0, 1)
    with pytest.raises(GpuPlacementError, match="GPUs 2, 3 held by worker w-old"):
        slots.take("w-more", [num_gpus == 1])
    assert slots.holders() == {"w-new": (0, 1), "w-old": (2, 3)}
