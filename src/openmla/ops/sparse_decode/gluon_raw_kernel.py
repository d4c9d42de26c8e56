"""Hopper (sm90) sparse MLA decode for h_q <= 16 with the fp8 keys converted in the registers of
the two MMA warpgroups (V3.2 FP8 cache, d_qk 576), in Gluon. The default at h_q <= 16.

The ring kernel (``gluon_ring_kernel.py``) dequantizes each key tile into a bf16 shared-memory
stage that both MMA warpgroups read: 72 KiB a stage, so two stages and three half-tile raw slots
fill shared memory. Here the token rows stay in shared memory as gathered (fp8 NoPE bytes, fp32
scales, bf16 RoPE: 41 KiB a tile, four tiles in flight), and each MMA warpgroup loads the bytes
its wgmma A operand needs straight into registers, converts them (fp8 → f16, exact, one
``cvt.rn.f16x2.e4m3x2`` per two bytes) and multiplies in f16 from registers:

* issuer warpgroup: TMA copy of Q per request; per tile, once a stage is free, ``cp.async`` of
  the valid rows' NoPE bytes, scales and RoPE part (invalid slots predicated off: zeros, never
  dereferenced), completing on the stage's barrier (``cp.async.mbarrier.arrive.noinc``); a tile
  later, once those copies have landed (``cp.async.wait_group``), the tile's largest scale c_g of
  each group, reduced inside each warp, and its last arrival on the stage's barrier;
* softmax warpgroup: once per request Q's NoPE dims as f16 in a permuted copy (below), each head
  scaled by a power of two that brings its largest |q| into [2^14, 2^15) (exact for the normal
  range); per tile Sᵀ = 2^e ⊙ Σ_g scale_g ⊙ K_g·Q_gᵀ + K_rope·Q_ropeᵀ (the RoPE product in
  bf16 from shared memory), the online softmax over the keys (the row sums stay a thread's own
  until the request's end), and Pᵀ (float32) with the rescale factors for the PV warpgroup;
* PV warpgroup: four f16 copies Pᵀ_g = Pᵀ ⊙ scale_g / c_g in shared memory (which frees the
  softmax warpgroup's Pᵀ at once), then Oᵀ_g = Oᵀ_g · α · c_g,prev / c_g + V_gᵀ·Pᵀ_g for the
  four groups of 128 value dims (Oᵀ_g counted in units of the current tile's c_g, multiplied by
  it at the end), Vᵀ from registers.

The two MMA warpgroups' chains bound a tile (the gathers take less), so each keeps off it what
another partition can do: no cross-warp reduction of the scales and no per-tile row sums in the
softmax warpgroup, the Pᵀ_g scaling in the PV warpgroup, the scale maxima in the issuer (H200,
b=128 h_q=16 topk=2048: 85 µs with all of it in the softmax warpgroup, 68 µs now).

K and V enter the products as their exact fp8 values, Q exactly, Pᵀ_g with f16's 11-bit
significand. The float32 reference rounds fp8 × scale to bf16 first, which this kernel does not;
the outputs agree within the sparse-decode tolerances (closer than the bf16 kernels'), not
bitwise. Limits of the normalisation: the scales are the format's non-negative amax / 448; the
per-tile factor c_g,prev / c_g would overflow float32 only for scales some 10^35 apart; inside a
tile, keys whose group scale is below 2^-14 of the tile's largest enter Pᵀ_g as f16 subnormals
(measured: no loss of accuracy up to a 2^16 spread, about 7× the bf16 kernels' error at 2^20).

Register operands. A wgmma A fragment gives a thread two rows and, per 16-wide k step, the
columns 2·(lane % 4) + {0, 1, 8, 9}. The K dimension of Sᵀ_g = K_g·Q_gᵀ (the head dims) is
permuted so that a thread's columns over a 128-dim group are two 16-byte runs of each of its
rows: k index κ = 64h + 16b + 8j + 2q + e holds head dim 32q + 16h + 4b + 2j + e (Q is stored
with the same permutation). The M dimension of Oᵀ_g = V_gᵀ·Pᵀ_g (the value dims) is permuted so
that a thread's rows are 4-byte runs: row 64m + 16w + 8i + r holds value dim 32w + 4r + 2m + i.
The loads are 16 and 4 bytes wide and free of bank conflicts under a 16-byte XOR swizzle of the
rows; the register tensors reach the wgmma layout by reshape / permute, in registers (no shared
memory).
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .._gluon_decode import handoff_barriers, load_q
from ..schedule.gluon import schedule_part
from .gluon_kernel import (
    LOG2E,
    MAX_SENTINEL,
    ROPE_OFFSET,
    SCALE_OFFSET,
    _pieces,
    _request_factors,
    _request_tiles,
    _store_half,
    _store_lse,
    _token_rows,
)

GROUP = gl.constexpr(128)  # NoPE dims per scale


# Registers of a [64 keys, 128 dims] fp8 group of K for the softmax warpgroup: a thread holds
# keys r, r + 8 (r = lane / 4 + 16 · warp) and dims 32q + {0..15} and 32q + 16 + {0..15}
# (q = lane % 4).
K_LAYOUT = gl.constexpr(gl.DistributedLinearLayout(
    reg_bases=[[0, 1], [0, 2], [0, 4], [0, 8], [0, 16], [8, 0]],
    lane_bases=[[0, 32], [0, 64], [1, 0], [2, 0], [4, 0]],
    warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, 128]))
# Registers of a [64 keys, 128 dims] fp8 group of V for the PV warpgroup: a thread holds keys
# 2 · (lane % 4) + {0, 1, 8, 9} + 16s and dims 32 · warp + 4 · (lane / 4) + {0..3}.
V_LAYOUT = gl.constexpr(gl.DistributedLinearLayout(
    reg_bases=[[0, 1], [0, 2], [1, 0], [8, 0], [16, 0], [32, 0]],
    lane_bases=[[2, 0], [4, 0], [0, 4], [0, 8], [0, 16]],
    warp_bases=[[0, 32], [0, 64]], block_bases=[], shape=[64, 128]))


@gluon.jit
def _f16_from_e4m3(raw):
    """fp8 e4m3 bytes → f16, exact: one ``cvt.rn.f16x2.e4m3x2`` per two bytes (four bytes a
    32-bit word)."""
    return gl.inline_asm_elementwise(
        "{\n\t.reg .b16 lo, hi;\n\tmov.b32 {lo, hi}, $2;\n\t"
        "cvt.rn.f16x2.e4m3x2 $0, lo;\n\tcvt.rn.f16x2.e4m3x2 $1, hi;\n\t}", "=r,=r,r", [raw],
        dtype=gl.float16, is_pure=True, pack=4)


@gluon.jit
def _k_operands(raw, a_layout: gl.constexpr):
    """K_g [64 keys, 128 dims] fp8 bytes in ``K_LAYOUT`` → two f16 A operands [64, 64] (the
    κ halves h = 0, 1 of the group, κ order of the module docstring)."""
    x = gl.reshape(raw, [64, 4, 2, 16])  # key, q, h, v
    lo, hi = gl.split(gl.permute(x, (0, 1, 3, 2)))
    return (_k_half(gl.reshape(lo, [64, 64]), a_layout),
            _k_half(gl.reshape(hi, [64, 64]), a_layout))


@gluon.jit
def _k_half(raw, a_layout: gl.constexpr):
    x = _f16_from_e4m3(raw)  # [64 keys, 64]: dim 16q + 4b + 2j + e
    x = gl.reshape(x, [64, 4, 4, 2, 2])  # key, q, b, j, e
    x = gl.permute(x, (0, 2, 3, 1, 4))  # key, b, j, q, e
    return gl.convert_layout(gl.reshape(x, [64, 64]), a_layout)


@gluon.jit
def _v_operands(raw, a_layout: gl.constexpr):
    """V_g [64 keys, 128 dims] fp8 bytes in ``V_LAYOUT`` → two f16 A operands V_gᵀ
    [128 rows, 32 keys] (keys 0-31 and 32-63; rows in the order of the module docstring)."""
    x = gl.reshape(raw, [2, 32, 128])
    lo, hi = gl.split(gl.permute(x, (1, 2, 0)))
    return _v_half(lo, a_layout), _v_half(hi, a_layout)


@gluon.jit
def _v_half(raw, a_layout: gl.constexpr):
    x = _f16_from_e4m3(raw)  # [32 keys, 128 dims]
    x = gl.permute(x, (1, 0))  # dims, keys
    x = gl.reshape(x, [4, 8, 2, 2, 32])  # w, r, m, i, key
    x = gl.permute(x, (2, 0, 3, 1, 4))  # m, w, i, r, key
    return gl.convert_layout(gl.reshape(x, [128, 32]), a_layout)


@gluon.jit
def _v_dims(rows):
    """The value dim (inside a group) of each Oᵀ_g row index."""
    m = rows // 64
    w = (rows // 16) % 4
    i = (rows // 8) % 2
    r = rows % 8
    return 32 * w + 4 * r + 2 * m + i


@gluon.jit
def _scale_maxima(sc_s, cm_s, k_ready, s, cm_l: gl.constexpr):
    """Once this thread's copies of stage ``s`` have landed (the caller waited for them):
    each group's largest scale over the stage's keys (1 if none is positive) into
    ``cm_s[s]``, then the issuer's last arrival on ``k_ready[s]``."""
    sc4 = sc_s._reinterpret(gl.float32, [cm_s.shape[0], 4, sc_s.shape[1]],
                            gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])).index(s)
    # each thread's cp.async rows (generic proxy) made visible to the RoPE product's wgmma
    # (async proxy), then every issuer thread's copies of the stage have landed
    fence_async_shared()
    gl.thread_barrier()
    c = gl.max(sc4.load(cm_l), axis=1)
    cm_s.index(s).store(gl.where(c > 0.0, c, 1.0))
    mbarrier.arrive(k_ready.index(s), count=1)


