"""Hardware requirements as queries, mirroring Vast.ai's ``vastai.data.query``: columns, operators, GPU names.

A deployment file written for Vast's Deployments SDK changes only its import::

    from vastrpc.query import gpu_name, gpu_ram, cpu_cores, RTX_4090, RTX_5090

    image.require(gpu_name.in_([RTX_4090, RTX_5090]), gpu_ram >= 48, cpu_cores >= 16)

A column compared with a value (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``) or given a
list (``.in_([...])``, ``.notin_([...])``) is a ``Query``: column, operator and values,
checked against the column's type when it is built. Every column of Vast's search is
accepted; which ones a provider can check is in docs/configuration.md.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from vastrpc._errors import DefinitionError

__all__ = [
    "COLUMNS",
    "GPU_NAMES",
    "Column",
    "Kind",
    "Operator",
    "Query",
    "gpu_model",
    "label",
    "same_gpu",
]


class Kind(enum.Enum):
    """The type of a column's values."""

    NUMBER = "number"
    TEXT = "text"
    VERSION = "version"
    BOOL = "bool"


class Operator(enum.Enum):
    """How a query compares a column with its values; the value is the operator as written."""

    EQ = "=="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in_"
    NOT_IN = "notin_"


_ORDERING = (Operator.LT, Operator.LE, Operator.GT, Operator.GE)
_OPERATORS_BY_KIND = {
    Kind.NUMBER: tuple(Operator),
    Kind.VERSION: tuple(Operator),
    Kind.TEXT: (Operator.EQ, Operator.NE, Operator.IN, Operator.NOT_IN),
    Kind.BOOL: (Operator.EQ, Operator.NE),
}
_VERSION = re.compile(r"^\d+(\.\d+)*$")
LABEL_PREFIX = "label:"
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")

Value = float | str | bool


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class Query:
    """One requirement: ``column`` compared by ``op`` with ``values`` (one, or several for in/notin).

    Build queries from the columns (``gpu_ram >= 48``), not by hand: a column checks its
    values' type. ``str(query)`` is the query as it is written in Python.

    Attributes:
        column: The column's name, e.g. ``"gpu_ram"``; ``"label:<key>"`` for a node label.
        op: The operator.
        values: The values, typed by the column: float for numbers, str for names and
            versions, bool for flags.
    """

    column: str
    op: Operator
    values: tuple[Value, ...]

    def texts(self) -> list[str]:
        """The values as text, as the contract carries them (``"48"``, ``"RTX 4090"``, ``"true"``)."""
        return [_to_text(v) for v in self.values]

    def __str__(self) -> str:
        name = (
            f'label("{self.column.removeprefix(LABEL_PREFIX)}")'
            if self.column.startswith(LABEL_PREFIX)
            else self.column
        )
        shown = [_show(v) for v in self.values]
        if self.op in (Operator.IN, Operator.NOT_IN):
            return f"{name}.{self.op.value}([{', '.join(shown)}])"
        return f"{name} {self.op.value} {shown[0]}"

    def __bool__(self) -> bool:
        raise TypeError(
            f"{self} is a requirement, not a condition: pass it to image.require(...) instead of testing it"
        )

    @classmethod
    def from_texts(cls, column: str, op: Operator, texts: Iterable[str]) -> Query:
        """A query from the contract's form (values as text), checked like one built in Python.

        Raises:
            DefinitionError: An unknown column, an operator or value the column does not take.
        """
        col = column_named(column)
        values = [_from_text(col.kind, t) for t in texts]
        if op in (Operator.IN, Operator.NOT_IN):
            return col._query(op, values)
        if len(values) != 1:
            raise DefinitionError(f"require: {column} {op.value} takes one value, got {len(values)}")
        return col._query(op, values[0])


def _to_text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _number_text(value)
    return value


