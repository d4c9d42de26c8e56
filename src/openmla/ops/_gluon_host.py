"""Host side of the Gluon (Hopper) kernels: TMA descriptors and their shared-memory layouts."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def nvmma_layout(block: tuple[int, ...], gdt):
    """The swizzled shared layout of a TMA block of Gluon dtype ``gdt`` (built once per shape
    and dtype: a few microseconds of host time per descriptor otherwise)."""
    from triton.experimental.gluon import language as gl

    return gl.NVMMASharedLayout.get_default_for(list(block), gdt)


def tma_descriptor(t, block, gdt):
    """A host TMA descriptor over all of ``t`` (its shape and strides) with ``block`` tiles."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    return TensorDescriptor(t, list(t.shape), list(t.stride()), list(block),
                            nvmma_layout(tuple(block), gdt))
