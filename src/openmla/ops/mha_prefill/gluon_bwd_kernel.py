"""Hopper (sm90) backward of dense MHA varlen prefill in Gluon, FlashAttention-3 style: dK, dV and
dQ from one pass over the (key block, query block) pairs.

Inputs are the portable backward's (``kernel.py``): q, k, v, dO, and from its preprocess kernel
the base-2 lse (``+inf`` for rows without keys) and D = rowsum(dO∘O), both ``[h_q, total_q]``.

A CTA owns BLOCK_N = 128 keys of one KV head (the grid, sequence lookup and causal ordering are
the portable dK/dV kernel's) and walks every query head of its GQA group and, per head, the
BLOCK_M = 64-row query blocks that see any of its keys. Three partitions:

* load (1 warp): the CTA's K (head dim as DA + DB columns, 192 = 128 + 64) and V once, as two
  64-key halves; each step's Q and dO into a ring of STAGES buffers (ready / free mbarriers);
* two consumer warpgroups, warpgroup w owning keys w·64 .. w·64 + 63 of the block, with dK
  [64, d_qk] and dV [64, d_v] accumulators in fp32 registers (160 of the 240 a thread has at
  d_qk 192). Per step (wgmma from shared memory, query rows as M):
  S = Q·K_wᵀ; P = exp2(S·c − lse2) to shared memory; dP = dO·V_wᵀ and dV += Pᵀ·dO;
  dS = P∘(dP − D) with P read back from shared memory (holding it would not fit beside dP), to
  the same buffer once dV is done; dK += dSᵀ·Q. dQ = dS·K needs both warpgroups' dS: each
  warpgroup computes 64-column pieces of it over all 128 keys (warpgroup 0 the first pieces:
  two of three at d_qk 192, one of two at 128), scales them and adds them into an fp32
  ``[total_q, h_q · d_qk]`` accumulator by TMA reduce-adds (``cp.reduce.async.bulk.tensor``)
  from staging buffers. The two warpgroups meet per step through ``ds_ready`` / ``ds_free``;
  with LAG the dQ of step i is computed in step i + 1 from a second dS buffer pair, so a
  warpgroup rarely waits for the other (the staging then shrinks to one buffer a warpgroup to
  make room). With SDP_EARLY dP is issued together with S (its fp32 tile beside S: fits at
  d_qk 128 only).

Loop-invariant shared-memory addresses (the K / V halves, a fixed dS pair) are indexed through a
zero the compiler cannot prove, so that ptxas rebuilds their wgmma descriptors per step instead
of hoisting dozens of them into registers and spilling.

Masking: keys past the sequence end have their K and V rows zeroed in shared memory (so no NaN
there reaches dQ or dS through a zero factor) and their scores masked; query rows past the
sequence end get lse2 = +inf (P = 0, an exact zero added to the next sequence's dQ rows; rows
past the tensor are clipped by TMA); the causal diagonal's blocks and the ragged key block take
the masked path, every other block an unmasked one.
"""
from triton._C.libtriton import ir
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .gluon_kernel import find_seq, zero_rows_from

WG0 = gl.constexpr(0)
WG1 = gl.constexpr(1)