def _show(value: Value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return _number_text(value)
    return f'"{value}"'


def _from_text(kind: Kind, text: str) -> object:
    if kind is Kind.NUMBER:
        try:
            return float(text)
        except ValueError:
            return text  # refused with the column's advice
    if kind is Kind.BOOL:
        return {"true": True, "false": False}.get(text.lower(), text)
    return text


class Column:
    """A queryable column: compare it to build a ``Query`` (``gpu_ram >= 48``, ``gpu_name == H100_SXM``).

    Attributes:
        name: The column's name, as Vast spells it.
        kind: The type of its values.
        unit: What its numbers count, in words (``"GB"``), or ``""``.
    """

    __slots__ = ("kind", "name", "unit")

    def __init__(self, name: str, kind: Kind, unit: str = "") -> None:
        self.name = name
        self.kind = kind
        self.unit = unit

    def __repr__(self) -> str:
        return f"Column({self.name!r})"

    # Comparisons build queries; hashing stays by identity, so columns still go in sets and dicts.
    __hash__ = object.__hash__

    def __eq__(self, value: object) -> Query:  # type: ignore[override]
        return self._query(Operator.EQ, value)

    def __ne__(self, value: object) -> Query:  # type: ignore[override]
        return self._query(Operator.NE, value)

    def __lt__(self, value: object) -> Query:
        return self._query(Operator.LT, value)

    def __le__(self, value: object) -> Query:
        return self._query(Operator.LE, value)

    def __gt__(self, value: object) -> Query:
        return self._query(Operator.GT, value)

    def __ge__(self, value: object) -> Query:
        return self._query(Operator.GE, value)

    def in_(self, values: Iterable[object]) -> Query:
        """The column is one of ``values``, e.g. ``gpu_name.in_([RTX_4090, RTX_5090])``."""
        return self._query(Operator.IN, values)

    def notin_(self, values: Iterable[object]) -> Query:
        """The column is none of ``values``."""
        return self._query(Operator.NOT_IN, values)

    def _query(self, op: Operator, value: object) -> Query:
        if op not in _OPERATORS_BY_KIND[self.kind]:
            allowed = ", ".join(o.value for o in _OPERATORS_BY_KIND[self.kind])
            raise DefinitionError(
                f"require: {self.name} takes {allowed}, not {op.value}: its values are {self._kind_words()}"
            )
        if op in (Operator.IN, Operator.NOT_IN):
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise DefinitionError(f"require: {self.name}.{op.value}(...) takes a list of values, got {value!r}")
            values = tuple(self._value(v) for v in value)
            if not values:
                raise DefinitionError(f"require: {self.name}.{op.value}([...]) needs at least one value")
        else:
            values = (self._value(value),)
        return Query(self.name, op, values)

    def _kind_words(self) -> str:
        return {
            Kind.NUMBER: f"numbers{f' ({self.unit})' if self.unit else ''}",
            Kind.TEXT: "names",
            Kind.VERSION: "version strings such as '535.104'",
            Kind.BOOL: "True or False",
        }[self.kind]

    def _value(self, value: object) -> Value:
        bad = DefinitionError(f"require: {self.name} takes {self._kind_words()}, got {value!r}")
        if self.kind is Kind.NUMBER:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad
            if self.name == "compute_cap" and value < 100:
                return float(round(value * 100))  # 8.9 as Vast writes it: 890
            return float(value)
        if self.kind is Kind.BOOL:
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind is Kind.VERSION:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = _number_text(float(value))
            if not isinstance(value, str) or not _VERSION.match(value.strip()):
                raise bad
            return value.strip()
        if not isinstance(value, str) or not value.strip():
            raise bad
        if self.name.startswith(LABEL_PREFIX) and (not _LABEL_VALUE.match(value) or len(value) > 63):
            raise DefinitionError(
                f"require: the value of label {self.name.removeprefix(LABEL_PREFIX)!r} must be a string of letters, "
                f"digits, '.', '_', '-' (at most 63), got {value!r}"
            )
        return value.strip()


def label(key: str) -> Column:
    """A node label as a column (a vastrpc addition): ``label("zone") == "us-east"``.

    Raises:
        DefinitionError: ``key`` is not a valid label name.
    """
    if not isinstance(key, str) or not _LABEL_KEY.match(key):
        raise DefinitionError(f"require: label name {key!r} is invalid: use letters, digits, '.', '_', '-' and '/'")
    return Column(LABEL_PREFIX + key, Kind.TEXT)


_N, _T, _V, _B = Kind.NUMBER, Kind.TEXT, Kind.VERSION, Kind.BOOL
_GB = "GB"
# Every column of Vast's offer search, with its type and unit.
_SPECS: dict[str, tuple[Kind, str]] = {
    # GPU
    "gpu_name": (_T, ""),
    "gpu_ram": (_N, "GB per GPU"),
    "gpu_total_ram": (_N, "GB, all GPUs"),
    "gpu_max_power": (_N, "W"),
    "gpu_max_temp": (_N, "°C"),
    "gpu_arch": (_T, ""),
    "gpu_mem_bw": (_N, "GB/s"),
    "gpu_lanes": (_N, ""),
    "gpu_frac": (_N, ""),
    "gpu_display_active": (_B, ""),
    "num_gpus": (_N, ""),
    "compute_cap": (_N, "e.g. 890 for 8.9"),
    "cuda_max_good": (_N, "CUDA version, e.g. 12.4"),
    "bw_nvlink": (_N, "GB/s"),
    "total_flops": (_N, "TFLOPS"),
    # CPU
    "cpu_name": (_T, ""),
    "cpu_cores": (_N, ""),
    "cpu_cores_effective": (_N, ""),
    "cpu_ghz": (_N, "GHz"),
    "cpu_ram": (_N, _GB),
    "cpu_arch": (_T, ""),
    # storage
    "disk_space": (_N, _GB),
    "disk_bw": (_N, "MB/s"),
    "disk_name": (_T, ""),
    "allocated_storage": (_N, _GB),
    # network
    "inet_up": (_N, "Mb/s"),
    "inet_down": (_N, "Mb/s"),
    "inet_up_cost": (_N, "$/GB"),
    "inet_down_cost": (_N, "$/GB"),
    "direct_port_count": (_N, ""),
    "pcie_bw": (_N, "GB/s"),
    "pci_gen": (_N, ""),
    # pricing
    "dph_base": (_N, "$/hour"),
    "dph_total": (_N, "$/hour"),
    "storage_cost": (_N, "$/GB/month"),
    "storage_total_cost": (_N, "$/hour"),
    "vram_costperhour": (_N, "$/GB/hour"),
    "min_bid": (_N, "$/hour"),
    "credit_discount_max": (_N, ""),
    "flops_per_dphtotal": (_N, ""),
    "dlperf_per_dphtotal": (_N, ""),
    # machine and host
    "host_id": (_N, ""),
    "machine_id": (_N, ""),
    "hostname": (_T, ""),
    "public_ipaddr": (_T, ""),
    "reliability": (_N, "0 to 1"),
    "expected_reliability": (_N, "0 to 1"),
    "os_version": (_T, ""),
    "driver_vers": (_V, ""),
    "mobo_name": (_T, ""),
    "has_avx": (_B, ""),
    "static_ip": (_B, ""),
    "external": (_B, ""),
    "verification": (_T, ""),
    "hosting_type": (_N, ""),
    "vms_enabled": (_B, ""),
    "resource_type": (_T, ""),
    "cluster_id": (_N, ""),
    # virtual
    "geolocation": (_T, ""),
    "datacenter": (_B, ""),
    "duration": (_N, "days"),
    "verified": (_B, ""),
    "target_reliability": (_N, "0 to 1"),
}

# Every column by name.
COLUMNS: dict[str, Column] = {name: Column(name, kind, unit) for name, (kind, unit) in _SPECS.items()}


def column_named(name: str) -> Column:
    """The column called ``name`` (``label:<key>`` for a node label).

    Raises:
        DefinitionError: No such column; the message lists them.
    """
    if name.startswith(LABEL_PREFIX):
        return label(name.removeprefix(LABEL_PREFIX))
    column = COLUMNS.get(name)
    if column is None:
        raise DefinitionError(f"require: unknown column {name!r}; known columns: {', '.join(COLUMNS)}")
    return column


# The columns as module attributes, as ``vastai.data.query`` has them.
gpu_name = COLUMNS["gpu_name"]
gpu_ram = COLUMNS["gpu_ram"]
gpu_total_ram = COLUMNS["gpu_total_ram"]
gpu_max_power = COLUMNS["gpu_max_power"]
gpu_max_temp = COLUMNS["gpu_max_temp"]
gpu_arch = COLUMNS["gpu_arch"]
gpu_mem_bw = COLUMNS["gpu_mem_bw"]
gpu_lanes = COLUMNS["gpu_lanes"]
gpu_frac = COLUMNS["gpu_frac"]
gpu_display_active = COLUMNS["gpu_display_active"]
num_gpus = COLUMNS["num_gpus"]
compute_cap = COLUMNS["compute_cap"]
cuda_max_good = COLUMNS["cuda_max_good"]
bw_nvlink = COLUMNS["bw_nvlink"]
total_flops = COLUMNS["total_flops"]
cpu_name = COLUMNS["cpu_name"]
cpu_cores = COLUMNS["cpu_cores"]
cpu_cores_effective = COLUMNS["cpu_cores_effective"]
cpu_ghz = COLUMNS["cpu_ghz"]
cpu_ram = COLUMNS["cpu_ram"]
cpu_arch = COLUMNS["cpu_arch"]
disk_space = COLUMNS["disk_space"]
disk_bw = COLUMNS["disk_bw"]
disk_name = COLUMNS["disk_name"]
allocated_storage = COLUMNS["allocated_storage"]
inet_up = COLUMNS["inet_up"]
inet_down = COLUMNS["inet_down"]
inet_up_cost = COLUMNS["inet_up_cost"]
inet_down_cost = COLUMNS["inet_down_cost"]
direct_port_count = COLUMNS["direct_port_count"]
pcie_bw = COLUMNS["pcie_bw"]
pci_gen = COLUMNS["pci_gen"]
dph_base = COLUMNS["dph_base"]
dph_total = COLUMNS["dph_total"]
storage_cost = COLUMNS["storage_cost"]
storage_total_cost = COLUMNS["storage_total_cost"]
vram_costperhour = COLUMNS["vram_costperhour"]
min_bid = COLUMNS["min_bid"]
credit_discount_max = COLUMNS["credit_discount_max"]
flops_per_dphtotal = COLUMNS["flops_per_dphtotal"]
dlperf_per_dphtotal = COLUMNS["dlperf_per_dphtotal"]
host_id = COLUMNS["host_id"]
machine_id = COLUMNS["machine_id"]
hostname = COLUMNS["hostname"]
public_ipaddr = COLUMNS["public_ipaddr"]
reliability = COLUMNS["reliability"]
expected_reliability = COLUMNS["expected_reliability"]
os_version = COLUMNS["os_version"]
driver_vers = COLUMNS["driver_vers"]
mobo_name = COLUMNS["mobo_name"]
has_avx = COLUMNS["has_avx"]
static_ip = COLUMNS["static_ip"]
external = COLUMNS["external"]
verification = COLUMNS["verification"]
hosting_type = COLUMNS["hosting_type"]
vms_enabled = COLUMNS["vms_enabled"]
resource_type = COLUMNS["resource_type"]
cluster_id = COLUMNS["cluster_id"]
geolocation = COLUMNS["geolocation"]
datacenter = COLUMNS["datacenter"]
duration = COLUMNS["duration"]
verified = COLUMNS["verified"]
target_reliability = COLUMNS["target_reliability"]

# -- GPU names, as Vast spells them ------------------------------------------------------

# NVIDIA data center
A100_PCIE = "A100 PCIE"
A100_SXM4 = "A100 SXM4"
H100_PCIE = "H100 PCIE"
H100_SXM = "H100 SXM"
H100_NVL = "H100 NVL"
H200 = "H200"
H200_NVL = "H200 NVL"
B200 = "B200"
GH200_SXM = "GH200 SXM"
L4 = "L4"
L40 = "L40"
L40S = "L40S"
A10 = "A10"
A30 = "A30"
A40 = "A40"
Tesla_T4 = "Tesla T4"
Tesla_V100 = "Tesla V100"
# consumer
RTX_5090 = "RTX 5090"
RTX_5080 = "RTX 5080"
RTX_5070_Ti = "RTX 5070 Ti"
RTX_5070 = "RTX 5070"
RTX_4090 = "RTX 4090"
RTX_4080S = "RTX 4080S"
RTX_4080 = "RTX 4080"
RTX_4070_Ti = "RTX 4070 Ti"
RTX_4070S = "RTX 4070S"
RTX_3090 = "RTX 3090"
RTX_3090_Ti = "RTX 3090 Ti"
RTX_3080_Ti = "RTX 3080 Ti"
RTX_3080 = "RTX 3080"
# professional
RTX_A6000 = "RTX A6000"
RTX_6000Ada = "RTX 6000Ada"
RTX_5880Ada = "RTX 5880Ada"
RTX_5000Ada = "RTX 5000Ada"
RTX_PRO_6000 = "RTX PRO 6000"
# AMD
InstinctMI250X = "InstinctMI250X"
InstinctMI210 = "InstinctMI210"
InstinctMI100 = "InstinctMI100"
RX_7900_XTX = "RX 7900 XTX"
PRO_W7900 = "PRO W7900"
PRO_W7800 = "PRO W7800"

# Every GPU name constant, by its Python name.
GPU_NAMES: dict[str, str] = {
    name: value
    for name, value in dict(globals()).items()
    if isinstance(value, str) and name[:1].isupper() and name != "LABEL_PREFIX"
}

# Words a driver adds that Vast's names leave out, and a model's form factors.
_NOISE = {"nvidia", "geforce", "amd", "radeon", "tesla", "generation", "blackwell", "workstation", "server", "edition"}
_MEMORY = re.compile(r"^(\d+(gb|g)|hbm\d*e?|gddr\d*x?)$")
_FORMS = ("sxm5", "sxm4", "sxm3", "sxm2", "sxm", "pcie")
# Names that say the form factor only through their memory (NVML's "NVIDIA H100 80GB HBM3" is the SXM one).
_IMPLIED = {"h100hbm": "h100sxm", "gh200": "gh200sxm"}


def _gpu_key(name: str) -> str:
    """A GPU name reduced to what identifies the model: case, vendor words, memory, separators dropped."""
    words = re.sub(r"[-_/()]", " ", name.lower()).replace("super", " s ").split()
    hbm = any(w.startswith("hbm") for w in words)
    key = "".join(w for w in words if w not in _NOISE and not _MEMORY.match(w))
    if key == "h100" and hbm:
        key = "h100hbm"
    return _IMPLIED.get(key, key)


def _base(key: str) -> tuple[str, str]:
    for form in _FORMS:
        if key.endswith(form) and len(key) > len(form):
            return key[: -len(form)], form
    return key, ""


_KEYS = {_gpu_key(value): value for value in GPU_NAMES.values()}


def same_gpu(wanted: str, offered: str) -> bool:
    """Whether the GPU called ``offered`` (a driver's, Ray's or Vast's name) is the model ``wanted`` names.

    Case, the words ``NVIDIA``/``GeForce``/``AMD``/``Radeon``/``Tesla``, memory sizes,
    spaces and dashes do not matter (``"NVIDIA A100-SXM4-80GB"`` is ``A100_SXM4``); a name
    without a form factor (``"A100"``) matches every form of that model.
    """
    a, b = _gpu_key(wanted), _gpu_key(offered)
    if a == b:
        return True
    (base_a, form_a), (base_b, form_b) = _base(a), _base(b)
    return base_a == base_b and not (form_a and form_b)


def gpu_model(name: str) -> str | None:
    """The constant (Vast's spelling) for a driver's GPU name: ``"NVIDIA GeForce RTX 4090"`` → ``RTX_4090``.

    None when no constant names that model.
    """
    key = _gpu_key(name)
    if key in _KEYS:
        return _KEYS[key]
    base, _form = _base(key)
    return _KEYS.get(base)


# ``from vastrpc.query import *`` brings every column and GPU name, as Vast's module does.
__all__ += [*COLUMNS, *GPU_NAMES]
