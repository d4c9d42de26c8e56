"""Portable Triton kernels of dense MHA varlen prefill, forward and backward (SPEC §2.5, §6.4).

FlashAttention-2 structure. Forward: a program owns BLOCK_M query rows of one head and walks
the keys in BLOCK_N steps with an online softmax in base 2 (exp2, log2(e) folded into the
scale), then writes out and the natural-log lse. Backward: a preprocess kernel writes
D = rowsum(dO∘O) and the base-2 lse per row; the dK/dV kernel owns BLOCK_N keys of one KV head
and walks the query rows of every query head of its GQA group, accumulating dV = Pᵀ·dO and
dK = scale·dSᵀ·Q in registers (no atomics: dK and dV are bitwise reproducible). dQ either comes
from the same step (DQ_MODE 1 / 2: scale·dS·K added into an fp32 accumulator by atomics or TMA
reduce-adds; not reproducible bit for bit, which SPEC §2.5 allows) or from its own kernel that
recomputes P and dS per key block (DQ_MODE 0).

Masking is bottom-right causal: local query i sees key j iff j < Sk and j <= i + Sk - Sq.
Key (query) blocks that every row of the program sees in full run without the score mask;
only the blocks on the diagonal and a ragged last block pay for it. Rows that see no key get
out 0 and lse -inf, and zero gradients.

Varlen without host sync or max_seqlen: each kernel's flat grid enumerates "virtual blocks";
sequence n owns blocks [cu[n] // BLOCK + n, cu[n+1] // BLOCK + n + 1), which is at least
cdiv(len_n, BLOCK) of them, so total // BLOCK + b blocks cover every sequence (at most one idle
program per sequence). A program finds its sequence by binary search over cu_seqlens.

The Q·Kᵀ head dim is two power-of-two tiles, DA + DB (192 = 128 + 64; DB = 0 for 128); the
value head dim is one tile of DV columns. Columns past the real dims are masked.
"""
import triton
import triton.language as tl

from .._triton_utils import round_to_bf16_grid

LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)
MAX_SENTINEL = tl.constexpr(-1.0e30)  # running-max start: finite, so exp2(m_old - m_new) never sees -inf - -inf


@triton.jit
def _find_seq(cu_ptr, blk, n_seqs, BLOCK: tl.constexpr):
    """The sequence n owning virtual block ``blk``: the largest n < n_seqs with
    ``cu[n] // BLOCK + n <= blk`` (those starts strictly increase with n)."""
    lo = tl.full([], 0, tl.int32)
    hi = tl.full([], 0, tl.int32) + n_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        start = tl.load(cu_ptr + mid) // BLOCK + mid
        lo = tl.where(start <= blk, mid, lo)
        hi = tl.where(start <= blk, hi, mid - 1)
    return lo


@triton.jit
def _load_rows(base, rows, stride_row, offs_d, row_mask,
               D: tl.constexpr,  # real width of the head dim
               D_END: tl.constexpr,  # one past the last column of this tile
               MASK_ROWS: tl.constexpr, UPCAST: tl.constexpr):
    """Tile ``[len(rows), len(offs_d)]`` of rows ``rows`` (int64) at ``base``; masked rows and
    columns past D read 0."""
    ptrs = base + rows[:, None] * stride_row + offs_d[None, :]
    if D_END > D:
        if MASK_ROWS:
            x = tl.load(ptrs, mask=row_mask[:, None] & (offs_d[None, :] < D), other=0.0)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < D, other=0.0)
    else:
        if MASK_ROWS:
            x = tl.load(ptrs, mask=row_mask[:, None], other=0.0)
        else:
            x = tl.load(ptrs)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_rows(base, rows, stride_row, offs_d, row_mask, x, D: tl.constexpr,
                D_END: tl.constexpr, ROUND: tl.constexpr):
    if ROUND:
        x = round_to_bf16_grid(x)
    ptrs = base + rows[:, None] * stride_row + offs_d[None, :]
    if D_END > D:
        tl.store(ptrs, x.to(base.dtype.element_ty), mask=row_mask[:, None] & (offs_d[None, :] < D))
    else:
        tl.store(ptrs, x.to(base.dtype.element_ty), mask=row_mask[:, None])