@builtin
def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
    """Add the shared-memory tile ``src`` into the global tile of ``tensor_desc`` at ``coord``
    (TMA reduce-add; completion tracked like a TMA store: ``tma.store_wait``). Triton 3.6 builds
    the op but Gluon's Hopper module does not export it."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle,
                                              coord, src.handle)


@gluon.jit
def _kv_block(cu_q_ptr, cu_k_ptr, n_seqs, n_vblocks, group, BLOCK_M: gl.constexpr,
              BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """This CTA's key block (the portable dK/dV kernel's grid): KV head, sequence bounds, first
    local key n0, the first query block m_lo, the first unmasked one m_mid, the query blocks per
    head nq and the step count (identical in every partition; 0 steps for an idle block)."""
    pid = gl.program_id(0)
    kv_head = pid // n_vblocks
    if CAUSAL:
        blk = pid % n_vblocks  # a sequence's first key blocks see the most rows: start first
    else:
        blk = n_vblocks - 1 - pid % n_vblocks
    lo = find_seq(cu_k_ptr, blk, n_seqs, BLOCK_N)
    k_start = gl.load(cu_k_ptr + lo)
    s_k = gl.load(cu_k_ptr + lo + 1) - k_start
    n0 = (blk - k_start // BLOCK_N - lo) * BLOCK_N
    q_start = gl.load(cu_q_ptr + lo)
    s_q = gl.load(cu_q_ptr + lo + 1) - q_start
    diag = s_k - s_q  # row i sees keys j <= i + diag
    if CAUSAL:
        # rows before m_lo see none of the block's keys; rows from m_full on see all of them
        m_lo = gl.minimum(gl.maximum(n0 - diag, 0), s_q) // BLOCK_M * BLOCK_M
        m_full = (gl.maximum(n0 + BLOCK_N - 1 - diag, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    else:
        m_lo = s_q * 0
        m_full = s_q * 0
    # a ragged key block takes the masked path throughout
    m_mid = gl.where(n0 + BLOCK_N <= s_k, gl.minimum(gl.maximum(m_full, m_lo), s_q), s_q)
    nq = gl.where(n0 < s_k, (s_q - m_lo + BLOCK_M - 1) // BLOCK_M, 0)
    return kv_head, k_start, s_k, n0, q_start, s_q, m_lo, m_mid, nq, nq * group


@gluon.jit
def _load_partition(qa_desc, qb_desc, ka_desc, kb_desc, v_desc, do_desc,
                    qa_s, qb_s, ka_s, kb_s, v_s, do_s, kv_ready, q_ready, q_free,
                    cu_q_ptr, cu_k_ptr, n_seqs, n_vblocks, group,
                    D_QK: gl.constexpr, D_V: gl.constexpr, DA: gl.constexpr, DB: gl.constexpr,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                    CAUSAL: gl.constexpr):
    HALF: gl.constexpr = BLOCK_N // 2
    kv_head, k_start, s_k, n0, q_start, s_q, m_lo, m_mid, nq, steps = _kv_block(
        cu_q_ptr, cu_k_ptr, n_seqs, n_vblocks, group, BLOCK_M, BLOCK_N, CAUSAL)
    if DB > 0:
        k_bytes: gl.constexpr = 2 * (ka_desc.block_type.nbytes + kb_desc.block_type.nbytes)
        q_bytes: gl.constexpr = (qa_desc.block_type.nbytes + qb_desc.block_type.nbytes
                                 + do_desc.block_type.nbytes)
    else:
        k_bytes: gl.constexpr = 2 * ka_desc.block_type.nbytes
        q_bytes: gl.constexpr = qa_desc.block_type.nbytes + do_desc.block_type.nbytes
    if steps > 0:
        mbarrier.expect(kv_ready, k_bytes + 2 * v_desc.block_type.nbytes)
        for h in gl.static_range(2):
            row = k_start + n0 + h * HALF
            tma.async_copy_global_to_shared(ka_desc, [row, kv_head * D_QK], kv_ready,
                                            ka_s.index(h))
            if DB > 0:
                tma.async_copy_global_to_shared(kb_desc, [row, kv_head * D_QK + DA], kv_ready,
                                                kb_s.index(h))
            tma.async_copy_global_to_shared(v_desc, [row, kv_head * D_V], kv_ready,
                                            v_s.index(h))
    for i in range(steps):
        head = kv_head * group + i // nq
        row = q_start + m_lo + (i % nq) * BLOCK_M
        s = i % STAGES
        mbarrier.wait(q_free.index(s), ((i // STAGES) & 1) ^ 1)
        mbarrier.expect(q_ready.index(s), q_bytes)
        tma.async_copy_global_to_shared(qa_desc, [row, head * D_QK], q_ready.index(s),
                                        qa_s.index(s))
        if DB > 0:
            tma.async_copy_global_to_shared(qb_desc, [row, head * D_QK + DA], q_ready.index(s),
                                            qb_s.index(s))
        tma.async_copy_global_to_shared(do_desc, [row, head * D_V], q_ready.index(s),
                                        do_s.index(s))


@gluon.jit
def _store_rows(ptr, acc, rows, n_rows, stride_t, scale, layout: gl.constexpr,
                COLS: gl.constexpr):
    """Store ``acc · scale`` (fp32 [64, COLS] in ``layout``) to the rows ``rows`` < n_rows of
    ``ptr`` (row stride ``stride_t``), in the pointer's dtype."""
    cols = gl.arange(0, COLS, layout=gl.SliceLayout(0, layout))
    ptrs = ptr + gl.expand_dims(rows.to(gl.int64) * stride_t, 1) + gl.expand_dims(cols, 0)
    gl.store(ptrs, (acc * scale).to(ptr.dtype.element_ty),
             mask=gl.expand_dims(rows < n_rows, 1))


