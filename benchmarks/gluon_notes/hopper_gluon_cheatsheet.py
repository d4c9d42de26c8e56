"""Gluon (triton.experimental.gluon) on Hopper sm_90a with Triton 3.6.0 -- cheat sheet for a
warp-specialized attention-decode kernel. Every example below compiles for GPUTarget("cuda", 90, 32)
without a GPU; run:  /work/venv/bin/python benchmarks/gluon_notes/hopper_gluon_cheatsheet.py

IMPORTS (3.6)
  from triton.experimental import gluon                      # gluon.jit, gluon.constexpr_function
  from triton.experimental.gluon import language as gl       # NO gl.constexpr_function in 3.6
  from triton.experimental.gluon.nvidia.hopper import TensorDescriptor            # host side
  from triton.experimental.gluon.language.nvidia.hopper import (tma, mbarrier, fence_async_shared,
                                                                warpgroup_mma, warpgroup_mma_wait)
  tma: async_copy_global_to_shared(desc, coord, bar, smem, pred=True), async_copy_shared_to_global(
       desc, coord, smem), store_wait(pendings), make_tensor_descriptor(...) (device-side). No async_load.
  mbarrier: MBarrierLayout(), init(bar, count), expect(bar, nbytes, pred=True),
       arrive(bar, *, count=1, pred=True), wait(bar, phase, pred=True, deps=()), invalidate(bar)

1. HOST DESCRIPTOR / TMA
  desc = TensorDescriptor.from_tensor(t, block_shape, layout)  == TensorDescriptor(t, shape, strides,
         block_shape, layout, padding="zero"|"nan"); layout MUST be gl.NVMMASharedLayout with rank ==
         len(block_shape): gl.NVMMASharedLayout.get_default_for([1, 64, 256], gl.bfloat16) -> swizzle 128B, rank 3.
  Checks: base 16B aligned, all strides but last 16B aligned, last stride 1, rank <= 5, block rank == tensor rank
         (no 2-D block on a 3-D tensor: use block [1, PAGE, D], or a 2-D view of the storage).
  Padded page stride: storage = empty(pages, PAGE+pad, D); kv = storage[:, :PAGE]  (strides kept) ->
         from_tensor(kv, [1, PAGE, D], layout).  Coordinate = [page, 0, 0]. (2-D alternative: view storage as
         [pages*(PAGE+pad), D], block [PAGE, D], coordinate [page*(PAGE+pad), 0].)
  GluonASTSource signature of a descriptor arg: triton.runtime.jit.mangle_type(desc), e.g.
         "tensordesc<bf16[1, 64, 256],NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=3,
          transposed=False, fp4_padded=False, cga_layout=[])>".  Scalars "i32"/"fp32", pointers "*bf16", "*i32".
  In-kernel: desc.dtype, desc.layout, desc.block_type.shape, desc.block_type.nbytes (bytes for expect).
  Ring: ring = gl.allocate_shared_memory(dtype, [STAGES] + block_shape, desc.layout)  (leading dim is the
         buffer index; layout keeps the block's rank); bars = allocate_shared_memory(gl.int64, [STAGES, 1],
         mbarrier.MBarrierLayout()); ring.index(i) / bars.index(i) accept run-time i32.
  3-D tile -> 2-D: ring.index(s).reshape([PAGE, D]) (layout inferred = 2-D NVMMA 128B), or
         ._reinterpret(dtype, [PAGE, D], gl.NVMMASharedLayout.get_default_for([PAGE, D], dtype)). Passing the
         3-D view to wgmma fails: "'ttng.warp_group_dot' op expected all operands to have the same rank".
  Block [1, 64, 256] bf16 (512B inner) with 128B swizzle: the compiler splits it into 64-column TMA boxes
         itself; expect() still takes the whole block's nbytes (32768).
  Page index: page = gl.load(block_table_ptr + i) (scalar i32) is a valid TMA coordinate; trip count
         `for i in range(n)` with n an i32 kernel arg; phase of stage s = (i // STAGES) & 1.
  Producer waiting for a free slot on a fresh "empty" barrier: wait(empty.index(s), ((i//STAGES)&1) ^ 1).
  fence_async_shared() after mbarrier.init and before TMA use of the barriers (cheap; tutorials do it).

2. WGMMA (4 warps = 1 warpgroup, M = 64)
  acc layout: gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, N, 16])
         (bf16: k = 256 // 16 = 16; N = 64 for scores, N = 256 for a 256-wide output half; N <= 256 --
         instr_shape N=512 dies in ConvertNVGPUToLLVM "WGMMA type or shape is not supported").
  S = Q K^T : warpgroup_mma(q_smem[64,256], k_smem[64,256].permute([1, 0]), acc, use_acc=False, is_async=True)
  O += P V  : warpgroup_mma(p_regs, v_smem[64 keys, 256], o_acc, is_async=True); p_regs in
         gl.DotOperandLayout(operand_index=0, parent=<o acc layout>, k_width=2)  (k_width = 32 // bitwidth);
         gl.convert_layout(p.to(gl.bfloat16), that_layout) from the [16,64,16] S layout is register-only.
  B must be shared memory with an NVMMASharedLayout (SwizzledSharedLayout -> LLVM ERROR "unexpected operand
         layout for NvidiaMmaEncodingAttr v3", which ABORTS the python process). A in registers with the
         accumulator layout instead of DotOperandLayout -> same abort.
  is_async=True returns a warpgroup_mma_accumulator token: x = warpgroup_mma_wait(num_outstanding, deps=[tok,
         ...]) -> tensor (tuple if len(deps) > 1). deps is REQUIRED ("warpgroup_mma_wait deps must be given");
         using the token as a tensor -> "'warpgroup_mma_accumulator' object has no attribute 'dtype'".
  Row ops on the acc layout work directly: m = gl.max(s, axis=1) -> SliceLayout(1, acc_layout);
         s - m[:, None] (or gl.expand_dims(m, 1)); gl.exp2, gl.where(mask2d, s, float("-inf")), gl.maximum,
         x.to(gl.bfloat16). A row vector of the S layout must be gl.convert_layout-ed to
         SliceLayout(1, o_layout) before broadcasting against O. gl.store straight from the MMA layout is fine.

3. WARP SPECIALIZATION
  res = gl.warp_specialize([(default_fn, default_args), (worker0_fn, args0), (worker1_fn, args1)],
                           worker_num_warps=[4, 1], worker_num_regs=[232, 40])   # positional; regs REQUIRED in 3.6
  (newer Triton lets regs be omitted; older used warp_specialize(default_args, default_fn, worker_args, ...)).
  - default partition runs on the launch num_warps (4) warps; may take distributed tensors and return values;
    its return MUST be a tuple: `return (l_i,)` and `l_i, = gl.warp_specialize(...)`. `return l_i` fails with
    "Did you forget to add @triton.jit ? (`_semantic` argument must be provided outside of JIT functions.)"
  - workers: args are tuples of scalars, pointers, smem descriptors, mbarriers, tensor descriptors, constexprs.
    A distributed tensor arg fails: "Layout has 4 warps per CTA, but the context requires 1 warps per CTA".
    gl.num_warps() inside a worker = its own warp count; each worker warp count must be a power of 2.
  - launch with num_warps=4 (default partition); compiled metadata.num_warps = 12 here (4 + 4 + 1, padded
    to whole warpgroups); ptx .reqntid 384, .maxnreg 168. Observed setmaxnreg: MMA worker 232, loader
    warpgroup 40, default partition 232 (remainder chosen by the compiler). ptxas: 0 spills.
  - smem / mbarriers allocated in the parent and passed in; init barriers in the parent before the fork.
  - mbarrier.arrive(bar, count=1) in a multi-warp partition lowers to a partition-local `bar.sync id, 128`
    then ONE thread's mbarrier.arrive -> init(bar, count=1) per producing partition (not per thread/warp).
  - generic-proxy writes (smem.store) read by wgmma/TMA (async proxy): writer does smem.store(...);
    fence_async_shared(); mbarrier.arrive(...). Reader: mbarrier.wait(bar, phase) then wgmma.
  - smem written by wgmma-owning partition with plain stores (S fp32 [64,64], SwizzledSharedLayout) and read by
    .load(layout) in another partition needs only the mbarrier hand-off.

4. PITFALLS HIT
  - `for s in gl.static_range(..)` then `for i in range(n): s = ...` -> "Loop carried variable s changed type,
    was tensor but is now constexpr": use distinct names for static-loop and scf-loop variables.
  - @gluon.jit functions must live in a .py file ("@jit functions should be defined in a Python file").
  - Nested errors inside partitions surface only as the warp_specialize line; print e.__cause__ chain.
  - C++ asserts (bad MMA operand layouts) abort the interpreter: probe risky variants in a subprocess.
  - ampere mbarrier.arrive has no count kwarg; the hopper one (used here) does.
"""
import sys
import traceback

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import mangle_type
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.experimental.gluon.language.nvidia.hopper import (
    tma, mbarrier, fence_async_shared, warpgroup_mma, warpgroup_mma_wait)

