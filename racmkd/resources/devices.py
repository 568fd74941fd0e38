"""Device profiles: what a deployment target offers (memory, storage, arithmetic, bandwidth, power).

Profiles are values-only YAML files (one per device, the sources of their figures cited in
comments), read into the frozen `DeviceProfile` with every field required: a profile missing a
field is an error naming the file and the field. racmkd's own live in the package,
racmkd/resources/device_profiles/ (configs/devices/ in a checkout links there), so that an
installed racmkd, an edge device's, finds them by name as a checkout does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from racmkd.config import ConfigError, EnergyModel, from_dict, read_yaml_mapping

ENERGY_FIGURES = ("joules_per_flop", "joules_per_byte", "static_watts")  # each profile states its own

KINDS = ("mcu", "sbc", "gpu-board", "server", "gpu-node")
SMALLEST = 1e-6  # of a clock (MHz), a byte count, a peak rate (G/s): below it no device exists, and divisions overflow


@dataclass(frozen=True)
class DeviceProfile:
    """One deployment target. Arithmetic and bandwidth are what one inference thread can use."""

    name: str
    description: str
    kind: str  # mcu | sbc | gpu-board | server | gpu-node
    clock_mhz: float
    ram_bytes: int  # memory available to the model: activations, runtime, and weights when weights_in is "ram"
    rom_bytes: int  # storage for the model file (flash on an MCU)
    weights_in: str  # "rom": executed in place from flash (MCU); "ram": loaded into memory
    peak_gflops_fp32: float  # one thread's peak fp32 arithmetic, FLOP/s / 1e9
    peak_gops_int8: float  # one thread's peak int8 arithmetic, op/s / 1e9
    memory_gbps: float  # sustained memory bandwidth one thread sees, bytes/s / 1e9
    runtime_overhead_bytes: int  # RAM the inference runtime itself takes (interpreter, arena bookkeeping)
    energy: EnergyModel  # E = a * FLOPs + b * bytes moved + c * time, for this device
    op_overhead_us: float = 0.0  # fixed cost per operator (a GPU's kernel launch); 0 = the host's measured dispatch cost, scaled by clock
    latency_target_ms: float = 0.0  # a default latency target for verdicts; 0 = none

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"device {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.weights_in not in ("rom", "ram"):
            raise ConfigError(f"device {self.name}: weights_in must be rom or ram, got {self.weights_in!r}")
        for name in ("clock_mhz", "ram_bytes", "rom_bytes", "peak_gflops_fp32", "peak_gops_int8", "memory_gbps"):
            if not SMALLEST <= getattr(self, name) < math.inf:  # (a denormal clock made every estimate infinite, and --json print Infinity)
                raise ConfigError(f"device {self.name}: {name} must be a positive finite number (at least {SMALLEST:g}), got {getattr(self, name)}")
        for name in ("runtime_overhead_bytes", "op_overhead_us", "latency_target_ms"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"device {self.name}: {name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ENERGY_FIGURES:
            if not 0 <= getattr(self.energy, name) < math.inf:
                raise ConfigError(f"device {self.name}: energy.{name} must be a finite number >= 0, got {getattr(self.energy, name)}")


# racmkd's device profiles, package data (pyproject.toml), found installed and in a checkout alike.
SHIPPED_DEVICES = Path(__file__).resolve().parent / "device_profiles"


def load_device(name_or_path: str | Path, devices_dir: Path | None = None) -> DeviceProfile:
    """A profile by name (<name>.yaml of racmkd's device profiles, or of `devices_dir`) or by path."""
    if not str(name_or_path).strip():  # (read as the folder ".": "device : a folder")
        raise ConfigError(f"device {name_or_path!r}: empty; name a known device ({', '.join(device_names(devices_dir)) or 'none'}) or a profile's YAML file")
    path = Path(name_or_path)
    if not path.suffix:
        path = (devices_dir or SHIPPED_DEVICES) / f"{name_or_path}.yaml"
        if not path.is_file() and Path(name_or_path).is_dir():  # `--device /tmp` read as the name of /tmp.yaml
            raise ConfigError(
                f"device {name_or_path}: a folder; name a device profile's YAML file, or a known device: {', '.join(device_names(devices_dir)) or 'none'}"
            )
    data = read_yaml_mapping(path, f"Name a device profile; known devices: {', '.join(device_names(devices_dir)) or 'none'}.")
    energy = data.get("energy")
    missing = [name for name in ("device", *ENERGY_FIGURES) if isinstance(energy, dict) and name not in energy]
    if missing:  # the energy model's defaults describe a server core (and say so in `device`), not this device
        raise ConfigError(f"{path}: energy is missing {', '.join(missing)}; a device profile states every figure (cite its source)")
    return from_dict(DeviceProfile, data, source=str(path))


def device_names(devices_dir: Path | None = None) -> list[str]:
    """The names of racmkd's device profiles (or of those in `devices_dir`)."""
    return sorted(p.stem for p in (devices_dir or SHIPPED_DEVICES).glob("*.yaml"))
