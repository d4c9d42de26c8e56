"""Hopper (sm90) sparse MLA decode for h_q <= 16 with the token rows gathered by cp.async through a
ring of half-tile raw slots (V3.2 FP8 cache, d_qk 576), in Gluon. The default at h_q <= 16.

The swapped-product kernel (``gluon_kernel.py`` with SWAP) gathers each tile's 656-byte rows into
the registers of two producer warpgroups, so at most two tiles' bytes are in flight and the
gathers run at about 2 TB/s. Here the rows go to shared memory with ``cp.async`` (16-byte pieces,
no registers held), through three raw slots of half a tile (32 token rows: 16 KiB of fp8 NoPE
bytes and their scales), which leaves room for two dequantized key stages:

* issuer warpgroup: TMA copy of Q per request; per half tile (indices loaded one half ahead) it
  waits for a free raw slot and copies the NoPE bytes and the four fp32 scales of the valid rows
  (invalid slots: index < 0, >= num_blocks * pbs, or at a position >= the length; their copies
  are predicated off, fill zeros and never dereference the cache), asks L2 for the rows' RoPE
  lines, and has every thread's copies arrive on the slot's barrier when they land
  (``cp.async.mbarrier.arrive.noinc``);
* converter warpgroup: per tile, once a key stage is free, copies the tile's bf16 RoPE rows
  straight into the stage's NVMMA tile with ``cp.async`` and stores its validity flags, then for
  each half waits for its raw slot, takes the bytes to registers, releases the slot and
  dequantizes them (fp8 → fp32 × per-128-dim scale → bf16, bit-identical to ``gather_dequant``)
  into the stage; it publishes the stage once its RoPE copies have landed;
* softmax and PV warpgroups: the swapped-product consumers of ``gluon_kernel.py``, unchanged, so
  the output is bitwise that of the swapped kernel.

Shared memory: Q 18 KiB + 2 × (64 + 8) KiB key stages + 3 × 16.5 KiB raw slots + Pᵀ 2 KiB
≈ 215 KiB. (Whole-tile raw stages leave room for one key stage only, which serialises the
dequantization with the consumers: measured slower, RESULTS.md, sixth session.)
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier

from .._gluon_decode import handoff_barriers, load_q
from ..schedule.gluon import schedule_part
from .gluon_kernel import (
    GROUP,
    ROPE_OFFSET,
    SCALE_OFFSET,
    TOKEN_BYTES,
    _dequant_store,
    _pv_partition,
    _request_tiles,
    _softmax_partition_swapped,
    _split_scales,
    _token_rows,
)

HALF_N = gl.constexpr(32)  # token rows of a raw slot


@gluon.jit
def _rope_l2_prefetch(addr):
    """Ask L2 for the line at each address (nothing comes back to registers)."""
    gl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [addr],
                              dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _half_issuer(q_desc, qr_desc, q_s, qr_s, raw_s, sc_s, q_ready, q_free,
                 raw_ready, raw_free, k_ptr, idx_ptr, topk_len_ptr, meta_ptr, s_q, h_q, topk,
                 num_tokens, stride_kp, stride_ib, stride_it,
                 D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                 PAGE_SIZE: gl.constexpr, OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                 HAS_TOPK_LEN: gl.constexpr, SLOTS: gl.constexpr, WARPS: gl.constexpr):
    # 16-byte pieces of the NoPE bytes [HALF_N, 512]; one 4-byte piece a scale [HALF_N, 4]
    nope_l: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [WARPS, 1], [1, 0])
    sc_l: gl.constexpr = gl.BlockedLayout([1, 1], [8, 4], [WARPS, 1], [1, 0])
    row_l: gl.constexpr = gl.SliceLayout(1, nope_l)
    srow_l: gl.constexpr = gl.SliceLayout(1, sc_l)
    # the half tile's rows once a warp (every warp asks L2 for the same RoPE lines: a
    # prefetch, nothing comes back)
    vec_l: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
    D_NOPE: gl.constexpr = raw_s.shape[2]

    pid_h = gl.program_id(0)
    tok = gl.program_id(1)
    pid_part = gl.program_id(2)
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    offs = gl.arange(0, HALF_N, layout=row_l)
    ncols = gl.expand_dims(gl.arange(0, D_NOPE, layout=gl.SliceLayout(0, nope_l)), 0)
    scols = gl.expand_dims(gl.arange(0, 4, layout=gl.SliceLayout(0, sc_l)), 0)
    hs = 0
    rq = 0
    r = begin_req
    while r <= end_req:
        length, n_sched, t_lo, t_hi = _request_tiles(topk_len_ptr, r, topk, line_pos, part_lo,
                                                     part_hi, HAS_TOPK_LEN, BLOCK_N, OVERHEAD)
        q_row = (r * s_q + tok) * h_q + pid_h * BLOCK_H
        load_q(q_desc, qr_desc, q_s, qr_s, q_ready, q_free, rq, q_row, D_HALF)
        idx_row = idx_ptr + r.to(gl.int64) * stride_ib + tok * stride_it
        h_lo = t_lo * (BLOCK_N // HALF_N)
        h_hi = t_hi * (BLOCK_N // HALF_N)
        slots = h_lo * HALF_N + offs
        idx_next = gl.load(idx_row + slots, mask=slots < length, other=-1)
        h = h_lo
        while h < h_hi:
            s = hs % SLOTS
            slots = h * HALF_N + offs
            idx = idx_next
            idx_next = gl.load(idx_row + slots + HALF_N, mask=slots + HALF_N < length,
                               other=-1)
            valid, row = _token_rows(idx, slots, length, num_tokens, stride_kp, PAGE_SIZE)
            mbarrier.wait(raw_free.index(s), ((hs // SLOTS) & 1) ^ 1)
            async_copy.async_copy_global_to_shared(
                raw_s.index(s), k_ptr + (gl.expand_dims(row, 1) + ncols),
                mask=gl.expand_dims(valid, 1))
            srow = gl.convert_layout(row, srow_l)
            svalid = gl.expand_dims(gl.convert_layout(valid, srow_l), 1)
            sc_ptr = (k_ptr + (srow + SCALE_OFFSET)).to(gl.pointer_type(gl.float32))
            async_copy.async_copy_global_to_shared(
                sc_s.index(s), gl.expand_dims(sc_ptr, 1) + scols, mask=svalid)
            vrow = gl.convert_layout(row, vec_l)
            vvalid = gl.convert_layout(valid, vec_l)
            # the RoPE part's lines (first and last byte), for the converter's copy later
            rope_at = k_ptr + gl.where(vvalid, vrow + ROPE_OFFSET, 0)
            _rope_l2_prefetch(rope_at)
            _rope_l2_prefetch(rope_at + gl.where(vvalid, TOKEN_BYTES - ROPE_OFFSET - 1, 0))
            async_copy.mbarrier_arrive(raw_ready.index(s), increment_count=False)
            hs += 1
            h += 1
        line_pos += OVERHEAD + n_sched
        rq += 1
        r += 1


@gluon.jit
def _half_converter(raw_s, sc_s, k_s, kr_s, v_s, raw_ready, raw_free, k_ready, k_free, k_ptr,
                    idx_ptr, topk_len_ptr, meta_ptr, topk, num_tokens, stride_kp, stride_ib,
                    stride_it, PAGE_SIZE: gl.constexpr, BLOCK_N: gl.constexpr,
                    OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                    HAS_TOPK_LEN: gl.constexpr, SLOTS: gl.constexpr, STAGES: gl.constexpr,
                    WARPS: gl.constexpr):
    nope_l: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [WARPS, 1], [1, 0])
    row_l: gl.constexpr = gl.SliceLayout(1, nope_l)
    sc_l: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [WARPS, 1], [1, 0])
    rope_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WARPS, 1], [1, 0])
    rrow_l: gl.constexpr = gl.SliceLayout(1, rope_l)
    D_ROPE: gl.constexpr = kr_s.shape[2]
    tok = gl.program_id(1)
    pid_part = gl.program_id(2)
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    scols = gl.expand_dims(gl.arange(0, 4, layout=gl.SliceLayout(0, sc_l)), 0)
    rcols = gl.expand_dims(gl.arange(0, D_ROPE, layout=gl.SliceLayout(0, rope_l)), 0)
    offs_n = gl.arange(0, BLOCK_N, layout=rrow_l)
    it = 0
    r = begin_req
    while r <= end_req:
        length, n_sched, t_lo, t_hi = _request_tiles(topk_len_ptr, r, topk, line_pos, part_lo,
                                                     part_hi, HAS_TOPK_LEN, BLOCK_N, OVERHEAD)
        idx_row = idx_ptr + r.to(gl.int64) * stride_ib + tok * stride_it
        t = t_lo
        while t < t_hi:
            ks = it % STAGES
            # the tile's RoPE rows (the issuer asked L2 for them) and validity flags, copied
            # into the key stage while the NoPE halves are converted
            slots = t * BLOCK_N + offs_n
            idx = gl.load(idx_row + slots, mask=slots < length, other=-1)
            valid, row = _token_rows(idx, slots, length, num_tokens, stride_kp, PAGE_SIZE)
            r_ptr = (k_ptr + (row + ROPE_OFFSET)).to(gl.pointer_type(gl.bfloat16))
            mbarrier.wait(k_free.index(ks), ((it // STAGES) & 1) ^ 1)
            async_copy.async_copy_global_to_shared(
                kr_s.index(ks), gl.expand_dims(r_ptr, 1) + rcols, mask=gl.expand_dims(valid, 1))
            async_copy.commit_group()
            v_s.index(ks).store(valid.to(gl.int32))
            k0 = k_s.index(2 * ks)
            k1 = k_s.index(2 * ks + 1)
            for hh in gl.static_range(BLOCK_N // HALF_N):
                hs = it * (BLOCK_N // HALF_N) + hh
                s = hs % SLOTS
                mbarrier.wait(raw_ready.index(s), (hs // SLOTS) & 1)
                sc4 = sc_s.index(s).load(sc_l)
                raw = raw_s.index(s)
                raw0 = raw.slice(0, GROUP, dim=1).load(nope_l)
                raw1 = raw.slice(GROUP, GROUP, dim=1).load(nope_l)
                raw2 = raw.slice(2 * GROUP, GROUP, dim=1).load(nope_l)
                raw3 = raw.slice(3 * GROUP, GROUP, dim=1).load(nope_l)
                mbarrier.arrive(raw_free.index(s), count=1)
                sc0, sc1, sc2, sc3 = _split_scales(sc4, scols, row_l)
                k0h = k0.slice(hh * HALF_N, HALF_N, dim=0)
                k1h = k1.slice(hh * HALF_N, HALF_N, dim=0)
                _dequant_store(raw0, sc0, k0h.slice(0, GROUP, dim=1))
                _dequant_store(raw1, sc1, k0h.slice(GROUP, GROUP, dim=1))
                _dequant_store(raw2, sc2, k1h.slice(0, GROUP, dim=1))
                _dequant_store(raw3, sc3, k1h.slice(GROUP, GROUP, dim=1))
            async_copy.wait_group(0)
            fence_async_shared()
            mbarrier.arrive(k_ready.index(ks), count=1)
            it += 1
            t += 1
        line_pos += OVERHEAD + n_sched
        r += 1


@gluon.jit
def _sparse_decode_ring_kernel(
    q_desc, qr_desc, k_ptr, idx_ptr, topk_len_ptr, sink_ptr, meta_ptr, num_splits_ptr,
    out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
    scale_log2, s_q, h_q, topk, num_tokens,
    stride_kp, stride_ib, stride_it, stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lt, stride_lh, stride_oa_piece, stride_oa_t, stride_oa_h,
    stride_la_piece, stride_la_t,
    PAGE_SIZE: gl.constexpr, D_HALF: gl.constexpr, D_ROPE: gl.constexpr,
    BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, OVERHEAD: gl.constexpr,
    META_COLS: gl.constexpr, HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
    SLOTS: gl.constexpr, PV_REGS: gl.constexpr, CONVERTER_REGS: gl.constexpr,
    ISSUER_REGS: gl.constexpr, WARPS: gl.constexpr,
):
    STAGES: gl.constexpr = 2
    dtype: gl.constexpr = gl.bfloat16
    k_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D_HALF], dtype)
    kr_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D_ROPE], dtype)
    plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
    flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
    q_s = gl.allocate_shared_memory(dtype, [2, BLOCK_H, D_HALF], q_desc.layout)
    qr_s = gl.allocate_shared_memory(dtype, [BLOCK_H, D_ROPE], qr_desc.layout)
    k_s = gl.allocate_shared_memory(dtype, [2 * STAGES, BLOCK_N, D_HALF], k_layout)
    kr_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_ROPE], kr_layout)
    v_s = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N], flat)
    raw_s = gl.allocate_shared_memory(gl.uint8, [SLOTS, HALF_N, 2 * D_HALF], plain)
    sc_s = gl.allocate_shared_memory(gl.float32, [SLOTS, HALF_N, 4], plain)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_H], dtype)
    p_s = gl.allocate_shared_memory(dtype, [BLOCK_N, BLOCK_H], p_layout)
    a_s = gl.allocate_shared_memory(gl.float32, [BLOCK_H], flat)
    # key tiles: the converter arrives once a stage; both MMA warpgroups free it
    q_ready, q_free, p_ready, p_free, k_ready, k_free = handoff_barriers(STAGES, 1, 1)
    raw_ready = gl.allocate_shared_memory(gl.int64, [SLOTS, 1], mbarrier.MBarrierLayout())
    raw_free = gl.allocate_shared_memory(gl.int64, [SLOTS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(SLOTS):
        mbarrier.init(raw_ready.index(i), count=WARPS * 32)
        mbarrier.init(raw_free.index(i), count=1)
    fence_async_shared()

    gl.warp_specialize([
        (_softmax_partition_swapped, (q_s, qr_s, k_s, kr_s, v_s, p_s, a_s, q_ready, q_free, k_ready, k_free,
          p_ready, p_free, topk_len_ptr, sink_ptr, meta_ptr, num_splits_ptr, out_ptr,
          lse_ptr, o_acc_ptr, lse_acc_ptr, scale_log2, h_q, topk, stride_ob, stride_ot,
          stride_oh, stride_lb, stride_lt, stride_lh, stride_oa_piece, stride_oa_t,
          stride_oa_h, stride_la_piece, stride_la_t, D_HALF, BLOCK_H, BLOCK_N, OVERHEAD,
          META_COLS, HAS_TOPK_LEN, HAS_SINK, STAGES)),
        (_pv_partition, (k_s, p_s, a_s, k_ready, k_free, p_ready, p_free, topk_len_ptr, meta_ptr,
          num_splits_ptr, out_ptr, o_acc_ptr, h_q, topk, stride_ob, stride_ot, stride_oh,
          stride_oa_piece, stride_oa_t, stride_oa_h, D_HALF, BLOCK_H, BLOCK_N, OVERHEAD,
          META_COLS, HAS_TOPK_LEN, STAGES, True)),
        (_half_converter, (raw_s, sc_s, k_s, kr_s, v_s, raw_ready, raw_free, k_ready, k_free,
          k_ptr, idx_ptr, topk_len_ptr, meta_ptr, topk, num_tokens, stride_kp, stride_ib,
          stride_it, PAGE_SIZE, BLOCK_N, OVERHEAD, META_COLS,
          HAS_TOPK_LEN, SLOTS, STAGES, WARPS)),
        (_half_issuer, (q_desc, qr_desc, q_s, qr_s, raw_s, sc_s, q_ready, q_free,
          raw_ready, raw_free, k_ptr, idx_ptr, topk_len_ptr, meta_ptr, s_q, h_q, topk,
          num_tokens, stride_kp, stride_ib, stride_it, D_HALF, BLOCK_H, BLOCK_N, PAGE_SIZE,
          OVERHEAD, META_COLS, HAS_TOPK_LEN, SLOTS, WARPS)),
    ], [4, WARPS, WARPS], [PV_REGS, CONVERTER_REGS, ISSUER_REGS])
