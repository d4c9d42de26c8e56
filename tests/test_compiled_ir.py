"""Compile the decode kernels (dense: pointer, descriptor and Gluon; sparse) for Hopper (sm_90, no
GPU needed) and check a property of the IR that the interpreter cannot show: every loop over a
part's requests carries ``line_pos``, the request's position on the schedule's line.

Triton 3.6 drops a for loop's carried value when it is used only as the bounds of an inner loop;
the Gluon kernel's loader partition lost ``line_pos`` that way (its block ranges froze at the part's
first request and launches hung). Under the interpreter the Python loop is right, so only the
compiled IR shows it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Compiled in a fresh interpreter without TRITON_INTERPRET (the test session may run Triton in
# its interpreter, where kernels cannot be compiled).
PROGRAM = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
COMMON_PTRS = {"block_table_ptr": "*i32", "seqlens_ptr": "*i32", "meta_ptr": "*i32",
               "num_splits_ptr": "*i32", "out_ptr": "*bf16", "lse_ptr": "*fp32",
               "o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32", "progress_ptr": "*i32"}


def signature(fn, types, constexprs):
    return {n: "constexpr" if n in constexprs else types.get(n, "fp32" if n == "scale_log2" else "i32")
            for n in fn.arg_names}


def request_loops(ttgir):
    return [line.strip() for line in ttgir.splitlines()
            if "scf.for %r = " in line or "scf.while (" in line]


which = sys.argv[1]
if which == "pointer":
    from openmla.ops.dense_decode.kernel import _dense_decode_kernel as fn
    types = dict(COMMON_PTRS, q_ptr="*bf16", k_ptr="*bf16")
    ce = dict(PAGE_SIZE=64, D_NOPE=512, D_ROPE=64, BLOCK_H=64, BLOCK_N=64, SCHED_N=64, OVERHEAD=5,
              META_COLS=8, CAUSAL=True, UPCAST_DOT=False, ROUND_OUT=False)
    src = ASTSource(fn=fn, signature=signature(fn, types, ce), constexprs=ce)
    options = {"num_warps": 8, "num_stages": 2}
elif which == "tma":
    from openmla.ops.dense_decode.kernel import _dense_decode_tma_kernel as fn
    types = dict(COMMON_PTRS, q_desc="tensordesc<bf16[64,256]>", qr_desc="tensordesc<bf16[64,64]>",
                 k_desc="tensordesc<bf16[1,64,256]>", kr_desc="tensordesc<bf16[1,64,64]>")
    ce = dict(PAGE_SIZE=64, D_HALF=256, D_ROPE=64, BLOCK_H=64, BLOCK_N=64, SCHED_N=64,
              OVERHEAD=5, META_COLS=8, CAUSAL=True, UPCAST_DOT=False, ROUND_OUT=False,
              NUM_STAGES=2)
    src = ASTSource(fn=fn, signature=signature(fn, types, ce), constexprs=ce)
    options = {"num_warps": 8, "num_stages": 2}
elif which == "sparse":
    from openmla.ops.sparse_decode.kernel import _sparse_decode_kernel as fn
    types = {"q_ptr": "*bf16", "k_ptr": "*u8", "idx_ptr": "*i32", "topk_len_ptr": "*i32",
             "ek_ptr": "*u8", "eidx_ptr": "*i32", "etopk_len_ptr": "*i32", "sink_ptr": "*fp32",
             "meta_ptr": "*i32", "num_splits_ptr": "*i32", "out_ptr": "*bf16",
             "lse_ptr": "*fp32", "o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32"}
    ce = dict(PAGE_SIZE=64, EXTRA_PAGE_SIZE=64, MODEL1=True, HAS_TOPK_LEN=True, HAS_EXTRA=True,
              HAS_EXTRA_TOPK_LEN=True, HAS_SINK=True, BLOCK_H=64, BLOCK_N=64, SCHED_N=64,
              OVERHEAD=5, META_COLS=8, UPCAST_DOT=False, ROUND_OUT=False)
    src = ASTSource(fn=fn, signature=signature(fn, types, ce), constexprs=ce)
    options = {"num_warps": 8, "num_stages": 1}
else:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource
    from openmla.ops.dense_decode.gluon_kernel import _dense_decode_gluon_kernel as fn

    def desc(shape):
        layout = gl.NVMMASharedLayout.get_default_for(shape, gl.bfloat16)
        return f"tensordesc<bf16[{','.join(map(str, shape))}],{layout!r}>"

    types = dict(COMMON_PTRS, q_desc=desc([64, 256]), qr_desc=desc([64, 64]),
                 k_desc=desc([64, 256]), kr_desc=desc([64, 64]))
    ce = dict(PAGE_SIZE=64, D_HALF=256, D_ROPE=64, BLOCK_H=64, BLOCK_N=64, SCHED_N=64,
              OVERHEAD=5, META_COLS=8, CAUSAL=True, STAGES=2, PV_REGS=208, LOAD_REGS=24,
              TRACE=False, LOAD_WARPS=1, SWAP=False)
    src = GluonASTSource(fn=fn, signature=signature(fn, types, ce), constexprs=ce)
    options = {"num_warps": 4}
k = triton.compile(src, target=TARGET, options=options)
for line in request_loops(k.asm["ttgir"]):
    print(line)
"""


@pytest.mark.parametrize("kernel,loops", [("pointer", 1), ("tma", 1), ("sparse", 1), ("gluon", 3)])
def test_request_loops_carry_line_pos(kernel, loops):
    pytest.importorskip("triton")
    from openmla.device import GLUON_TRITON, gluon_available

    if kernel == "gluon" and not gluon_available():
        pytest.skip(f"the Gluon kernel is written for Triton {GLUON_TRITON[0]}.{GLUON_TRITON[1]}")
    env = dict(os.environ, PYTHONPATH=SRC)
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-c", PROGRAM, kernel], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    headers = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(headers) == loops, headers  # gluon: softmax, PV and loader partitions
    for line in headers:
        assert "line_pos" in line, f"request loop without line_pos among its carried values: {line}"