TARGET = GPUTarget("cuda", 90, 32)
BF16 = gl.bfloat16


# ----------------------------------------------------------------------------------------------
# 1. TMA: paged K/V ring, block-table page index as TMA coordinate, run-time trip count
# ----------------------------------------------------------------------------------------------
@gluon.jit
def tma_paged_ring_kernel(kv_desc, block_table_ptr, n_pages, out_ptr, STAGES: gl.constexpr):
    # kv_desc: 3-D descriptor over [pages, PAGE, D], block [1, PAGE, D], rank-3 NVMMASharedLayout
    PAGE: gl.constexpr = kv_desc.block_type.shape[1]
    D: gl.constexpr = kv_desc.block_type.shape[2]
    ring = gl.allocate_shared_memory(kv_desc.dtype, [STAGES, 1, PAGE, D], kv_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for j in gl.static_range(STAGES):
        mbarrier.init(bars.index(j), count=1)
    # 2-D view layout of the same bytes (same swizzle, rank 2) for wgmma / loads
    l2d: gl.constexpr = gl.NVMMASharedLayout.get_default_for([PAGE, D], kv_desc.dtype)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [gl.num_warps(), 1], [1, 0])
    acc = gl.zeros([PAGE, D], gl.float32, blk)
    # prologue: fill up to STAGES pages
    # (pitfall: a name bound in a static_range loop must not be reused as a carried var of a scf loop)
    for j in gl.static_range(STAGES):
        ok = j < n_pages
        pg = gl.load(block_table_ptr + j, mask=ok, other=0)   # scalar i32 from global memory
        mbarrier.expect(bars.index(j), kv_desc.block_type.nbytes, pred=ok)
        tma.async_copy_global_to_shared(kv_desc, [pg, 0, 0], bars.index(j), ring.index(j), pred=ok)
    for i in range(n_pages):                       # run-time trip count
        s = i % STAGES
        phase = (i // STAGES) & 1
        mbarrier.wait(bars.index(s), phase)
        tile3 = ring.index(s)                      # [1, PAGE, D]
        tile2 = tile3.reshape([PAGE, D])           # view as 2-D (layout inferred)
        tile2b = tile3._reinterpret(kv_desc.dtype, [PAGE, D], l2d)   # alternative
        acc += tile2.load(blk).to(gl.float32) + tile2b.load(blk).to(gl.float32)
        gl.thread_barrier()                        # all warps done reading stage s before refill
        nxt = i + STAGES
        pred = nxt < n_pages
        page = gl.load(block_table_ptr + nxt, mask=pred, other=0)
        mbarrier.expect(bars.index(s), kv_desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(kv_desc, [page, 0, 0], bars.index(s), ring.index(s), pred=pred)
    for j in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(j))
    r = gl.arange(0, PAGE, layout=gl.SliceLayout(1, blk))
    c = gl.arange(0, D, layout=gl.SliceLayout(0, blk))
    gl.store(out_ptr + r[:, None] * D + c[None, :], acc)


# ----------------------------------------------------------------------------------------------
# 2. wgmma: S = Q @ K^T (A,B from smem, B transposed view), softmax on the accumulator layout,
#    O += P @ V (A = P from registers in DotOperandLayout, B = V tile from smem, not transposed)
# ----------------------------------------------------------------------------------------------
@gluon.jit
def wgmma_attn_tile_kernel(q_desc, kv_desc, o_ptr, m_ptr, qk_scale, num_warps: gl.constexpr):
    M: gl.constexpr = q_desc.block_type.shape[0]          # 64 query rows (heads*tokens padded)
    D: gl.constexpr = q_desc.block_type.shape[1]          # 256 dims
    NK: gl.constexpr = kv_desc.block_type.shape[0]        # 64 keys
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [M, D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(kv_desc.dtype, [NK, D], kv_desc.layout)
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    mbarrier.expect(bar, q_desc.block_type.nbytes + kv_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [0, 0], bar, q_smem)
    tma.async_copy_global_to_shared(kv_desc, [0, 0], bar, k_smem)
    mbarrier.wait(bar, 0)
    mbarrier.invalidate(bar)

    # accumulator layouts (4 warps = 1 warpgroup, warps_per_cta=[4,1]; instr_shape=[16, N, 16] for bf16)
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, NK, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)  # 32 // 16

    # S = Q @ K^T : K tile stored [NK keys, D] row-major -> permute view gives [D, NK]
    s_tok = warpgroup_mma(q_smem, k_smem.permute([1, 0]), gl.zeros([M, NK], gl.float32, s_layout),
                          use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=[s_tok, q_smem, k_smem])    # with >1 dep it returns a tuple
    s = s[0]

    # masked softmax on the accumulator layout; row vectors live in SliceLayout(1, s_layout)
    cols = gl.arange(0, NK, layout=gl.SliceLayout(0, s_layout))
    s = gl.where((cols < 50)[None, :], s * qk_scale, float("-inf"))
    m = gl.max(s, axis=1)                                   # [M], SliceLayout(1, s_layout)
    p = gl.exp2(s - gl.expand_dims(m, 1))                   # m[:, None] works too
    l = gl.sum(p, axis=1)
    p_bf16 = gl.convert_layout(p.to(gl.bfloat16), p_layout)

    # O = P @ V with V = the same [NK, D] tile (B operand = [K=NK, N=D], no permute)
    o_tok = warpgroup_mma(p_bf16, k_smem, gl.zeros([M, D], gl.float32, o_layout), is_async=True)
    o = warpgroup_mma_wait(num_outstanding=0, deps=[o_tok])
    l_o = gl.convert_layout(l, gl.SliceLayout(1, o_layout))   # s-row-slice -> o-row-slice
    o = o / l_o[:, None]

    rows = gl.arange(0, M, layout=gl.SliceLayout(1, o_layout))
    dcols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
    gl.store(o_ptr + rows[:, None] * D + dcols[None, :], o.to(gl.bfloat16))   # store directly from MMA layout
    gl.store(m_ptr + gl.arange(0, M, layout=gl.SliceLayout(1, s_layout)), m)


def build_wgmma_attn():
    q = torch.empty(64, 256, dtype=torch.bfloat16)
    k = torch.empty(64, 256, dtype=torch.bfloat16)
    lay = gl.NVMMASharedLayout.get_default_for([64, 256], BF16)
    qd = TensorDescriptor.from_tensor(q, [64, 256], lay)
    kd = TensorDescriptor.from_tensor(k, [64, 256], lay)
    sig = {"q_desc": mangle_type(qd), "kv_desc": mangle_type(kd), "o_ptr": "*bf16", "m_ptr": "*fp32",
           "qk_scale": "fp32", "num_warps": "constexpr"}
    return compile_gluon(wgmma_attn_tile_kernel, sig, {"num_warps": 4}, num_warps=4)


# ----------------------------------------------------------------------------------------------
# 3. warp_specialize: default = softmax (4 warps), worker0 = wgmma (4 warps), worker1 = TMA (1 warp)
# ----------------------------------------------------------------------------------------------
@gluon.constexpr_function   # NB: gl.constexpr_function does not exist in 3.6
def acc_layout(n, num_warps):
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, n, 16])


