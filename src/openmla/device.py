"""Facts about the device an op runs on, looked up lazily and cached (never at import time).

``DeviceInfo`` is a plain value so that configuration heuristics can be pure functions of
(shape, DeviceInfo) and be tested on a CPU with made-up devices.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceInfo:
    """What kernel selection needs to know about a device."""

    kind: str  # "cuda", "cpu", ... (torch.device.type)
    arch: int  # compute capability as major * 10 + minor (90 = Hopper); 0 off CUDA
    num_sms: int  # streaming multiprocessors; 0 off CUDA
    name: str = ""
    is_hip: bool = False

    @property
    def is_hopper(self) -> bool:
        return self.kind == "cuda" and not self.is_hip and self.arch == 90


def interpreting() -> bool:
    """True when Triton kernels run in the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _cuda_info(index: int) -> DeviceInfo:
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(
        kind="cuda",
        arch=props.major * 10 + props.minor,
        num_sms=props.multi_processor_count,
        name=props.name,
        is_hip=torch.version.hip is not None,
    )


def device_info(device: torch.device | str | None = None) -> DeviceInfo:
    """DeviceInfo for ``device`` (default: the current CUDA device if any, else the CPU)."""
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _cuda_info(index)
    return DeviceInfo(kind=device.type, arch=0, num_sms=0, name=device.type)


def triton_available() -> bool:
    """True when ``import triton`` works here (it is an optional runtime on non-Linux hosts)."""
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the host
        return False
    return True


GLUON_TRITON = (3, 6)  # the Triton release whose Gluon API the Hopper kernels are written for


@functools.lru_cache(maxsize=None)
def gluon_available() -> bool:
    """True when ``triton.experimental.gluon`` of the Triton release the Gluon kernels target is
    importable (Gluon's API still changes between releases)."""
    try:
        import triton
        from triton.experimental import gluon  # noqa: F401
    except Exception:  # pragma: no cover - depends on the host
        return False
    try:
        major, minor = (int(x) for x in triton.__version__.split(".")[:2])
    except ValueError:  # pragma: no cover - unusual version strings
        return False
    return (major, minor) == GLUON_TRITON