@triton.jit
def _fwd_key_loop(acc, l_i, m_i, q_a, q_b, k_base, v_base, k_start, stride_kt, stride_vt,
                  lo, hi, offs_m, s_k, diag, scale_log2,
                  D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DA: tl.constexpr,
                  BLOCK_DB: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
                  CAUSAL: tl.constexpr, MASK: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """Keys [lo, hi) in BLOCK_N steps into the online softmax; MASK: apply key bounds and the
    causal mask (else every key of every step is visible to every row)."""
    offs_da = tl.arange(0, BLOCK_DA)
    offs_dv = tl.arange(0, BLOCK_DV)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N] local key index
        mask_n = offs_n < s_k
        rows_k = (k_start + offs_n).to(tl.int64)  # [BLOCK_N]
        k_a = _load_rows(k_base, rows_k, stride_kt, offs_da, mask_n, D_QK, BLOCK_DA, MASK,
                         UPCAST_DOT)  # [BLOCK_N, BLOCK_DA]
        s = tl.dot(q_a, tl.trans(k_a))  # [BLOCK_M, BLOCK_N]
        if BLOCK_DB > 0:
            offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
            k_b = _load_rows(k_base, rows_k, stride_kt, offs_db, mask_n, D_QK,
                             BLOCK_DA + BLOCK_DB, MASK, UPCAST_DOT)  # [BLOCK_N, BLOCK_DB]
            s = tl.dot(q_b, tl.trans(k_b), s)
        v = _load_rows(v_base, rows_k, stride_vt, offs_dv, mask_n, D_V, BLOCK_DV, MASK,
                       UPCAST_DOT)  # [BLOCK_N, BLOCK_DV]
        if MASK:
            valid = mask_n[None, :]  # [1, BLOCK_N]
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None] + diag)  # [BLOCK_M, BLOCK_N]
            s = tl.where(valid, s * scale_log2, float("-inf"))
        else:
            s = s * scale_log2
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [BLOCK_M]
        p = tl.exp2(s - m_new[:, None])  # [BLOCK_M, BLOCK_N]; 0 at masked pairs
        alpha = tl.exp2(m_i - m_new)  # [BLOCK_M]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])  # [BLOCK_M, BLOCK_DV]
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _mha_fwd_kernel(
    q_ptr, k_ptr, v_ptr, cu_q_ptr, cu_k_ptr,
    out_ptr, lse_ptr,
    scale_log2,  # softmax_scale * log2(e)
    n_seqs, n_vblocks, group,  # group = h_q // h_kv
    stride_qt, stride_qh,  # q [total_q, h_q, D_QK], last dim contiguous
    stride_kt, stride_kh,  # k [total_k, h_kv, D_QK]
    stride_vt, stride_vh,  # v [total_k, h_kv, D_V]
    stride_ot, stride_oh,  # out [total_q, h_q, D_V]
    stride_lt, stride_lh,  # lse [total_q, h_q] (a view of a [h_q, total_q] buffer)
    D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # fp32 dots (the interpreter's bf16 tl.dot is wrong)
    ROUND_OUT: tl.constexpr,  # round to bf16 by hand (interpreter casts truncate)
):
    # one flat axis (head-major, blocks reversed so the long causal blocks of a sequence start
    # first): n_vblocks * h_q programs, far past the 65535 of axes 1 and 2
    pid = tl.program_id(0)
    head = pid // n_vblocks
    blk = n_vblocks - 1 - pid % n_vblocks
    seq = _find_seq(cu_q_ptr, blk, n_seqs, BLOCK_M)
    q_start = tl.load(cu_q_ptr + seq)
    s_q = tl.load(cu_q_ptr + seq + 1) - q_start
    m0 = (blk - q_start // BLOCK_M - seq) * BLOCK_M  # first local row of this program
    if m0 < s_q:
        k_start = tl.load(cu_k_ptr + seq)
        s_k = tl.load(cu_k_ptr + seq + 1) - k_start
        diag = s_k - s_q  # row i sees keys j <= i + diag
        kv_head = head // group

        offs_m = m0 + tl.arange(0, BLOCK_M)  # [BLOCK_M] local rows
        mask_m = offs_m < s_q
        rows_q = (q_start + offs_m).to(tl.int64)  # 64-bit: row * stride passes 2^31
        offs_da = tl.arange(0, BLOCK_DA)
        offs_dv = tl.arange(0, BLOCK_DV)
        q_base = q_ptr + head * stride_qh
        q_a = _load_rows(q_base, rows_q, stride_qt, offs_da, mask_m, D_QK, BLOCK_DA, True,
                         UPCAST_DOT)  # [BLOCK_M, BLOCK_DA]
        if BLOCK_DB > 0:
            offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
            q_b = _load_rows(q_base, rows_q, stride_qt, offs_db, mask_m, D_QK,
                             BLOCK_DA + BLOCK_DB, True, UPCAST_DOT)  # [BLOCK_M, BLOCK_DB]
        else:
            q_b = q_a  # placeholder, never read

        if CAUSAL:
            n_end = tl.minimum(s_k, tl.maximum(m0 + BLOCK_M + diag, 0))
            n_full = tl.minimum(s_k, tl.maximum(m0 + diag + 1, 0)) // BLOCK_N * BLOCK_N
        else:
            n_end = s_k
            n_full = s_k // BLOCK_N * BLOCK_N

        m_i = tl.full([BLOCK_M], MAX_SENTINEL, tl.float32)  # running max, base-2 units
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)  # unnormalised P·V
        k_base = k_ptr + kv_head * stride_kh
        v_base = v_ptr + kv_head * stride_vh
        acc, l_i, m_i = _fwd_key_loop(acc, l_i, m_i, q_a, q_b, k_base, v_base, k_start,
                                      stride_kt, stride_vt, 0, n_full, offs_m, s_k, diag,
                                      scale_log2, D_QK, D_V, BLOCK_DA, BLOCK_DB, BLOCK_DV,
                                      BLOCK_N, CAUSAL, False, UPCAST_DOT)
        acc, l_i, m_i = _fwd_key_loop(acc, l_i, m_i, q_a, q_b, k_base, v_base, k_start,
                                      stride_kt, stride_vt, n_full, n_end, offs_m, s_k, diag,
                                      scale_log2, D_QK, D_V, BLOCK_DA, BLOCK_DB, BLOCK_DV,
                                      BLOCK_N, CAUSAL, True, UPCAST_DOT)

        has_keys = l_i > 0.0  # [BLOCK_M] rows that saw at least one key
        safe_l = tl.where(has_keys, l_i, 1.0)
        o = acc / safe_l[:, None]  # [BLOCK_M, BLOCK_DV]; lonely rows: acc 0, so o 0
        _store_rows(out_ptr + head * stride_oh, rows_q, stride_ot, offs_dv, mask_m, o, D_V,
                    BLOCK_DV, ROUND_OUT)
        lse = tl.where(has_keys, (m_i + tl.log2(safe_l)) * LN2, float("-inf"))  # natural log
        tl.store(lse_ptr + head * stride_lh + rows_q * stride_lt, lse, mask=mask_m)