@gluon.jit
def _stage_scales(sc_s, s, key_l: gl.constexpr):
    """The four groups' scales of stage ``s``'s keys, each a vector in ``key_l``."""
    return (sc_s.index(4 * s + 0).load(key_l), sc_s.index(4 * s + 1).load(key_l),
            sc_s.index(4 * s + 2).load(key_l), sc_s.index(4 * s + 3).load(key_l))


@gluon.jit
def _raw_issuer(q_desc, qr_desc, q_s, qr_s, raw_s, sc_s, cm_s, rope_s, q_ready, q_free, k_ready,
                k_free, k_ptr, idx_ptr, topk_len_ptr, meta_ptr, s_q, h_q, topk, num_tokens,
                stride_kp, stride_ib, stride_it, D_HALF: gl.constexpr, BLOCK_H: gl.constexpr,
                BLOCK_N: gl.constexpr, PAGE_SIZE: gl.constexpr, OVERHEAD: gl.constexpr,
                META_COLS: gl.constexpr, HAS_TOPK_LEN: gl.constexpr, STAGES: gl.constexpr):
    """Q by TMA; per tile the NoPE bytes, scales and RoPE part by ``cp.async``; a tile later,
    once its copies have landed, each group's largest scale over its keys (so that neither MMA
    warpgroup reduces them)."""
    # a stage's maxima wait for the next stage to be free: one stage would never complete
    gl.static_assert(STAGES >= 2)
    nope_l: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [4, 1], [1, 0])
    sc_l: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])  # a key a thread (64 of 128)
    rope_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    # [4 groups, keys]: a group's 64 keys over every warp's lanes (two a thread), so the
    # maxima need no exchange between warps
    cm_l: gl.constexpr = gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [1, 0], [2, 0]], lane_bases=[[0, 2], [0, 4], [0, 8], [0, 16], [0, 32]],
        warp_bases=[[0, 0], [0, 0]], block_bases=[], shape=[4, BLOCK_N])
    row_l: gl.constexpr = gl.SliceLayout(1, nope_l)
    D_NOPE: gl.constexpr = raw_s.shape[2]
    D_ROPE: gl.constexpr = rope_s.shape[2]

    pid_h = gl.program_id(0)
    tok = gl.program_id(1)
    pid_part = gl.program_id(2)
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    offs = gl.arange(0, BLOCK_N, layout=row_l)
    ncols = gl.expand_dims(gl.arange(0, D_NOPE, layout=gl.SliceLayout(0, nope_l)), 0)
    rcols = gl.expand_dims(gl.arange(0, D_ROPE, layout=gl.SliceLayout(0, rope_l)), 0)
    it = 0
    rq = 0
    r = begin_req
    while r <= end_req:
        length, n_sched, t_lo, t_hi = _request_tiles(topk_len_ptr, r, topk, line_pos, part_lo,
                                                     part_hi, HAS_TOPK_LEN, BLOCK_N, OVERHEAD)
        q_row = (r * s_q + tok) * h_q + pid_h * BLOCK_H
        load_q(q_desc, qr_desc, q_s, qr_s, q_ready, q_free, rq, q_row, D_HALF)
        idx_row = idx_ptr + r.to(gl.int64) * stride_ib + tok * stride_it
        slots = t_lo * BLOCK_N + offs
        idx_next = gl.load(idx_row + slots, mask=slots < length, other=-1)
        t = t_lo
        while t < t_hi:
            s = it % STAGES
            slots = t * BLOCK_N + offs
            idx = idx_next
            idx_next = gl.load(idx_row + slots + BLOCK_N, mask=slots + BLOCK_N < length,
                               other=-1)
            valid, row = _token_rows(idx, slots, length, num_tokens, stride_kp, PAGE_SIZE)
            mbarrier.wait(k_free.index(s), ((it // STAGES) & 1) ^ 1)
            async_copy.async_copy_global_to_shared(
                raw_s.index(s), k_ptr + (gl.expand_dims(row, 1) + ncols),
                mask=gl.expand_dims(valid, 1))
            srow = gl.convert_layout(row, sc_l)
            svalid = gl.convert_layout(valid, sc_l)
            sc_ptr = (k_ptr + (srow + SCALE_OFFSET)).to(gl.pointer_type(gl.float32))
            for g in gl.static_range(4):
                async_copy.async_copy_global_to_shared(sc_s.index(4 * s + g), sc_ptr + g,
                                                       mask=svalid)
            rrow = gl.convert_layout(row, gl.SliceLayout(1, rope_l))
            rvalid = gl.expand_dims(gl.convert_layout(valid, gl.SliceLayout(1, rope_l)), 1)
            r_ptr = (k_ptr + (rrow + ROPE_OFFSET)).to(gl.pointer_type(gl.bfloat16))
            async_copy.async_copy_global_to_shared(
                rope_s.index(s), gl.expand_dims(r_ptr, 1) + rcols, mask=rvalid)
            async_copy.mbarrier_arrive(k_ready.index(s), increment_count=False)
            async_copy.commit_group()
            if t > t_lo:  # the previous tile's copies have landed: its scale maxima
                async_copy.wait_group(1)
                _scale_maxima(sc_s, cm_s, k_ready, (it + STAGES - 1) % STAGES, cm_l)
            it += 1
            t += 1
        if t_hi > t_lo:
            async_copy.wait_group(0)
            _scale_maxima(sc_s, cm_s, k_ready, (it + STAGES - 1) % STAGES, cm_l)
        line_pos += OVERHEAD + n_sched
        rq += 1
        r += 1


@gluon.jit
def _q_operand(q_s, qp_s, head_l: gl.constexpr, BLOCK_H: gl.constexpr):
    """Q's NoPE dims as f16 into ``qp_s`` in the κ order of each group, each head scaled by a
    power of two (its largest |q| into [2^14, 2^15): exact for the normal range); returns the
    per-head factors 2^e that undo it (``head_l``)."""
    q_l: gl.constexpr = gl.BlockedLayout([1, 16], [2, 16], [4, 1], [1, 0])
    q0 = q_s.index(0).load(q_l).to(gl.float32)
    q1 = q_s.index(1).load(q_l).to(gl.float32)
    amax = gl.maximum(gl.max(gl.abs(q0), axis=1), gl.max(gl.abs(q1), axis=1))
    e = ((amax.to(gl.int32, bitcast=True) >> 23) & 0xFF) - 127  # exponent of the largest |q|
    e = gl.minimum(gl.maximum(e, -100), 100)
    down = ((127 + 14 - e) << 23).to(gl.float32, bitcast=True)  # 2^(14 - e)
    up = ((127 - 14 + e) << 23).to(gl.float32, bitcast=True)  # 2^(e - 14)
    _store_q_half(q0, down, qp_s.index(0), BLOCK_H)
    _store_q_half(q1, down, qp_s.index(1), BLOCK_H)
    return gl.convert_layout(up, head_l)


@gluon.jit
def _store_q_half(qh, down, dst, BLOCK_H: gl.constexpr):
    """Two groups of Q's NoPE dims [BLOCK_H, 256], scaled by ``down`` a head, as f16 in the
    κ order into ``dst``."""
    qh = (qh * gl.expand_dims(down, 1)).to(gl.float16)
    qh = gl.reshape(qh, [BLOCK_H, 2, 4, 2, 4, 2, 2])  # head, g, q, h, b, j, e
    qh = gl.permute(qh, (0, 1, 3, 4, 5, 2, 6))
    dst.store(gl.reshape(qh, [BLOCK_H, 2 * GROUP]))


@gluon.jit
def _k_group(raw, qp_s, g: gl.constexpr, zeros_s, k_l: gl.constexpr, a_layout: gl.constexpr):
    """Issue K_g·Q_gᵀ (two wgmma of K = 64, K_g f16 from registers)."""
    a0, a1 = _k_operands(raw.slice(g * GROUP, GROUP, dim=1).load(k_l), a_layout)
    qg = qp_s.index(g // 2).slice((g % 2) * GROUP, GROUP, dim=1)
    sg = warpgroup_mma(a0, qg.slice(0, GROUP // 2, dim=1).permute((1, 0)), zeros_s,
                       is_async=True)
    sg = warpgroup_mma(a1, qg.slice(GROUP // 2, GROUP // 2, dim=1).permute((1, 0)), sg,
                       is_async=True)
    return sg, a0, a1


@gluon.jit
def _nope_scores(raw, qp_s, sr, sc0, sc1, sc2, sc3, zeros_s, k_l: gl.constexpr,
                 a_layout: gl.constexpr):
    """Σ_g scale_g ⊙ K_g·Q_gᵀ [keys, heads] (K_g f16 from registers, Q in ``qp_s``); group
    g + 1 is converted while the products of group g run, group 0 while the RoPE product
    ``sr`` (issued before) runs. Returns the RoPE product too."""
    s0, x0, y0 = _k_group(raw, qp_s, 0, zeros_s, k_l, a_layout)
    s1, x1, y1 = _k_group(raw, qp_s, 1, zeros_s, k_l, a_layout)
    sr, s0, x0, y0 = warpgroup_mma_wait(num_outstanding=1, deps=(sr, s0, x0, y0))
    st = s0 * gl.expand_dims(sc0, 1)
    s2, x2, y2 = _k_group(raw, qp_s, 2, zeros_s, k_l, a_layout)
    s1, x1, y1 = warpgroup_mma_wait(num_outstanding=1, deps=(s1, x1, y1))
    st += s1 * gl.expand_dims(sc1, 1)
    s3, x3, y3 = _k_group(raw, qp_s, 3, zeros_s, k_l, a_layout)
    s2, x2, y2 = warpgroup_mma_wait(num_outstanding=1, deps=(s2, x2, y2))
    st += s2 * gl.expand_dims(sc2, 1)
    s3, x3, y3 = warpgroup_mma_wait(num_outstanding=0, deps=(s3, x3, y3))
    return sr, st + s3 * gl.expand_dims(sc3, 1)


@gluon.jit
def _pick(c, g: gl.constexpr):
    """Element g of the 4-vector ``c`` (a scalar; ``c`` is whole in every thread)."""
    i = gl.arange(0, 4, layout=c.type.layout)
    return gl.sum(gl.where(i == g, c, 0.0), axis=0)


@gluon.jit
def _scaled_p(p, sc, c, p_dst):
    """Pᵀ_g = Pᵀ ⊙ scale_g / c (c: the tile's largest scale of group g) as f16 into ``p_dst``."""
    p_dst.store((p * gl.expand_dims(sc * (1.0 / c), 1)).to(gl.float16))


@gluon.jit
def _raw_softmax(q_s, qr_s, qp_s, raw_s, sc_s, rope_s, pf_s, a_s, q_ready, q_free, k_ready,
                 k_free, p_ready, p_free, idx_ptr, topk_len_ptr, sink_ptr, meta_ptr,
                 num_splits_ptr, lse_ptr, lse_acc_ptr, scale_log2, h_q, topk, num_tokens,
                 stride_kp, stride_ib, stride_it, stride_lb, stride_lt, stride_lh,
                 stride_la_piece, stride_la_t, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                 PAGE_SIZE: gl.constexpr, OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                 HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr, STAGES: gl.constexpr):
    """Scores (f16 NoPE products, bf16 RoPE product), the online softmax over the keys, Pᵀ
    (float32) and the rescale factors to the PV warpgroup; lse and the final factors at the
    end. The row sums stay per thread (a thread's keys) until the request's end."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_H, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
    key_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    head_sl: gl.constexpr = gl.SliceLayout(0, s_layout)
    k_l: gl.constexpr = K_LAYOUT

    pid_h = gl.program_id(0)
    tok = gl.program_id(1)
    pid_part = gl.program_id(2)
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    head_s = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=head_sl)
    mask_s = head_s < h_q
    sink2 = gl.zeros([BLOCK_H], gl.float32, layout=head_sl)
    if HAS_SINK:
        sink2 = gl.load(sink_ptr + head_s, mask=mask_s, other=float("-inf")) * LOG2E
    offs_n = gl.arange(0, BLOCK_N, layout=key_s)
    zeros_s = gl.zeros([BLOCK_N, BLOCK_H], gl.float32, layout=s_layout)

    it = 0
    msg = 0
    rq = 0
    r = begin_req
    while r <= end_req:
        length, n_sched, t_lo, t_hi = _request_tiles(topk_len_ptr, r, topk, line_pos, part_lo,
                                                     part_hi, HAS_TOPK_LEN, BLOCK_N, OVERHEAD)
        idx_row = idx_ptr + r.to(gl.int64) * stride_ib + tok * stride_it
        # a tile's indices are read a tile ahead (their latency hides behind this tile's work)
        slots = t_lo * BLOCK_N + offs_n
        idx_next = gl.load(idx_row + slots, mask=slots < length, other=-1)
        mbarrier.wait(q_ready, rq & 1)
        q_up = _q_operand(q_s, qp_s, head_sl, BLOCK_H) * scale_log2
        fence_async_shared()
        m_i = gl.full([BLOCK_H], MAX_SENTINEL, gl.float32, layout=head_sl)
        l_part = gl.zeros([BLOCK_N, BLOCK_H], gl.float32, layout=s_layout)
        t = t_lo
        while t < t_hi:
            s = it % STAGES
            slots = t * BLOCK_N + offs_n
            idx = idx_next
            idx_next = gl.load(idx_row + slots + BLOCK_N, mask=slots + BLOCK_N < length,
                               other=-1)
            valid, row = _token_rows(idx, slots, length, num_tokens, stride_kp, PAGE_SIZE)
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            # the issuer fenced the stage's cp.async rows before its last arrival (a fence here,
            # on this chain, cost H200 h_q=16 67.9 -> 71.1 µs)
            sr = warpgroup_mma(rope_s.index(s), qr_s.permute((1, 0)), zeros_s, is_async=True)
            sc0, sc1, sc2, sc3 = _stage_scales(sc_s, s, key_s)
            sr, sn = _nope_scores(raw_s.index(s), qp_s, sr, sc0, sc1, sc2, sc3, zeros_s, k_l,
                                  a_layout)
            mbarrier.arrive(k_free.index(s), count=1)
            st = sr * scale_log2 + sn * gl.expand_dims(q_up, 0)
            st = gl.where(gl.expand_dims(valid, 1), st, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(st, axis=0))
            p = gl.exp2(st - gl.expand_dims(m_new, 0))
            alpha = gl.exp2(m_i - m_new)
            l_part = l_part * gl.expand_dims(alpha, 0) + p
            m_i = m_new
            # hand Pᵀ and α to the PV warpgroup (plain loads there: no async-proxy fence)
            mbarrier.wait(p_free, (msg & 1) ^ 1)
            pf_s.store(p)
            a_s.index(0).store(alpha)
            mbarrier.arrive(p_ready, count=1)
            msg += 1
            it += 1
            t += 1
        mbarrier.arrive(q_free, count=1)
        l_i = gl.sum(l_part, axis=0)
        whole, split, piece = _pieces(num_splits_ptr, r, line_pos, n_sched, payload, pid_part,
                                      OVERHEAD)
        has_keys, lse2, fin = _request_factors(l_i, m_i, whole, sink2, HAS_SINK)
        # the final message: the factor of each output row
        mbarrier.wait(p_free, (msg & 1) ^ 1)
        a_s.index(0).store(fin)
        mbarrier.arrive(p_ready, count=1)
        msg += 1
        _store_lse(has_keys, lse2, r, tok, head_s, mask_s, whole, split, piece, lse_ptr,
                   lse_acc_ptr, stride_lb, stride_lt, stride_lh, stride_la_piece, stride_la_t)
        line_pos += OVERHEAD + n_sched
        rq += 1
        r += 1


@gluon.jit
def _value_group(raw, p, acc, v_l: gl.constexpr, a_layout: gl.constexpr):
    """Oᵀ_g += V_gᵀ·Pᵀ_g (V_gᵀ f16 from registers, in two halves of 32 keys), issued."""
    a0, a1 = _v_operands(raw.load(v_l), a_layout)
    acc = warpgroup_mma(a0, p.slice(0, 32, dim=0), acc, is_async=True)
    acc = warpgroup_mma(a1, p.slice(32, 32, dim=0), acc, is_async=True)
    return acc, a0, a1


@gluon.jit
def _raw_pv(raw_s, sc_s, cm_s, pf_s, p0_s, p1_s, p2_s, p3_s, a_s, k_ready, k_free, p_ready,
            p_free, topk_len_ptr, meta_ptr, num_splits_ptr, out_ptr, o_acc_ptr, h_q, topk,
            stride_ob, stride_ot, stride_oh, stride_oa_piece, stride_oa_t, stride_oa_h,
            BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, OVERHEAD: gl.constexpr,
            META_COLS: gl.constexpr, HAS_TOPK_LEN: gl.constexpr, STAGES: gl.constexpr):
    """Pᵀ_g = Pᵀ ⊙ scale_g / c_g (c_g the tile's largest scale of group g) into shared memory,
    then Oᵀ_g = Oᵀ_g · α · c_g,prev / c_g + V_gᵀ·Pᵀ_g for the four value groups (Oᵀ_g in units
    of the current tile's c_g); at the end × fin × c_g into the output."""
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_H, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    head_ol: gl.constexpr = gl.SliceLayout(0, o_layout)
    d_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    # Pᵀ [keys, heads] as the softmax warpgroup holds it (o_layout's shape), its keys' scales
    key_s: gl.constexpr = d_o
    # the four group maxima in every thread's registers
    c4_l: gl.constexpr = gl.BlockedLayout([4], [32], [4], [0])
    v_l: gl.constexpr = V_LAYOUT
    pid_h = gl.program_id(0)
    tok = gl.program_id(1)
    pid_part = gl.program_id(2)
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    head_o = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=head_ol)
    mask_o = head_o < h_q
    dims = _v_dims(gl.arange(0, GROUP, layout=d_o))
    it = 0
    msg = 0
    r = begin_req
    while r <= end_req:
        length, n_sched, t_lo, t_hi = _request_tiles(topk_len_ptr, r, topk, line_pos, part_lo,
                                                     part_hi, HAS_TOPK_LEN, BLOCK_N, OVERHEAD)
        acc0 = gl.zeros([GROUP, BLOCK_H], gl.float32, layout=o_layout)
        acc1 = gl.zeros([GROUP, BLOCK_H], gl.float32, layout=o_layout)
        acc2 = gl.zeros([GROUP, BLOCK_H], gl.float32, layout=o_layout)
        acc3 = gl.zeros([GROUP, BLOCK_H], gl.float32, layout=o_layout)
        c0 = 1.0
        c1 = 1.0
        c2 = 1.0
        c3 = 1.0
        t = t_lo
        while t < t_hi:
            s = it % STAGES
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            raw = raw_s.index(s)
            # the group maxima (from the issuer) and the keys' scales, while Pᵀ is being made
            c4 = cm_s.index(s).load(c4_l)
            n0 = _pick(c4, 0)
            n1 = _pick(c4, 1)
            n2 = _pick(c4, 2)
            n3 = _pick(c4, 3)
            sc0, sc1, sc2, sc3 = _stage_scales(sc_s, s, key_s)
            mbarrier.wait(p_ready, msg & 1)
            p = pf_s.load(o_layout)
            alpha = a_s.index(0).load(head_ol)
            _scaled_p(p, sc0, n0, p0_s)
            _scaled_p(p, sc1, n1, p1_s)
            _scaled_p(p, sc2, n2, p2_s)
            _scaled_p(p, sc3, n3, p3_s)
            fence_async_shared()
            # Pᵀ and α are in registers: the softmax warpgroup may write the next ones
            mbarrier.arrive(p_free, count=1)
            acc0 = acc0 * gl.expand_dims(alpha * (c0 / n0), 0)
            acc1 = acc1 * gl.expand_dims(alpha * (c1 / n1), 0)
            acc2 = acc2 * gl.expand_dims(alpha * (c2 / n2), 0)
            acc3 = acc3 * gl.expand_dims(alpha * (c3 / n3), 0)
            c0 = n0
            c1 = n1
            c2 = n2
            c3 = n3
            acc0, x0, y0 = _value_group(raw.slice(0, GROUP, dim=1), p0_s, acc0, v_l,
                                        a_layout)
            acc1, x1, y1 = _value_group(raw.slice(GROUP, GROUP, dim=1), p1_s, acc1, v_l,
                                        a_layout)
            acc0, x0, y0 = warpgroup_mma_wait(num_outstanding=1, deps=(acc0, x0, y0))
            acc2, x2, y2 = _value_group(raw.slice(2 * GROUP, GROUP, dim=1), p2_s, acc2,
                                        v_l, a_layout)
            acc1, x1, y1 = warpgroup_mma_wait(num_outstanding=1, deps=(acc1, x1, y1))
            acc3, x3, y3 = _value_group(raw.slice(3 * GROUP, GROUP, dim=1), p3_s, acc3,
                                        v_l, a_layout)
            acc2, acc3, x2, y2, x3, y3 = warpgroup_mma_wait(
                num_outstanding=0, deps=(acc2, acc3, x2, y2, x3, y3))
            mbarrier.arrive(k_free.index(s), count=1)
            msg += 1
            it += 1
            t += 1
        mbarrier.wait(p_ready, msg & 1)
        fin = a_s.index(0).load(head_ol)
        mbarrier.arrive(p_free, count=1)
        msg += 1
        whole, split, piece = _pieces(num_splits_ptr, r, line_pos, n_sched, payload, pid_part,
                                      OVERHEAD)
        _store_half(acc0, fin * c0, r, tok, head_o, mask_o, dims, whole, split, piece, out_ptr,
                    o_acc_ptr, stride_ob, stride_ot, stride_oh, stride_oa_piece, stride_oa_t,
                    stride_oa_h, ROW_AXIS=1)
        _store_half(acc1, fin * c1, r, tok, head_o, mask_o, dims + GROUP, whole, split, piece,
                    out_ptr, o_acc_ptr, stride_ob, stride_ot, stride_oh, stride_oa_piece,
                    stride_oa_t, stride_oa_h, ROW_AXIS=1)
        _store_half(acc2, fin * c2, r, tok, head_o, mask_o, dims + 2 * GROUP, whole, split,
                    piece, out_ptr, o_acc_ptr, stride_ob, stride_ot, stride_oh,
                    stride_oa_piece, stride_oa_t, stride_oa_h, ROW_AXIS=1)
        _store_half(acc3, fin * c3, r, tok, head_o, mask_o, dims + 3 * GROUP, whole, split,
                    piece, out_ptr, o_acc_ptr, stride_ob, stride_ot, stride_oh,
                    stride_oa_piece, stride_oa_t, stride_oa_h, ROW_AXIS=1)
        line_pos += OVERHEAD + n_sched
        r += 1


@gluon.jit
def _sparse_decode_raw_kernel(
    q_desc, qr_desc, k_ptr, idx_ptr, topk_len_ptr, sink_ptr, meta_ptr, num_splits_ptr,
    out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
    scale_log2, s_q, h_q, topk, num_tokens,
    stride_kp, stride_ib, stride_it, stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lt, stride_lh, stride_oa_piece, stride_oa_t, stride_oa_h,
    stride_la_piece, stride_la_t,
    PAGE_SIZE: gl.constexpr, D_HALF: gl.constexpr, D_ROPE: gl.constexpr,
    BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, OVERHEAD: gl.constexpr,
    META_COLS: gl.constexpr, HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
    STAGES: gl.constexpr, PV_REGS: gl.constexpr, ISSUER_REGS: gl.constexpr,
):
    dtype: gl.constexpr = gl.bfloat16
    # 16-byte pieces of a row XOR-swizzled by the row's index mod 8 (conflict-free loads)
    raw_layout: gl.constexpr = gl.SwizzledSharedLayout(16, 1, 8, order=[1, 0])
    flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
    rope_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D_ROPE], dtype)
    qp_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, D_HALF],
                                                                   gl.float16)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_H],
                                                                  gl.float16)
    pf_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_H],
                                                                   gl.float32)
    q_s = gl.allocate_shared_memory(dtype, [2, BLOCK_H, D_HALF], q_desc.layout)
    qr_s = gl.allocate_shared_memory(dtype, [BLOCK_H, D_ROPE], qr_desc.layout)
    qp_s = gl.allocate_shared_memory(gl.float16, [2, BLOCK_H, D_HALF], qp_layout)
    raw_s = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, 2 * D_HALF], raw_layout)
    # scales transposed (stage, group, key) and each group's largest over the tile
    sc_s = gl.allocate_shared_memory(gl.float32, [4 * STAGES, BLOCK_N], flat)
    cm_s = gl.allocate_shared_memory(gl.float32, [STAGES, 4], flat)
    rope_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_ROPE], rope_layout)
    # Pᵀ from the softmax warpgroup (float32), Pᵀ_g made from it by the PV warpgroup (f16)
    pf_s = gl.allocate_shared_memory(gl.float32, [BLOCK_N, BLOCK_H], pf_layout)
    # one buffer a group: stores to distinct buffers need no barrier between them
    p0_s = gl.allocate_shared_memory(gl.float16, [BLOCK_N, BLOCK_H], p_layout)
    p1_s = gl.allocate_shared_memory(gl.float16, [BLOCK_N, BLOCK_H], p_layout)
    p2_s = gl.allocate_shared_memory(gl.float16, [BLOCK_N, BLOCK_H], p_layout)
    p3_s = gl.allocate_shared_memory(gl.float16, [BLOCK_N, BLOCK_H], p_layout)
    # α (the final factor at a request's end)
    a_s = gl.allocate_shared_memory(gl.float32, [1, BLOCK_H], flat)
    # the issuer's cp.async (128 threads) and its scale stores (one arrival) land a stage;
    # both MMA warpgroups free it
    q_ready, q_free, p_ready, p_free, k_ready, k_free = handoff_barriers(STAGES, 1, 129)
    fence_async_shared()

    gl.warp_specialize([
        (_raw_softmax, (q_s, qr_s, qp_s, raw_s, sc_s, rope_s, pf_s, a_s, q_ready, q_free,
                        k_ready, k_free, p_ready, p_free, idx_ptr, topk_len_ptr, sink_ptr,
                        meta_ptr, num_splits_ptr, lse_ptr, lse_acc_ptr, scale_log2, h_q, topk,
                        num_tokens, stride_kp, stride_ib, stride_it, stride_lb, stride_lt,
                        stride_lh, stride_la_piece, stride_la_t, BLOCK_H, BLOCK_N, PAGE_SIZE,
                        OVERHEAD, META_COLS, HAS_TOPK_LEN, HAS_SINK, STAGES)),
        (_raw_pv, (raw_s, sc_s, cm_s, pf_s, p0_s, p1_s, p2_s, p3_s, a_s, k_ready, k_free,
                   p_ready, p_free, topk_len_ptr, meta_ptr, num_splits_ptr, out_ptr, o_acc_ptr,
                   h_q, topk, stride_ob, stride_ot, stride_oh, stride_oa_piece, stride_oa_t,
                   stride_oa_h, BLOCK_H, BLOCK_N, OVERHEAD, META_COLS, HAS_TOPK_LEN, STAGES)),
        (_raw_issuer, (q_desc, qr_desc, q_s, qr_s, raw_s, sc_s, cm_s, rope_s, q_ready, q_free,
                       k_ready, k_free, k_ptr, idx_ptr, topk_len_ptr, meta_ptr, s_q, h_q, topk,
                       num_tokens, stride_kp, stride_ib, stride_it, D_HALF, BLOCK_H, BLOCK_N,
                       PAGE_SIZE, OVERHEAD, META_COLS, HAS_TOPK_LEN, STAGES)),
    ], [4, 4], [PV_REGS, ISSUER_REGS])
