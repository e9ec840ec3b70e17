"""Which devices a span uses: explicit ids, UUIDs, kinds or CUDA indices, else what the
process runs on.

Default for a span that names none (DESIGN.md, "Attribution"): the GPUs on which its process
has a running compute context per NVML; else the GPUs its ``CUDA_VISIBLE_DEVICES`` names;
else every GPU; plus the CPU package(s) and DRAM.
"""

from __future__ import annotations

from collections.abc import Iterable

from wattspan.collectors.base import DeviceInfo


def _visible(cuda_visible_devices: str | None) -> list[str]:
    if not cuda_visible_devices:
        return []
    return [v.strip() for v in cuda_visible_devices.split(",") if v.strip()]


def gpus_named_by(token: str, devices: Iterable[DeviceInfo]) -> list[DeviceInfo]:
    """GPUs a ``CUDA_VISIBLE_DEVICES`` entry names: a UUID (or prefix) or an NVML index.

    CUDA orders devices fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; with indices,
    the NVML (PCI bus) order is assumed, which is what that setting gives.
    """
    if token.startswith(("GPU-", "MIG-")):
        return [d for d in devices
                if d.kind == "gpu" and d.details.get("uuid", "").startswith(token)]
    return [d for d in devices if d.kind == "gpu" and str(d.details.get("nvml_index")) == token]


def select(devices: Iterable[DeviceInfo], wanted, cuda_visible_devices: str | None
           ) -> list[DeviceInfo]:
    """Resolve an explicit device list; raises ValueError naming what exists when an item
    matches nothing."""
    devices = list(devices)
    visible = _visible(cuda_visible_devices)
    chosen: list[DeviceInfo] = []
    for item in wanted if isinstance(wanted, (list, tuple, set)) else [wanted]:
        if isinstance(item, int) and not isinstance(item, bool):
            if visible:
                if item >= len(visible):
                    raise ValueError(f"CUDA device {item} is not in CUDA_VISIBLE_DEVICES={visible}")
                match = gpus_named_by(visible[item], devices)
            else:
                match = gpus_named_by(str(item), devices)
        else:
            item = str(item)
            match = [d for d in devices if item in (d.device_id, d.kind, d.details.get("uuid"))
                     or d.device_id.startswith(f"{item}:")]
        if not match:
            known = ", ".join(d.device_id for d in devices) or "none"
            raise ValueError(f"no device matches {item!r}; found: {known}")
        chosen.extend(d for d in match if d not in chosen)
    return chosen


def host_devices(devices: Iterable[DeviceInfo]) -> list[DeviceInfo]:
    """The CPU package(s) and DRAM: every process uses them."""
    return [d for d in devices if d.kind in ("cpu", "dram") and not d.part_of]


def default_for(devices: Iterable[DeviceInfo], pid: int, gpus_of_pid: dict[int, set[str]],
                cuda_visible_devices: str | None) -> list[DeviceInfo]:
    devices = list(devices)
    gpus = [d for d in devices if d.kind == "gpu"]
    running = gpus_of_pid.get(pid)
    if running:
        chosen = [d for d in gpus if d.device_id in running]
    elif _visible(cuda_visible_devices):
        chosen = []
        for token in _visible(cuda_visible_devices):
            chosen.extend(d for d in gpus_named_by(token, gpus) if d not in chosen)
    else:
        chosen = gpus
    return chosen + host_devices(devices)