@gluon.jit
def _dq_piece(ds_s, b, k0, k1, buf, dq_desc, row, col, softmax_scale, dq_layout: gl.constexpr,
              BLOCK_M: gl.constexpr, WAIT_STORE: gl.constexpr):
    """One 64-column dQ piece: dQ = dS·K[:, piece] over both warpgroups' keys (dS from buffers
    2b and 2b + 1, key halves k0 / k1), scaled, staged in ``buf`` and added into the fp32
    accumulator at (row, col) by a TMA reduce-add (after waiting for the reduces before to have
    read the staging buffers when WAIT_STORE)."""
    dq = gl.zeros([BLOCK_M, 64], gl.float32, layout=dq_layout)
    dq = warpgroup_mma(ds_s.index(2 * b), k0, dq, use_acc=False, is_async=True)
    dq = warpgroup_mma(ds_s.index(2 * b + 1), k1, dq, is_async=True)
    dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
    if WAIT_STORE:
        tma.store_wait(0)
    buf.store(dq * softmax_scale)
    fence_async_shared()
    _tma_reduce_add(dq_desc, [row, col], buf)


@gluon.jit
def _dq_step(ds_s, b, z, ka_s, kb_s, dq_s, dq_desc, ds_free, row, col0, softmax_scale,
             dq_layout: gl.constexpr, BLOCK_M: gl.constexpr, WG: gl.constexpr,
             NPIECES: gl.constexpr, PIECES0: gl.constexpr, DA: gl.constexpr,
             NBUF: gl.constexpr):
    """dQ of one step (dS in buffer pair b): this warpgroup's 64-column pieces of the head's
    NPIECES (warpgroup 0 the first PIECES0, warpgroup 1 the rest), then ``ds_free`` is arrived
    (the MMA waits also retire any MMA issued before, such as the step's dK). NBUF staging
    buffers: with one, it is reused once the reduce before has read it. ``z`` is a zero the
    compiler cannot prove (see the consumer's loop)."""
    for pc in gl.static_range(NPIECES):
        if (pc < PIECES0) == (WG == 0):
            if pc < DA // 64:
                k0 = ka_s.index(z).slice(pc * 64, 64, dim=1)
                k1 = ka_s.index(z + 1).slice(pc * 64, 64, dim=1)
            else:
                k0 = kb_s.index(z).slice(pc * 64 - DA, 64, dim=1)
                k1 = kb_s.index(z + 1).slice(pc * 64 - DA, 64, dim=1)
            _dq_piece(ds_s, b, k0, k1, dq_s.index((pc - (WG == 1) * PIECES0) % NBUF), dq_desc,
                      row, col0 + pc * 64, softmax_scale, dq_layout, BLOCK_M,
                      (NBUF == 1) or (pc - (WG == 1) * PIECES0 == 0))
    mbarrier.arrive(ds_free, count=1)


