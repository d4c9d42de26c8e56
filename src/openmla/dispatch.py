"""Choose, per op and call, between the float32 reference, the portable Triton kernel and the
Hopper fast path.

Each op registers its backends in order of preference with a pure ``supports(info, problem)``
predicate. ``select`` returns the first backend that supports the call. An environment variable
forces a backend, for tests and comparisons:

* ``OPENMLA_BACKEND_<OP>`` (e.g. ``OPENMLA_BACKEND_DENSE_DECODE=reference``) for one op,
* ``OPENMLA_BACKEND`` for every op.

A forced backend that cannot run the call is an error, never a silent fallback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .device import DeviceInfo
from .errors import UnsupportedError

OPS = ("dense_decode", "sparse_decode", "sparse_prefill", "mha_prefill")
BACKENDS = ("gluon", "triton", "reference")


@dataclass(frozen=True)
class Backend:
    name: str  # one of BACKENDS
    run: Callable[..., Any]
    # (device info, problem description) -> whether this backend can run the call
    supports: Callable[[DeviceInfo, Mapping[str, Any]], bool]
    # ops with autograd (mha_prefill): the gradient function that pairs with ``run``
    backward: Callable[..., Any] | None = None


_REGISTRY: dict[str, list[Backend]] = {op: [] for op in OPS}


def register(op: str, name: str, run: Callable[..., Any],
             supports: Callable[[DeviceInfo, Mapping[str, Any]], bool],
             backward: Callable[..., Any] | None = None) -> None:
    """Register ``run`` as backend ``name`` of ``op``; backends are tried in BACKENDS order."""
    if op not in _REGISTRY:
        raise KeyError(f"unknown op {op!r}; known: {OPS}")
    if name not in BACKENDS:
        raise KeyError(f"unknown backend {name!r}; known: {BACKENDS}")
    entries = [b for b in _REGISTRY[op] if b.name != name]
    entries.append(Backend(name, run, supports, backward))
    entries.sort(key=lambda b: BACKENDS.index(b.name))
    _REGISTRY[op] = entries


def forced_backend(op: str) -> str | None:
    """The backend an environment variable forces for ``op``, if any."""
    value = os.environ.get(f"OPENMLA_BACKEND_{op.upper()}") or os.environ.get("OPENMLA_BACKEND")
    if not value:
        return None
    value = value.strip().lower()
    if value not in BACKENDS:
        raise UnsupportedError(
            f"OPENMLA_BACKEND: expected one of {BACKENDS}, got {value!r}")
    return value


def select(op: str, info: DeviceInfo, problem: Mapping[str, Any]) -> Backend:
    """The backend that runs this call of ``op``."""
    forced = forced_backend(op)
    for backend in _REGISTRY[op]:
        if forced is not None and backend.name != forced:
            continue
        if backend.supports(info, problem):
            return backend
    if forced is not None:
        raise UnsupportedError(
            f"{op}: backend {forced!r} was forced by the environment but cannot run this call "
            f"on {info.kind} (arch {info.arch}) with {dict(problem)}")
    raise UnsupportedError(f"{op}: no backend can run this call on {info.kind}")


def backend_named(op: str, name: str) -> Backend:
    """The registered backend ``name`` of ``op`` (the ops that carry a backend's name, such as
    ``openmla::flash_attn_varlen``, look it up here)."""
    for backend in _REGISTRY[op]:
        if backend.name == name:
            return backend
    raise UnsupportedError(f"{op}: no backend named {name!r}; registered: "
                           f"{[b.name for b in _REGISTRY[op]]}")


def available(op: str, info: DeviceInfo) -> list[str]:
    """Names of the backends registered for ``op`` whose device conditions ``info`` meets
    (for ``openmla info``), most preferred first."""
    return [b.name for b in _REGISTRY[op] if b.supports(info, {})]