@gluon.jit
def _ws_softmax(s_smem, p_smem, m_smem, s_ready, p_ready, n_blocks, qk_scale):
    # default partition: runs on the kernel's num_warps (4) warps; may take/return tensors
    M: gl.constexpr = s_smem.shape[0]
    NK: gl.constexpr = s_smem.shape[1]
    blk: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [gl.num_warps(), 1], [1, 0])
    row: gl.constexpr = gl.SliceLayout(1, blk)
    m_i = gl.full([M], float("-inf"), gl.float32, row)
    l_i = gl.zeros([M], gl.float32, row)
    for i in range(n_blocks):
        mbarrier.wait(s_ready, i & 1)
        s = s_smem.load(blk) * qk_scale
        m_new = gl.maximum(m_i, gl.max(s, axis=1))
        p = gl.exp2(s - m_new[:, None])
        l_i = l_i * gl.exp2(m_i - m_new) + gl.sum(p, axis=1)
        m_smem.store(gl.exp2(m_i - m_new))      # [64] fp32 row vector (alpha) for the MMA partition
        p_smem.store(p.to(gl.bfloat16))          # [64, 64] bf16 tile, later read by wgmma (async proxy)
        m_i = m_new
        fence_async_shared()                     # generic-proxy smem writes -> visible to wgmma/TMA
        mbarrier.arrive(p_ready, count=1)        # p_ready was init'ed with count=1 (see notes)
    # results of the default partition = results of gl.warp_specialize. MUST be a tuple in 3.6:
    # `return l_i` fails with "Did you forget to add @triton.jit ? (`_semantic` argument must be provided...)"
    return (l_i,)