@gluon.jit
def _consumer_partition(qa_s, qb_s, ka_s, kb_s, v_s, do_s, ds_s, dq_s, dq_desc,
                        kv_ready, q_ready, q_free, ds_ready, ds_free,
                        cu_q_ptr, cu_k_ptr, lse2_ptr, delta_ptr, dk_ptr, dv_ptr,
                        scale_log2, softmax_scale, n_seqs, n_vblocks, group, total_q,
                        stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                        WG: gl.constexpr, D_QK: gl.constexpr, D_V: gl.constexpr,
                        DA: gl.constexpr, DB: gl.constexpr, PIECES0: gl.constexpr,
                        BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                        STAGES: gl.constexpr, CAUSAL: gl.constexpr, LAG: gl.constexpr,
                        NBUF: gl.constexpr, SDP_EARLY: gl.constexpr):
    HALF: gl.constexpr = BLOCK_N // 2
    NPIECES: gl.constexpr = D_QK // 64  # 64-column dQ pieces of a head
    NB: gl.constexpr = 2 if LAG else 1  # dS buffer pairs
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HALF, 16])
    ka_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, DA, 16])
    v_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D_V, 16])
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, 64, 16])
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    dtype: gl.constexpr = qa_s.dtype

    kv_head, k_start, s_k, n0, q_start, s_q, m_lo, m_mid, nq, steps = _kv_block(
        cu_q_ptr, cu_k_ptr, n_seqs, n_vblocks, group, BLOCK_M, BLOCK_N, CAUSAL)
    key0 = n0 + WG * HALF  # this warpgroup's first local key
    dk_a = gl.zeros([HALF, DA], gl.float32, layout=ka_layout)
    if DB > 0:
        kb_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0],
                                                            warps_per_cta=[4, 1],
                                                            instr_shape=[16, DB, 16])
        dk_b = gl.zeros([HALF, DB], gl.float32, layout=kb_layout)
    else:
        dk_b = dk_a  # placeholder, never updated
    dv = gl.zeros([HALF, D_V], gl.float32, layout=v_layout)
    if steps > 0:
        diag = s_k - s_q
        ka = ka_s.index(WG)
        kb = kb_s.index(WG)
        vw = v_s.index(WG)
        mbarrier.wait(kv_ready, 0)
        if key0 + HALF > s_k:  # keys past the sequence end: zero K and V rows
            zero_rows_from(ka, 0, s_k - key0, HALF)
            if DB > 0:
                zero_rows_from(kb, 0, s_k - key0, HALF)
            zero_rows_from(vw, 0, s_k - key0, HALF)
            fence_async_shared()
        offs_m = gl.arange(0, BLOCK_M, layout=row_s)
        for i in range(steps):
            # a zero the compiler cannot prove: buffer indices derived from it keep the
            # shared-memory descriptors of the fixed K / V / dS buffers from being hoisted out
            # of the loop (held in registers they spill)
            z = i // (steps + 1)
            ka = ka_s.index(WG + z)
            kb = kb_s.index(WG + z)
            vw = v_s.index(WG + z)
            head = kv_head * group + i // nq
            m0 = m_lo + (i % nq) * BLOCK_M
            rows = m0 + offs_m
            row_ok = rows < s_q
            row_h = head.to(gl.int64) * total_q + q_start + rows
            lse2 = gl.load(lse2_ptr + row_h, mask=row_ok, other=float("inf"))
            delta = gl.load(delta_ptr + row_h, mask=row_ok, other=0.0)
            s = i % STAGES
            mbarrier.wait(q_ready.index(s), (i // STAGES) & 1)
            qa = qa_s.index(s)
            qb = qb_s.index(s)
            do = do_s.index(s)
            # S = Q·K_wᵀ (query rows as M); dP = dO·V_wᵀ beside it with SDP_EARLY, else once P
            # is out of the fp32 registers (at d_qk 192 the dK and dV accumulators leave room
            # for one 64 x 64 fp32 tile)
            sc = gl.zeros([BLOCK_M, HALF], gl.float32, layout=s_layout)
            sc = warpgroup_mma(qa, ka.permute((1, 0)), sc, use_acc=False, is_async=True)
            if DB > 0:
                sc = warpgroup_mma(qb, kb.permute((1, 0)), sc, is_async=True)
            if SDP_EARLY:  # dP runs under the softmax (its fp32 tile held beside S)
                dp = gl.zeros([BLOCK_M, HALF], gl.float32, layout=s_layout)
                dp = warpgroup_mma(do, vw.permute((1, 0)), dp, use_acc=False, is_async=True)
                sc = warpgroup_mma_wait(num_outstanding=1, deps=(sc,))
            else:
                sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
            p = gl.exp2(gl.fma(sc, scale_log2, -gl.expand_dims(lse2, 1)))
            if m0 < m_mid:
                # keys past the sequence end, and (causal) past each row's diagonal: one
                # compare of the column index against a per-row limit
                if CAUSAL:
                    lim = gl.minimum(rows + diag + 1, s_k) - key0
                else:
                    lim = s_k - key0 + 0 * rows
                cols = gl.arange(0, HALF, layout=col_s)
                p = gl.where(gl.expand_dims(cols, 0) < gl.expand_dims(lim, 1), p, 0.0)
            # P to shared memory once both warpgroups are done with this buffer pair's last dS
            b = i % NB + z
            u = i // NB
            dsw = ds_s.index(2 * b + WG)
            mbarrier.wait(ds_free.index(b), (u & 1) ^ 1)
            dsw.store(p.to(dtype))
            fence_async_shared()
            if not SDP_EARLY:
                dp = gl.zeros([BLOCK_M, HALF], gl.float32, layout=s_layout)
                dp = warpgroup_mma(do, vw.permute((1, 0)), dp, use_acc=False, is_async=True)
            dv = warpgroup_mma(dsw.permute((1, 0)), do, dv, is_async=True)
            dp = warpgroup_mma_wait(num_outstanding=1, deps=(dp,))
            # dS = P∘(dP − D), P read back from shared memory (bf16) rather than held
            ds = dsw.load(s_layout).to(gl.float32) * (dp - gl.expand_dims(delta, 1))
            dv = warpgroup_mma_wait(num_outstanding=0, deps=(dv,))
            dsw.store(ds.to(dtype))
            fence_async_shared()
            dk_a = warpgroup_mma(dsw.permute((1, 0)), qa, dk_a, is_async=True)
            if DB > 0:
                dk_b = warpgroup_mma(dsw.permute((1, 0)), qb, dk_b, is_async=True)
            mbarrier.arrive(ds_ready.index(b), count=1)
            if LAG:
                # dQ of the step before: the other warpgroup wrote its dS long ago
                if i > 0:
                    j = i - 1
                    mbarrier.wait(ds_ready.index(j % 2), (j // 2) & 1)
                    _dq_step(ds_s, j % 2 + z, z, ka_s, kb_s, dq_s, dq_desc, ds_free.index(j % 2),
                             q_start + m_lo + (j % nq) * BLOCK_M,
                             (kv_head * group + j // nq) * D_QK, softmax_scale, dq_layout,
                             BLOCK_M, WG, NPIECES, PIECES0, DA, NBUF)
            else:
                mbarrier.wait(ds_ready.index(0), u & 1)
                _dq_step(ds_s, b, z, ka_s, kb_s, dq_s, dq_desc, ds_free.index(0), q_start + m0,
                         head * D_QK, softmax_scale, dq_layout, BLOCK_M, WG, NPIECES, PIECES0,
                         DA, NBUF)
            if DB > 0:
                dk_a, dk_b = warpgroup_mma_wait(num_outstanding=0, deps=(dk_a, dk_b))
            else:
                dk_a = warpgroup_mma_wait(num_outstanding=0, deps=(dk_a,))
            mbarrier.arrive(q_free.index(s), count=1)  # this step's Q and dO are consumed
        if LAG:  # dQ of the last step
            j = steps - 1
            mbarrier.wait(ds_ready.index(j % 2), (j // 2) & 1)
            _dq_step(ds_s, j % 2, 0, ka_s, kb_s, dq_s, dq_desc, ds_free.index(j % 2),
                     q_start + m_lo + (j % nq) * BLOCK_M, (kv_head * group + j // nq) * D_QK,
                     softmax_scale, dq_layout, BLOCK_M, WG, NPIECES, PIECES0, DA, NBUF)
        tma.store_wait(0)

    rows_k = key0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, ka_layout))
    dk_base = dk_ptr + kv_head * stride_dkh + k_start.to(gl.int64) * stride_dkt
    _store_rows(dk_base, dk_a, rows_k, s_k, stride_dkt, softmax_scale, ka_layout, DA)
    if DB > 0:
        rows_kb = key0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, kb_layout))
        _store_rows(dk_base + DA, dk_b, rows_kb, s_k, stride_dkt, softmax_scale, kb_layout, DB)
    rows_v = key0 + gl.arange(0, HALF, layout=gl.SliceLayout(1, v_layout))
    dv_base = dv_ptr + kv_head * stride_dvh + k_start.to(gl.int64) * stride_dvt
    _store_rows(dv_base, dv, rows_v, s_k, stride_dvt, 1.0, v_layout, D_V)


@gluon.jit
def _mha_bwd_gluon_kernel(
    qa_desc, qb_desc, ka_desc, kb_desc, v_desc, do_desc, dq_desc,
    cu_q_ptr, cu_k_ptr, lse2_ptr, delta_ptr, dk_ptr, dv_ptr,
    scale_log2, softmax_scale,
    n_seqs, n_vblocks, group, total_q,
    stride_dkt, stride_dkh,  # dk [total_k, h_kv, D_QK]
    stride_dvt, stride_dvh,  # dv [total_k, h_kv, D_V]
    D_QK: gl.constexpr, D_V: gl.constexpr, DA: gl.constexpr, DB: gl.constexpr,
    PIECES0: gl.constexpr, PIECES1: gl.constexpr,  # 64-column dQ pieces of warpgroups 0, 1
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
    LAG: gl.constexpr,  # dQ of step i computed in step i + 1 (warpgroups decoupled)
    NBUF0: gl.constexpr, NBUF1: gl.constexpr,  # dQ staging buffers of warpgroups 0, 1
    SDP_EARLY: gl.constexpr,  # dP issued with S (else once P is in shared memory)
    CONSUMER_REGS: gl.constexpr, LOAD_REGS: gl.constexpr,
):
    HALF: gl.constexpr = BLOCK_N // 2
    NB: gl.constexpr = 2 if LAG else 1
    dtype: gl.constexpr = ka_desc.dtype
    qa_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, DA], qa_desc.layout)
    ka_s = gl.allocate_shared_memory(dtype, [2, HALF, DA], ka_desc.layout)
    if DB > 0:
        qb_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, DB], qb_desc.layout)
        kb_s = gl.allocate_shared_memory(dtype, [2, HALF, DB], kb_desc.layout)
    else:  # placeholders, never read
        qb_s = qa_s
        kb_s = ka_s
    v_s = gl.allocate_shared_memory(dtype, [2, HALF, D_V], v_desc.layout)
    do_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, D_V], do_desc.layout)
    ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, HALF], dtype)
    ds_s = gl.allocate_shared_memory(dtype, [2 * NB, BLOCK_M, HALF], ds_layout)
    dq0_s = gl.allocate_shared_memory(gl.float32, [NBUF0, BLOCK_M, 64], dq_desc.layout)
    dq1_s = gl.allocate_shared_memory(gl.float32, [NBUF1, BLOCK_M, 64], dq_desc.layout)
    kv_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ds_ready = gl.allocate_shared_memory(gl.int64, [NB, 1], mbarrier.MBarrierLayout())
    ds_free = gl.allocate_shared_memory(gl.int64, [NB, 1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_ready, count=1)
    for i in gl.static_range(NB):
        mbarrier.init(ds_ready.index(i), count=2)  # both warpgroups' dS are in shared memory
        mbarrier.init(ds_free.index(i), count=2)  # both warpgroups' dQ MMAs are done
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_free.index(i), count=2)
    fence_async_shared()

    gl.warp_specialize([
        (_consumer_partition, (qa_s, qb_s, ka_s, kb_s, v_s, do_s, ds_s, dq0_s, dq_desc,
                               kv_ready, q_ready, q_free, ds_ready, ds_free,
                               cu_q_ptr, cu_k_ptr, lse2_ptr, delta_ptr, dk_ptr, dv_ptr,
                               scale_log2, softmax_scale, n_seqs, n_vblocks, group, total_q,
                               stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                               WG0, D_QK, D_V, DA, DB, PIECES0, BLOCK_M, BLOCK_N, STAGES, CAUSAL,
                               LAG, NBUF0, SDP_EARLY)),
        (_consumer_partition, (qa_s, qb_s, ka_s, kb_s, v_s, do_s, ds_s, dq1_s, dq_desc,
                               kv_ready, q_ready, q_free, ds_ready, ds_free,
                               cu_q_ptr, cu_k_ptr, lse2_ptr, delta_ptr, dk_ptr, dv_ptr,
                               scale_log2, softmax_scale, n_seqs, n_vblocks, group, total_q,
                               stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                               WG1, D_QK, D_V, DA, DB, PIECES0, BLOCK_M, BLOCK_N, STAGES, CAUSAL,
                               LAG, NBUF1, SDP_EARLY)),
        (_load_partition, (qa_desc, qb_desc, ka_desc, kb_desc, v_desc, do_desc,
                           qa_s, qb_s, ka_s, kb_s, v_s, do_s, kv_ready, q_ready, q_free,
                           cu_q_ptr, cu_k_ptr, n_seqs, n_vblocks, group, D_QK, D_V, DA, DB,
                           BLOCK_M, BLOCK_N, STAGES, CAUSAL)),
    ], [4, 1], [CONSUMER_REGS, LOAD_REGS])
