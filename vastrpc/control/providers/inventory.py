"""What a host or node offers (its inventory): declared in a JSON file, or probed on this machine (NVML, nvidia-smi)."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vastrpc._errors import VastrpcError

__all__ = ["GpuInfo", "Inventory", "InventoryError", "probe_machine"]

log = logging.getLogger(__name__)

# Vast counts GPU memory in MiB / 1000 (an "80 GB" H100 reports 81559 MiB: 81.6 GB).
_MIB = 2**20
_CPU_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class InventoryError(VastrpcError):
    """A declared inventory (``--inventory FILE``, ``VASTRPC_INVENTORY``) cannot be read."""


@dataclass(frozen=True)
class GpuInfo:
    """One GPU.

    Attributes:
        name: Its name as the driver (or Ray) gives it, e.g. ``"NVIDIA H100 80GB HBM3"``.
        memory_gb: Its memory in GB (MiB / 1000, as Vast counts); None when unknown.
        compute_cap: Its compute capability as Vast writes it (890 for 8.9); None when unknown.
        driver_version: The driver's version, e.g. ``"550.54.15"``; None when unknown.
        cuda_version: The highest CUDA version the driver supports, e.g. 12.4; None when unknown.
    """

    name: str
    memory_gb: float | None = None
    compute_cap: float | None = None
    driver_version: str | None = None
    cuda_version: float | None = None


@dataclass(frozen=True)
class Inventory:
    """What a host (or one Ray node, or the share of it a worker gets) offers; None fields are unknown.

    Attributes:
        cpu_cores: The host's CPU cores.
        cpu_cores_effective: The cores a worker gets (its share).
        ram_gb: GB of RAM (10^9 bytes).
        disk_gb: GB of free disk where workers keep their files.
        cpu_arch: ``"amd64"`` or ``"arm64"``.
        cpu_name: The CPU's model name.
        gpus: The GPUs a worker gets.
        labels: Node labels (a cluster's nodes; none on the local machine).
    """

    cpu_cores: float | None = None
    cpu_cores_effective: float | None = None
    ram_gb: float | None = None
    disk_gb: float | None = None
    cpu_arch: str | None = None
    cpu_name: str | None = None
    gpus: tuple[GpuInfo, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Inventory:
        """From a JSON object with this class's field names (``gpus`` a list of GpuInfo objects).

        Raises:
            InventoryError: An unknown field or a value of the wrong type.
        """
        try:
            fields = dict(data)
            gpus = tuple(GpuInfo(**g) for g in fields.pop("gpus", []))
            for gpu in gpus:
                if not isinstance(gpu.name, str) or not gpu.name:
                    raise TypeError("every GPU needs a name")
            inventory = cls(gpus=gpus, **fields)
        except TypeError as exc:
            raise InventoryError(
                f"the declared inventory is invalid ({exc}): give an object with cpu_cores, cpu_cores_effective, "
                "ram_gb, disk_gb, cpu_arch, cpu_name, labels and gpus: a list of objects with name, memory_gb, "
                "compute_cap, driver_version, cuda_version"
            ) from None
        return inventory

    @classmethod
    def load(cls, path: Path) -> Inventory:
        """Read a declared inventory from a JSON file.

        Raises:
            InventoryError: The file cannot be read or is not a valid inventory.
        """
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InventoryError(f"cannot read the inventory file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise InventoryError(f"the inventory file {path} must hold a JSON object")
        return cls.from_json(data)


def probe_machine(home: Path) -> Inventory:
    """This machine's inventory: CPUs, RAM, free disk under ``home``, GPUs through NVML or nvidia-smi (else none)."""
    cores = float(os.cpu_count() or 1)
    try:
        effective = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        effective = cores
    try:
        ram_gb: float | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        ram_gb = None
    where = Path(home)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        disk_gb: float | None = shutil.disk_usage(where).free / 1e9
    except OSError:
        disk_gb = None
    return Inventory(
        cpu_cores=cores,
        cpu_cores_effective=effective,
        ram_gb=ram_gb,
        disk_gb=disk_gb,
        cpu_arch=_CPU_ARCH.get(platform.machine().lower(), platform.machine().lower() or None),
        cpu_name=_cpu_name(),
        gpus=_gpus_nvml() if _has_nvml() else _gpus_nvidia_smi(),
    )


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def _has_nvml() -> bool:
    try:
        import pynvml  # type: ignore[import-not-found]  # noqa: F401  (nvidia-ml-py, optional)
    except ImportError:
        return False
    return True


def _gpus_nvml() -> tuple[GpuInfo, ...]:
    import pynvml

    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver, or no GPU: NVMLError subclasses
        log.info("NVML found no GPU (%s); trying nvidia-smi", exc)
        return _gpus_nvidia_smi()
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_int = pynvml.nvmlSystemGetCudaDriverVersion()
        cuda = cuda_int // 1000 + (cuda_int % 1000) / 100
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                GpuInfo(
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_gb=pynvml.nvmlDeviceGetMemoryInfo(handle).total / _MIB / 1000,
                    compute_cap=float(major * 100 + minor * 10),
                    driver_version=driver,
                    cuda_version=round(cuda, 1),
                )
            )
        return tuple(gpus)
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _gpus_nvidia_smi() -> tuple[GpuInfo, ...]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    query = "--query-gpu=name,memory.total,compute_cap,driver_version"
    try:
        listing = subprocess.run(
            [smi, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
        header = subprocess.run([smi], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s): treating this machine as one without GPUs", exc)
        return ()
    match = re.search(r"CUDA Version:\s*([\d.]+)", header)
    cuda = float(match.group(1)) if match else None
    gpus = []
    for line in listing.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0]:
            continue
        gpus.append(
            GpuInfo(
                name=parts[0],
                memory_gb=_float(parts[1], 0.001),  # MiB
                compute_cap=_float(parts[2], 100),
                driver_version=parts[3] or None,
                cuda_version=cuda,
            )
        )
    return tuple(gpus)


def _float(text: str, scale: float) -> float | None:
    """``text`` as a number times ``scale``; None for ``[N/A]`` and the like."""
    try:
        return round(float(text) * scale, 3)
    except ValueError:
        return None
