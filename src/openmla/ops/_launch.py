"""A cheaper host path for launching openmla's Triton and Gluon kernels.

``kernel[grid](*args, **kw)`` binds and specialises every argument on every call (about 25-30 µs
of Python a launch on the GPU machines, three launches a decode call). ``launch`` keeps, per
kernel, the compiled kernel of each *specialisation key* it has seen and calls that kernel's
launcher directly when the key comes again (about 8 µs).

The key is built to distinguish at least everything Triton specialises on, so a reused kernel is
always the one the JIT itself would pick: for a tensor its dtype and whether its address is
16-byte aligned; for an int whether it is 1, whether it is a multiple of 16 and whether it fits
in 32 bits; for a Gluon TMA descriptor its dtype, block shape, layout, padding, base alignment
and which of its strides and sizes are multiples of 16; every keyword argument (constexprs and
launch options) by value; the device. A first call with a new key goes through the JIT (which
compiles or finds the kernel) and records it. Off CUDA, under ``TRITON_INTERPRET=1`` and with
``OPENMLA_FAST_LAUNCH=0`` every call goes through the JIT.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from triton import knobs
from triton.runtime import driver

_CACHE: dict[int, dict[tuple, tuple[Any, tuple]]] = {}
_ENABLED: bool | None = None


def _enabled() -> bool:
    global _ENABLED
    if _ENABLED is None:
        from ..device import interpreting

        _ENABLED = (os.environ.get("OPENMLA_FAST_LAUNCH", "1") != "0" and not interpreting()
                    and torch.version.cuda is not None)
    return _ENABLED


def _arg_key(a):
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, bool):
        return ("b", a)
    if isinstance(a, int):
        return ("i", a == 1, a % 16 == 0, -2**31 <= a < 2**31)
    if isinstance(a, float):
        return "f"
    if a is None:
        return None
    base = getattr(a, "base", None)
    if isinstance(base, torch.Tensor) and hasattr(a, "block_shape"):  # a host TMA descriptor
        return ("d", base.dtype, base.data_ptr() % 16 == 0, tuple(a.block_shape), a.layout,
                getattr(a, "padding", None), tuple(s % 16 == 0 for s in a.strides),
                tuple(s % 16 == 0 for s in a.shape))
    raise TypeError  # anything else: not keyed here, the JIT handles the call


def _kw_key(v):
    return _arg_key(v) if isinstance(v, torch.Tensor) or hasattr(v, "block_shape") else v


def _idle(hook) -> bool:
    """No launch hook to call (Triton 3.6 keeps an empty chain of them by default); with one
    (a profiler), calls take the JIT path, which hands the hook its metadata."""
    return hook is None or (isinstance(getattr(hook, "calls", None), list) and not hook.calls)


def spec_key(device, args: tuple, kwargs: dict) -> tuple:
    """The specialisation key of a call (see the module docstring); TypeError for an argument
    this module cannot key."""
    return (device, tuple(map(_arg_key, args)),
            tuple((k, _kw_key(v)) for k, v in kwargs.items()))


MAX_KEYS = 64  # specialisations kept per kernel; beyond that calls take the JIT path


def launch(kernel, grid: tuple, args: tuple, kwargs: dict) -> None:
    """``kernel[grid](*args, **kwargs)``, through the kernel's own launcher when a call with the
    same specialisation key has already gone through the JIT. ``args`` are the kernel's leading
    parameters in order; the rest come as keywords (or their defaults)."""
    if (not _enabled() or not _idle(knobs.runtime.launch_enter_hook)
            or not _idle(knobs.runtime.launch_exit_hook)):
        kernel[grid](*args, **kwargs)
        return
    device = driver.active.get_current_device()
    try:
        key = spec_key(device, args, kwargs)
    except TypeError:
        kernel[grid](*args, **kwargs)
        return
    per_kernel = _CACHE.setdefault(id(kernel), {})
    hit = per_kernel.get(key)
    if hit is None:
        compiled = kernel[grid](*args, **kwargs)
        tail = []
        for p in kernel.params[len(args):]:
            if p.name in kwargs:
                tail.append((p.name, None))
            elif p.has_default:
                tail.append((None, p.default))
            else:  # a parameter this helper does not know how to pass: keep the JIT path
                return
        if (compiled is not None and not hasattr(compiled, "result")
                and len(per_kernel) < MAX_KEYS):
            per_kernel[key] = (compiled, tuple(tail))
        return
    compiled, tail = hit
    g0, g1, g2 = (tuple(grid) + (1, 1))[:3]
    compiled.run(g0, g1, g2, driver.active.get_current_stream(device), compiled.function,
                 compiled.packed_metadata, None, None, None, *args,
                 *[kwargs[n] if n is not None else d for n, d in tail])


def cached_kernels(kernel) -> int:
    """How many specialisations of ``kernel`` the fast path holds (tests)."""
    return len(_CACHE.get(id(kernel), {}))