@triton.jit
def _mha_bwd_preprocess_kernel(
    out_ptr, dout_ptr, lse_ptr, delta_ptr, lse2_ptr,
    total_q,
    stride_ot, stride_oh,  # out [total_q, h_q, D_V]
    stride_dot, stride_doh,  # dout [total_q, h_q, D_V]
    stride_lt, stride_lh,  # lse [total_q, h_q]
    D_V: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Per query row and head, once: D = rowsum(dO∘O) and the base-2 lse (a row without keys,
    lse -inf, gets +inf so that its P is exactly 0), both into [h_q, total_q] buffers. The rows
    are flat (no sequence lookup): every row of every sequence is one independent row here."""
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    mask = rows < total_q
    rows64 = rows.to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV)
    o = _load_rows(out_ptr + head * stride_oh, rows64, stride_ot, offs_dv, mask, D_V, BLOCK_DV,
                   True, True)  # [BLOCK_M, BLOCK_DV] fp32
    do = _load_rows(dout_ptr + head * stride_doh, rows64, stride_dot, offs_dv, mask, D_V,
                    BLOCK_DV, True, True)
    delta = tl.sum(o * do, axis=1)  # [BLOCK_M]
    lse = tl.load(lse_ptr + head * stride_lh + rows64 * stride_lt, mask=mask, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    dst = head.to(tl.int64) * total_q + rows64
    tl.store(delta_ptr + dst, delta, mask=mask)
    tl.store(lse2_ptr + dst, lse2, mask=mask)


@triton.jit
def _dq_key_loop(dq_a, dq_b, q_a, q_b, do, lse2, delta, k_base, v_base, k_start, stride_kt,
                 stride_vt, lo, hi, offs_m, s_k, diag, scale_log2,
                 D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DA: tl.constexpr,
                 BLOCK_DB: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, MASK: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """dQ (unscaled) over keys [lo, hi): P from the saved lse, dS = P∘(dO·Vᵀ - D)."""
    offs_da = tl.arange(0, BLOCK_DA)
    offs_dv = tl.arange(0, BLOCK_DV)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        mask_n = offs_n < s_k
        rows_k = (k_start + offs_n).to(tl.int64)
        k_a = _load_rows(k_base, rows_k, stride_kt, offs_da, mask_n, D_QK, BLOCK_DA, MASK,
                         UPCAST_DOT)  # [BLOCK_N, BLOCK_DA]
        s = tl.dot(q_a, tl.trans(k_a))  # [BLOCK_M, BLOCK_N]
        if BLOCK_DB > 0:
            offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
            k_b = _load_rows(k_base, rows_k, stride_kt, offs_db, mask_n, D_QK,
                             BLOCK_DA + BLOCK_DB, MASK, UPCAST_DOT)  # [BLOCK_N, BLOCK_DB]
            s = tl.dot(q_b, tl.trans(k_b), s)
        v = _load_rows(v_base, rows_k, stride_vt, offs_dv, mask_n, D_V, BLOCK_DV, MASK,
                       UPCAST_DOT)  # [BLOCK_N, BLOCK_DV]
        p = tl.exp2(s * scale_log2 - lse2[:, None])  # [BLOCK_M, BLOCK_N]
        if MASK:
            valid = mask_n[None, :]
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None] + diag)
            p = tl.where(valid, p, 0.0)
        dp = tl.dot(do, tl.trans(v))  # [BLOCK_M, BLOCK_N]
        ds = (p * (dp - delta[:, None])).to(k_a.dtype)  # [BLOCK_M, BLOCK_N]
        dq_a = tl.dot(ds, k_a, dq_a)  # [BLOCK_M, BLOCK_DA]
        if BLOCK_DB > 0:
            dq_b = tl.dot(ds, k_b, dq_b)  # [BLOCK_M, BLOCK_DB]
    return dq_a, dq_b


@triton.jit
def _mha_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse2_ptr, delta_ptr, cu_q_ptr, cu_k_ptr,
    dq_ptr,
    softmax_scale, scale_log2,
    n_seqs, n_vblocks, group, total_q,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh,  # dout [total_q, h_q, D_V]
    stride_dqt, stride_dqh,  # dq [total_q, h_q, D_QK]
    D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr, ROUND_OUT: tl.constexpr,
):
    # split backward only: grid and masking as the forward (one program: BLOCK_M rows of one
    # query head); lse2 and D [h_q, total_q] come from the preprocess kernel
    pid = tl.program_id(0)
    head = pid // n_vblocks
    blk = n_vblocks - 1 - pid % n_vblocks
    seq = _find_seq(cu_q_ptr, blk, n_seqs, BLOCK_M)
    q_start = tl.load(cu_q_ptr + seq)
    s_q = tl.load(cu_q_ptr + seq + 1) - q_start
    m0 = (blk - q_start // BLOCK_M - seq) * BLOCK_M
    if m0 < s_q:
        k_start = tl.load(cu_k_ptr + seq)
        s_k = tl.load(cu_k_ptr + seq + 1) - k_start
        diag = s_k - s_q
        kv_head = head // group

        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < s_q
        rows_q = (q_start + offs_m).to(tl.int64)
        offs_da = tl.arange(0, BLOCK_DA)
        offs_dv = tl.arange(0, BLOCK_DV)
        q_base = q_ptr + head * stride_qh
        q_a = _load_rows(q_base, rows_q, stride_qt, offs_da, mask_m, D_QK, BLOCK_DA, True,
                         UPCAST_DOT)  # [BLOCK_M, BLOCK_DA]
        if BLOCK_DB > 0:
            offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
            q_b = _load_rows(q_base, rows_q, stride_qt, offs_db, mask_m, D_QK,
                             BLOCK_DA + BLOCK_DB, True, UPCAST_DOT)  # [BLOCK_M, BLOCK_DB]
        else:
            q_b = q_a  # placeholder, never read
        do = _load_rows(dout_ptr + head * stride_doh, rows_q, stride_dot, offs_dv, mask_m, D_V,
                        BLOCK_DV, True, UPCAST_DOT)  # [BLOCK_M, BLOCK_DV]
        row_h = head.to(tl.int64) * total_q + rows_q
        delta = tl.load(delta_ptr + row_h, mask=mask_m, other=0.0)  # [BLOCK_M]
        lse2 = tl.load(lse2_ptr + row_h, mask=mask_m, other=float("inf"))  # [BLOCK_M]

        if CAUSAL:
            n_end = tl.minimum(s_k, tl.maximum(m0 + BLOCK_M + diag, 0))
            n_full = tl.minimum(s_k, tl.maximum(m0 + diag + 1, 0)) // BLOCK_N * BLOCK_N
        else:
            n_end = s_k
            n_full = s_k // BLOCK_N * BLOCK_N
        dq_a = tl.zeros([BLOCK_M, BLOCK_DA], dtype=tl.float32)
        if BLOCK_DB > 0:
            dq_b = tl.zeros([BLOCK_M, BLOCK_DB], dtype=tl.float32)
        else:
            dq_b = dq_a  # placeholder, never updated
        k_base = k_ptr + kv_head * stride_kh
        v_base = v_ptr + kv_head * stride_vh
        dq_a, dq_b = _dq_key_loop(dq_a, dq_b, q_a, q_b, do, lse2, delta, k_base, v_base,
                                  k_start, stride_kt, stride_vt, 0, n_full, offs_m, s_k, diag,
                                  scale_log2, D_QK, D_V, BLOCK_DA, BLOCK_DB, BLOCK_DV, BLOCK_N,
                                  CAUSAL, False, UPCAST_DOT)
        dq_a, dq_b = _dq_key_loop(dq_a, dq_b, q_a, q_b, do, lse2, delta, k_base, v_base,
                                  k_start, stride_kt, stride_vt, n_full, n_end, offs_m, s_k,
                                  diag, scale_log2, D_QK, D_V, BLOCK_DA, BLOCK_DB, BLOCK_DV,
                                  BLOCK_N, CAUSAL, True, UPCAST_DOT)
        dq_base = dq_ptr + head * stride_dqh
        _store_rows(dq_base, rows_q, stride_dqt, offs_da, mask_m, dq_a * softmax_scale, D_QK,
                    BLOCK_DA, ROUND_OUT)
        if BLOCK_DB > 0:
            _store_rows(dq_base, rows_q, stride_dqt, offs_db, mask_m, dq_b * softmax_scale,
                        D_QK, BLOCK_DA + BLOCK_DB, ROUND_OUT)


@triton.jit
def _dq_atomic_add(dq_base, dq_desc, rows_q, row0, col0, stride_dqt, offs_d, mask_m, x,
                   D: tl.constexpr, D_END: tl.constexpr, DQ_MODE: tl.constexpr):
    """Add the fp32 tile ``x [BLOCK_M, len(offs_d)]`` into the dQ accumulator: DQ_MODE 2 by one
    TMA reduce (rows past the sequence receive exact zeros, rows past the tensor are dropped),
    DQ_MODE 1 by relaxed per-element atomics on the masked rows / columns."""
    if DQ_MODE == 2:
        dq_desc.atomic_add([row0, col0], x)
    else:
        ptrs = dq_base + rows_q[:, None] * stride_dqt + offs_d[None, :]
        if D_END > D:
            mask = mask_m[:, None] & (offs_d[None, :] < D)
        else:
            mask = mask_m[:, None]
        tl.atomic_add(ptrs, x, mask=mask, sem="relaxed")


@triton.jit
def _dkdv_query_loop(dk_a, dk_b, dv, k_a, k_b, v, q_base, do_base, lse2_base, delta_base,
                     dq_base, dq_desc_a, dq_desc_b, dq_col,
                     q_start, stride_qt, stride_dot, stride_dqt, lo, hi, offs_n, mask_n, s_q,
                     diag, scale_log2, softmax_scale,
                     D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DA: tl.constexpr,
                     BLOCK_DB: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
                     CAUSAL: tl.constexpr, MASK: tl.constexpr, UPCAST_DOT: tl.constexpr,
                     DQ_MODE: tl.constexpr):
    """dK (unscaled) and dV of this key block from query rows [lo, hi), keys as rows (Pᵀ); with
    DQ_MODE > 0 also each step's scaled dQ = scale·dS·K into the fp32 accumulator. Rows past Sq
    read q = dO = 0, lse2 = +inf and D = 0, so they add exactly 0 even unmasked."""
    offs_da = tl.arange(0, BLOCK_DA)
    offs_dv = tl.arange(0, BLOCK_DV)
    for m0 in range(lo, hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)  # [BLOCK_M] local rows
        mask_m = offs_m < s_q
        rows_q = (q_start + offs_m).to(tl.int64)
        q_a = _load_rows(q_base, rows_q, stride_qt, offs_da, mask_m, D_QK, BLOCK_DA, True,
                         UPCAST_DOT)  # [BLOCK_M, BLOCK_DA]
        s_t = tl.dot(k_a, tl.trans(q_a))  # [BLOCK_N, BLOCK_M]
        if BLOCK_DB > 0:
            offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
            q_b = _load_rows(q_base, rows_q, stride_qt, offs_db, mask_m, D_QK,
                             BLOCK_DA + BLOCK_DB, True, UPCAST_DOT)  # [BLOCK_M, BLOCK_DB]
            s_t = tl.dot(k_b, tl.trans(q_b), s_t)
        do = _load_rows(do_base, rows_q, stride_dot, offs_dv, mask_m, D_V, BLOCK_DV, True,
                        UPCAST_DOT)  # [BLOCK_M, BLOCK_DV]
        lse2 = tl.load(lse2_base + rows_q, mask=mask_m, other=float("inf"))  # [BLOCK_M]
        delta = tl.load(delta_base + rows_q, mask=mask_m, other=0.0)  # [BLOCK_M]
        p_t = tl.exp2(s_t * scale_log2 - lse2[None, :])  # [BLOCK_N, BLOCK_M]
        if MASK:
            valid = mask_n[:, None] & mask_m[None, :]
            if CAUSAL:
                valid = valid & (offs_n[:, None] <= offs_m[None, :] + diag)
            p_t = tl.where(valid, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv)  # [BLOCK_N, BLOCK_DV]
        dp_t = tl.dot(v, tl.trans(do))  # [BLOCK_N, BLOCK_M]
        ds_t = (p_t * (dp_t - delta[None, :])).to(q_a.dtype)  # [BLOCK_N, BLOCK_M]
        dk_a = tl.dot(ds_t, q_a, dk_a)  # [BLOCK_N, BLOCK_DA]
        if BLOCK_DB > 0:
            dk_b = tl.dot(ds_t, q_b, dk_b)  # [BLOCK_N, BLOCK_DB]
        if DQ_MODE > 0:
            # dQᵀ = Kᵀ·dSᵀ: the head dim (128 / 64) is the MMA's M, not the few query rows
            row0 = q_start + m0
            dq_a = tl.trans(tl.dot(tl.trans(k_a), ds_t)) * softmax_scale  # [BLOCK_M, BLOCK_DA]
            _dq_atomic_add(dq_base, dq_desc_a, rows_q, row0, dq_col, stride_dqt, offs_da,
                           mask_m, dq_a, D_QK, BLOCK_DA, DQ_MODE)
            if BLOCK_DB > 0:
                dq_b = tl.trans(tl.dot(tl.trans(k_b), ds_t)) * softmax_scale  # [BLOCK_M, DB]
                _dq_atomic_add(dq_base, dq_desc_b, rows_q, row0, dq_col + BLOCK_DA,
                               stride_dqt, offs_db, mask_m, dq_b, D_QK, BLOCK_DA + BLOCK_DB,
                               DQ_MODE)
    return dk_a, dk_b, dv


@triton.jit
def _mha_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dout_ptr, lse2_ptr, delta_ptr, cu_q_ptr, cu_k_ptr,
    dk_ptr, dv_ptr, dq_acc_ptr, dq_desc_a, dq_desc_b,
    softmax_scale, scale_log2,
    n_seqs, n_vblocks, group, total_q,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh,
    stride_dkt, stride_dkh,  # dk [total_k, h_kv, D_QK]
    stride_dvt, stride_dvh,  # dv [total_k, h_kv, D_V]
    stride_dqt, stride_dqh,  # dq_acc [total_q, h_q, D_QK] fp32 (DQ_MODE > 0)
    D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr, ROUND_OUT: tl.constexpr,
    DQ_MODE: tl.constexpr,  # 0: dQ by its own kernel; 1: pointer atomics; 2: TMA reduce-add
):
    # one program: BLOCK_N keys of one KV head, every query head of its group in turn, so the
    # group sum of dK/dV happens in registers in a fixed order (deterministic, no atomics).
    # Causal: a sequence's first key blocks see the most query rows, so they start first.
    pid = tl.program_id(0)
    kv_head = pid // n_vblocks
    if CAUSAL:
        blk = pid % n_vblocks
    else:
        blk = n_vblocks - 1 - pid % n_vblocks
    seq = _find_seq(cu_k_ptr, blk, n_seqs, BLOCK_N)
    k_start = tl.load(cu_k_ptr + seq)
    s_k = tl.load(cu_k_ptr + seq + 1) - k_start
    n0 = (blk - k_start // BLOCK_N - seq) * BLOCK_N  # first local key of this program
    if n0 < s_k:
        q_start = tl.load(cu_q_ptr + seq)
        s_q = tl.load(cu_q_ptr + seq + 1) - q_start
        diag = s_k - s_q  # row i sees keys j <= i + diag

        offs_n = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        mask_n = offs_n < s_k
        rows_k = (k_start + offs_n).to(tl.int64)
        offs_da = tl.arange(0, BLOCK_DA)
        offs_dv = tl.arange(0, BLOCK_DV)
        k_base = k_ptr + kv_head * stride_kh
        k_a = _load_rows(k_base, rows_k, stride_kt, offs_da, mask_n, D_QK, BLOCK_DA, True,
                         UPCAST_DOT)  # [BLOCK_N, BLOCK_DA]
        dk_a = tl.zeros([BLOCK_N, BLOCK_DA], dtype=tl.float32)
        if BLOCK_DB > 0:
            offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
            k_b = _load_rows(k_base, rows_k, stride_kt, offs_db, mask_n, D_QK,
                             BLOCK_DA + BLOCK_DB, True, UPCAST_DOT)  # [BLOCK_N, BLOCK_DB]
            dk_b = tl.zeros([BLOCK_N, BLOCK_DB], dtype=tl.float32)
        else:
            k_b = k_a  # placeholders, never read or updated
            dk_b = dk_a
        v = _load_rows(v_ptr + kv_head * stride_vh, rows_k, stride_vt, offs_dv, mask_n, D_V,
                       BLOCK_DV, True, UPCAST_DOT)  # [BLOCK_N, BLOCK_DV]
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

        if CAUSAL:
            # rows before m_lo see none of these keys; rows from m_full on see all of them
            m_lo = tl.minimum(tl.maximum(n0 - diag, 0), s_q) // BLOCK_M * BLOCK_M
            m_full = (tl.maximum(n0 + BLOCK_N - 1 - diag, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        else:
            m_lo = s_q * 0
            m_full = s_q * 0
        # a ragged key block takes the masked path throughout
        m_mid = tl.where(n0 + BLOCK_N <= s_k, tl.minimum(tl.maximum(m_full, m_lo), s_q), s_q)
        for g in range(0, group):
            head = kv_head * group + g
            q_base = q_ptr + head * stride_qh
            do_base = dout_ptr + head * stride_doh
            lse2_base = lse2_ptr + head.to(tl.int64) * total_q
            delta_base = delta_ptr + head.to(tl.int64) * total_q
            dq_base = dq_acc_ptr + head * stride_dqh
            dq_col = head * D_QK  # column of this head in the [total_q, h_q * D_QK] view
            dk_a, dk_b, dv = _dkdv_query_loop(
                dk_a, dk_b, dv, k_a, k_b, v, q_base, do_base, lse2_base, delta_base, dq_base,
                dq_desc_a, dq_desc_b, dq_col, q_start, stride_qt, stride_dot, stride_dqt,
                m_lo, m_mid, offs_n, mask_n, s_q, diag, scale_log2, softmax_scale, D_QK, D_V,
                BLOCK_DA, BLOCK_DB, BLOCK_DV, BLOCK_M, CAUSAL, True, UPCAST_DOT, DQ_MODE)
            dk_a, dk_b, dv = _dkdv_query_loop(
                dk_a, dk_b, dv, k_a, k_b, v, q_base, do_base, lse2_base, delta_base, dq_base,
                dq_desc_a, dq_desc_b, dq_col, q_start, stride_qt, stride_dot, stride_dqt,
                m_mid, s_q, offs_n, mask_n, s_q, diag, scale_log2, softmax_scale, D_QK, D_V,
                BLOCK_DA, BLOCK_DB, BLOCK_DV, BLOCK_M, CAUSAL, False, UPCAST_DOT, DQ_MODE)

        dk_base = dk_ptr + kv_head * stride_dkh
        _store_rows(dk_base, rows_k, stride_dkt, offs_da, mask_n, dk_a * softmax_scale, D_QK,
                    BLOCK_DA, ROUND_OUT)
        if BLOCK_DB > 0:
            _store_rows(dk_base, rows_k, stride_dkt, offs_db, mask_n, dk_b * softmax_scale,
                        D_QK, BLOCK_DA + BLOCK_DB, ROUND_OUT)
        _store_rows(dv_ptr + kv_head * stride_dvh, rows_k, stride_dvt, offs_dv, mask_n, dv,
                    D_V, BLOCK_DV, ROUND_OUT)