@gluon.jit
def _ws_mma(q_smem, kv_ring, kv_ready, kv_empty, s_smem, s_ready, p_smem, m_smem, p_ready,
            o_ptr, n_blocks, STAGES: gl.constexpr):
    M: gl.constexpr = q_smem.shape[0]
    D: gl.constexpr = q_smem.shape[1]
    NK: gl.constexpr = kv_ring.shape[2]
    s_l: gl.constexpr = acc_layout(NK, gl.num_warps())    # gl.num_warps() == 4 inside this worker
    o_l: gl.constexpr = acc_layout(D, gl.num_warps())
    o = gl.zeros([M, D], gl.float32, o_l)
    for i in range(n_blocks):
        st = i % STAGES
        mbarrier.wait(kv_ready.index(st), (i // STAGES) & 1)
        kt = kv_ring.index(st).reshape([NK, D])              # [1, NK, D] TMA tile -> 2-D view
        s = warpgroup_mma(q_smem, kt.permute([1, 0]), gl.zeros([M, NK], gl.float32, s_l),
                          use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=[s])
        s_smem.store(s)
        mbarrier.arrive(s_ready, count=1)
        mbarrier.wait(p_ready, i & 1)
        alpha = m_smem.load(gl.SliceLayout(1, o_l))
        o = o * alpha[:, None]
        o = warpgroup_mma(p_smem, kt, o, is_async=True)      # A and B both from smem
        o = warpgroup_mma_wait(0, deps=[o])
        mbarrier.arrive(kv_empty.index(st), count=1)         # release the ring slot to the loader
    rows = gl.arange(0, M, layout=gl.SliceLayout(1, o_l))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_l))
    gl.store(o_ptr + rows[:, None] * D + cols[None, :], o)


