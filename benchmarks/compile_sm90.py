"""Compile openmla's Triton kernels for Hopper (sm_90) on any machine, no GPU needed, and report
registers, spills, shared memory and whether the matrix instructions are wgmma.

    PYTHONPATH=src python benchmarks/compile_sm90.py
"""
import re
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from openmla.ops.combine.kernel import _decode_combine_kernel
from openmla.ops.dense_decode.kernel import _dense_decode_kernel, _dense_decode_tma_kernel
from openmla.ops.schedule.kernel import _decode_schedule_kernel
from openmla.testing.sm90 import ptxas_report

TARGET = GPUTarget("cuda", 90, 32)


DIVISIBLE = [["tt.divisibility", 16]]  # what a launch with 16-aligned pointers / strides gets


def _signature(fn, pointers, floats=(), constexprs=None):
    """Signature and specialisation attributes: pointers and ``stride_*`` arguments are marked
    16-divisible, as the JIT marks them for aligned tensors at production shapes."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if constexprs and name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
            if pointers[name].startswith("*"):
                attrs[(i,)] = DIVISIBLE
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name.startswith("stride_"):
                attrs[(i,)] = DIVISIBLE
    return sig, attrs


def build(fn, pointers, constexprs, floats=(), **options):
    sig, attrs = _signature(fn, pointers, floats, constexprs)
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=TARGET, options=options)


def _ptxas_usage(ptx: str) -> tuple[str, str]:
    """Registers and spill bytes as ptxas reports them for the PTX Triton generated."""
    rep = ptxas_report(ptx)
    return (str(rep.registers) if rep.registers >= 0 else "?",
            str(rep.spill_stores) if rep.spill_stores >= 0 else "?")


def report(label, k):
    ptx = k.asm["ptx"]
    wgmma = len(re.findall(r"wgmma\.mma_async", ptx))
    mma = len(re.findall(r"\bmma\.sync", ptx))
    regs, spills = _ptxas_usage(ptx)
    print(f"{label:48} regs {regs:>3}  spill-bytes {spills:>5}  smem {k.metadata.shared:6}  "
          f"wgmma {wgmma:3}  mma.sync {mma:3}", flush=True)


def main():
    dense_ptrs = {"q_ptr": "*bf16", "k_ptr": "*bf16", "block_table_ptr": "*i32",
                  "seqlens_ptr": "*i32", "meta_ptr": "*i32", "num_splits_ptr": "*i32",
                  "out_ptr": "*bf16", "lse_ptr": "*fp32", "o_acc_ptr": "*fp32",
                  "lse_acc_ptr": "*fp32"}
    for bh, nw, ns, causal in [(16, 4, 2, False), (16, 8, 2, False), (64, 8, 2, True),
                               (64, 8, 1, True), (32, 4, 2, False)]:
        ce = dict(PAGE_SIZE=64, D_NOPE=512, D_ROPE=64, BLOCK_H=bh, BLOCK_N=64, SCHED_N=64, OVERHEAD=5,
                  META_COLS=8, CAUSAL=causal, UPCAST_DOT=False, ROUND_OUT=False)
        k = build(_dense_decode_kernel, dense_ptrs, ce, floats=("scale_log2",), num_warps=nw,
                  num_stages=ns)
        report(f"dense_decode bh={bh} w={nw} st={ns} causal={causal}", k)
    tma_ptrs = {k: v for k, v in dense_ptrs.items() if k not in ("q_ptr", "k_ptr")}
    for bh, nw, ns, causal in [(16, 4, 2, False), (64, 8, 2, True), (64, 8, 1, True)]:
        ptrs = dict(tma_ptrs, q_desc=f"tensordesc<bf16[{bh},256]>",
                    qr_desc=f"tensordesc<bf16[{bh},64]>", k_desc="tensordesc<bf16[1,64,256]>",
                    kr_desc="tensordesc<bf16[1,64,64]>")
        ce = dict(PAGE_SIZE=64, D_HALF=256, D_ROPE=64, BLOCK_H=bh, BLOCK_N=64, SCHED_N=64,
                  OVERHEAD=5, META_COLS=8, CAUSAL=causal, UPCAST_DOT=False, ROUND_OUT=False,
                  NUM_STAGES=ns)
        k = build(_dense_decode_tma_kernel, ptrs, ce, floats=("scale_log2",), num_warps=nw,
                  num_stages=ns)
        report(f"dense_decode_tma bh={bh} w={nw} st={ns} causal={causal}", k)
    k = build(_decode_combine_kernel,
              {"o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32", "num_splits_ptr": "*i32",
               "sink_ptr": "*fp32", "out_ptr": "*bf16", "lse_ptr": "*fp32"},
              dict(D_V=512, BLOCK_H=8, HAS_SINK=True, ROUND_OUT=False), num_warps=4)
    report("combine", k)
    k = build(_decode_schedule_kernel,
              {"lengths_ptr": "*i32", "meta_ptr": "*i32", "num_splits_ptr": "*i32"},
              dict(BLOCK_N=64, OVERHEAD=5, META_COLS=8, CHUNK=32, PARTS=256), num_warps=4)
    report("schedule", k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
