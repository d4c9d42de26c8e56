"""Host cost of one Triton launch on this machine: the JIT path (`kernel[grid](...)`: binding,
specialisation, cache lookup) against calling the compiled kernel's launcher directly, for the
combine kernel (20 arguments) on tiny tensors, plus the Python of the public decode call without
its kernels. Microseconds per call, queued without synchronisation.

    PYTHONPATH=src python benchmarks/launch_overhead.py
"""
import os
import sys

import torch
import triton
from triton import knobs
from triton.runtime import driver

from openmla.ops.combine.kernel import _decode_combine_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host_overhead import host_time_us  # noqa: E402


def main():
    b, s_q, h_q, d_v, parts = 4, 1, 16, 512, 4
    o_acc = torch.zeros(b + parts, s_q, h_q, d_v, device="cuda")
    lse_acc = torch.zeros(b + parts, s_q, h_q, device="cuda")
    splits = torch.arange(b + 1, dtype=torch.int32, device="cuda")
    out = torch.empty(b, s_q, h_q, d_v, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(b, h_q, s_q, device="cuda")
    args = (o_acc, lse_acc, splits, lse_acc, out, lse, s_q, h_q,
            o_acc.stride(0), o_acc.stride(1), o_acc.stride(2),
            lse_acc.stride(0), lse_acc.stride(1),
            out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(2), lse.stride(1))
    kw = dict(D_V=d_v, BLOCK_H=8, HAS_SINK=False, ROUND_OUT=False, num_warps=4)
    grid = (b * s_q, triton.cdiv(h_q, 8))
    k = _decode_combine_kernel[grid](*args, **kw)
    full = list(args) + [d_v, 8, False, False]
    dev = driver.active.get_current_device()

    def jit():
        _decode_combine_kernel[grid](*args, **kw)

    def direct():
        stream = driver.active.get_current_stream(dev)
        k.run(grid[0], grid[1], 1, stream, k.function, k.packed_metadata, None,
              knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *full)

    def empty_only():
        torch.empty(b, s_q, h_q, d_v, dtype=torch.bfloat16, device="cuda")

    def noop_kernel_torch():
        out.zero_()

    fns = [("jit launch", jit), ("direct launcher", direct), ("torch.empty", empty_only),
           ("torch zero_ (1 kernel)", noop_kernel_torch)]
    rows = [(name, host_time_us(fn, reps=2000)) for name, fn in fns]
    for name, us in rows:
        print(f"{name:24} {us:8.2f} us")


if __name__ == "__main__":
    main()