@gluon.jit
def _ws_load(kv_desc, block_table_ptr, kv_ring, kv_ready, kv_empty, n_blocks, STAGES: gl.constexpr):
    for i in range(n_blocks):
        st = i % STAGES
        # wait until the slot is free; parity ^1 makes the first pass over the ring not block
        mbarrier.wait(kv_empty.index(st), ((i // STAGES) & 1) ^ 1)
        page = gl.load(block_table_ptr + i)
        mbarrier.expect(kv_ready.index(st), kv_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(kv_desc, [page, 0, 0], kv_ready.index(st), kv_ring.index(st))


@gluon.jit
def ws_decode_kernel(q_desc, kv_desc, block_table_ptr, n_blocks, qk_scale, o_ptr, l_ptr,
                     STAGES: gl.constexpr):
    M: gl.constexpr = q_desc.block_type.shape[0]
    D: gl.constexpr = q_desc.block_type.shape[1]
    NK: gl.constexpr = kv_desc.block_type.shape[1]
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [M, D], q_desc.layout)
    kv_ring = gl.allocate_shared_memory(kv_desc.dtype, [STAGES] + kv_desc.block_type.shape, kv_desc.layout)
    s_smem = gl.allocate_shared_memory(gl.float32, [M, NK], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    p_smem = gl.allocate_shared_memory(gl.bfloat16, [M, NK], gl.NVMMASharedLayout.get_default_for([M, NK], gl.bfloat16))
    m_smem = gl.allocate_shared_memory(gl.float32, [M], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    kv_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    s_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    p_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for j in gl.static_range(STAGES):
        mbarrier.init(kv_ready.index(j), count=1)
        mbarrier.init(kv_empty.index(j), count=1)
    mbarrier.init(s_ready, count=1)
    mbarrier.init(p_ready, count=1)
    mbarrier.init(q_bar, count=1)
    fence_async_shared()          # make barrier inits visible to the async proxy (TMA) before use
    # the parent region runs on the default warps only: load Q here before forking
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [0, 0], q_bar, q_smem)
    mbarrier.wait(q_bar, 0)

    l_i, = gl.warp_specialize([
        (_ws_softmax, (s_smem, p_smem, m_smem, s_ready, p_ready, n_blocks, qk_scale)),
        (_ws_mma, (q_smem, kv_ring, kv_ready, kv_empty, s_smem, s_ready, p_smem, m_smem, p_ready,
                   o_ptr, n_blocks, STAGES)),
        (_ws_load, (kv_desc, block_table_ptr, kv_ring, kv_ready, kv_empty, n_blocks, STAGES)),
    ], [4, 1], [232, 40])         # worker_num_warps, worker_num_regs (one entry per worker)
    # back in the parent (default warps): use the default partition's return value
    gl.store(l_ptr + gl.arange(0, M, layout=l_i.type.layout), l_i)


def build_ws_decode():
    q = torch.empty(64, 256, dtype=torch.bfloat16)
    qd = TensorDescriptor.from_tensor(q, [64, 256], gl.NVMMASharedLayout.get_default_for([64, 256], BF16))
    kd = host_paged_descriptor()
    sig = {"q_desc": mangle_type(qd), "kv_desc": mangle_type(kd), "block_table_ptr": "*i32", "n_blocks": "i32",
           "qk_scale": "fp32", "o_ptr": "*fp32", "l_ptr": "*fp32", "STAGES": "constexpr"}
    return compile_gluon(ws_decode_kernel, sig, {"STAGES": 2}, num_warps=4)


def host_paged_descriptor(pages=16, page=64, d=256, pad_rows=8, dtype=torch.bfloat16):
    """3-D descriptor over a paged KV cache whose page stride is padded (page+pad_rows rows)."""
    storage = torch.empty(pages, page + pad_rows, d, dtype=dtype)   # use device='cuda' for real runs
    kv = storage[:, :page, :]                                        # view: strides (page+pad)*d, d, 1
    layout = gl.NVMMASharedLayout.get_default_for([1, page, d], BF16)   # rank=3, swizzle 128B
    desc = TensorDescriptor.from_tensor(kv, [1, page, d], layout)
    # equivalent explicit form:
    desc2 = TensorDescriptor(kv, list(kv.shape), list(kv.stride()), [1, page, d], layout)
    assert mangle_type(desc) == mangle_type(desc2)
    return desc


def compile_gluon(fn, signature, constexprs=None, num_warps=4):
    src = GluonASTSource(fn=fn, signature=signature, constexprs=constexprs or {})
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps})


def check(name, build, expect):
    try:
        k = build()
        ptx = k.asm["ptx"]
        found = {e: (e in ptx) for e in expect}
        ok = all(found.values())
        print(f"[{'OK ' if ok else 'MISSING'}] {name}: compiled OK; " + ", ".join(f"{e}={v}" for e, v in found.items()))
        return ok, k
    except Exception as e:
        print(f"[FAIL] {name}: {type(e).__name__}: {str(e)[:2000]}")
        traceback.print_exc()
        return False, None


def build_tma_ring():
    desc = host_paged_descriptor()
    sig = {"kv_desc": mangle_type(desc), "block_table_ptr": "*i32", "n_pages": "i32", "out_ptr": "*fp32",
           "STAGES": "constexpr"}
    return compile_gluon(tma_paged_ring_kernel, sig, {"STAGES": 2})


def main():
    print("signature string of a 3-D descriptor:", mangle_type(host_paged_descriptor()))
    results = []
    results.append(check("tma_paged_ring", build_tma_ring,
                         ["cp.async.bulk.tensor.3d", "mbarrier.try_wait.parity", "expect_tx"])[0])
    results.append(check("wgmma_attn_tile", build_wgmma_attn,
                         ["wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16",
                          "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16", "wgmma.wait_group", "ex2.approx"])[0])
    ok, k = check("ws_decode (3 partitions)", build_ws_decode,
                  ["setmaxnreg.inc.sync.aligned.u32", "setmaxnreg.dec.sync.aligned.u32", "wgmma.mma_async",
                   "cp.async.bulk.tensor.3d", "fence.proxy.async.shared::cta", "mbarrier.arrive"])
    results.append(ok)
    if k is not None:
        print("    launch num_warps=4; compiled metadata num_warps =", k.metadata.num_warps,
              "; setmaxnreg:", sorted(set(l.strip() for l in k.asm["ptx"].splitlines() if "setmaxnreg" in l)))
    print("ALL OK" if all(results) else "SOME FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
