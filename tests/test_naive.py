"""Sanity checks of openmla.testing.naive on tiny, hand-checkable cases.

Only openmla.testing.naive is used: FP8 caches are assembled byte by byte here, and the
expected values are worked out by hand or with a few lines of plain torch.
"""

from __future__ import annotations

import math
import struct

import pytest
import torch

from openmla.testing.naive import (
    naive_dense_decode,
    naive_dequant_token,
    naive_mha,
    naive_sparse_decode,
    naive_sparse_prefill,
)

INF = math.inf
NAN_FP8 = 0x7F  # float8_e4m3fn NaN byte, used to poison unreferenced cache bytes
GARBAGE_PAGE = 2147480000  # what upstream tests put in unused block-table slots
V32_B, MODEL1_B = 656, 584


# --- byte-level FP8 cache builders (independent of the library's quantizer) ----------------
def _fp8_byte(x: float) -> int:
    """e4m3fn encoding of an exactly representable value (checked)."""
    b = int(torch.tensor([x]).to(torch.float8_e4m3fn).view(torch.uint8))
    assert float(torch.tensor([b], dtype=torch.uint8).view(torch.float8_e4m3fn).float()) == x
    return b


def _bf16_bytes(x: float) -> bytes:
    """Little-endian bf16 bytes of a bf16-exact value: the high half of its fp32."""
    f32 = struct.pack("<f", x)
    assert f32[:2] == b"\x00\x00", x
    return f32[2:]


def _v32_cache(num_blocks: int, pbs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NaN-poisoned V32 cache [num_blocks, pbs, 1, 656] with a padded block stride
    (pbs + 1)·656; returns (cache view, flat byte buffer)."""
    block_stride = (pbs + 1) * V32_B
    buf = torch.full((num_blocks * block_stride,), NAN_FP8, dtype=torch.uint8)
    cache = torch.as_strided(buf, (num_blocks, pbs, 1, V32_B), (block_stride, V32_B, V32_B, 1))
    return cache, buf


def _v32_write(buf, pbs, p, nope_bytes, scales, rope):
    block_stride = (pbs + 1) * V32_B
    base = (p // pbs) * block_stride + (p % pbs) * V32_B
    raw = bytes(nope_bytes) + struct.pack("<4f", *scales) + b"".join(_bf16_bytes(r) for r in rope)
    assert len(raw) == V32_B
    buf[base : base + V32_B] = torch.tensor(list(raw), dtype=torch.uint8)


def _v32_token(buf, pbs, p, values: list[float]):
    """Write a token whose 576 values are fp8-exact (NoPE, scale 1) / bf16-exact (RoPE)."""
    _v32_write(buf, pbs, p, [_fp8_byte(v) for v in values[:512]], [1.0] * 4, values[512:])


def _model1_cache(num_blocks: int, pbs: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """NaN-poisoned MODEL1 cache view [num_blocks, pbs, 1, 584], block stride padded up
    to a multiple of 576 bytes (as the upstream test quantizer does)."""
    block_stride = -(-pbs * MODEL1_B // 576) * 576 + 576
    buf = torch.full((num_blocks * block_stride,), NAN_FP8, dtype=torch.uint8)
    cache = torch.as_strided(
        buf, (num_blocks, pbs, 1, MODEL1_B), (block_stride, MODEL1_B, MODEL1_B, 1)
    )
    return cache, buf, block_stride


def _model1_write(buf, pbs, block_stride, p, nope_bytes, scale_exps, rope):
    block, r = divmod(p, pbs)
    data = bytes(nope_bytes) + b"".join(_bf16_bytes(v) for v in rope)
    assert len(data) == 576 and len(scale_exps) == 7
    base = block * block_stride
    buf[base + r * 576 : base + r * 576 + 576] = torch.tensor(list(data), dtype=torch.uint8)
    s0 = base + pbs * 576 + r * 8
    buf[s0 : s0 + 8] = torch.tensor(list(scale_exps) + [0], dtype=torch.uint8)


def _model1_token(buf, pbs, block_stride, p, values: list[float]):
    _model1_write(buf, pbs, block_stride, p, [_fp8_byte(v) for v in values[:448]], [127] * 7,
                  values[448:])


# --- naive_dequant_token -------------------------------------------------------------------
def test_dequant_v32_hand_assembled_bytes():
    pbs = 3
    cache, buf = _v32_cache(num_blocks=2, pbs=pbs)
    nope = [0x38] * 512  # fp8 1.0
    nope[300] = 0xBC  # -1.5 (sign 1, exp 0111, mantissa 100)
    nope[511] = 0x7E  # 448, the largest finite e4m3fn value
    nope[5] = 0x00  # 0
    scales = [0.25, 1.0, 2.0, 0.5]
    rope = [1.0, -2.0] + [0.5] * 62
    p = 1 * pbs + 2  # block 1, row 2: exercises the padded block stride
    _v32_write(buf, pbs, p, nope, scales, rope)

    x = naive_dequant_token(cache, p, 576)
    assert x.shape == (576,) and x.dtype == torch.float32
    assert x[0] == 0.25 and x[5] == 0.0 and x[127] == 0.25  # tile 0
    assert x[128] == 1.0 and x[255] == 1.0  # tile 1
    assert x[300] == -3.0 and x[256] == 2.0  # tile 2
    assert x[511] == 224.0 and x[384] == 0.5  # tile 3
    assert x[512] == 1.0 and x[513] == -2.0 and x[575] == 0.5
    # Every other token is NaN-poisoned.
    assert torch.isnan(naive_dequant_token(cache, 0, 576)[:512]).all()


def test_dequant_v32_rounds_product_to_bf16():
    cache, buf = _v32_cache(num_blocks=1, pbs=1)
    _v32_write(buf, 1, 0, [0x38] * 512, [0.3, 1.0, 1.0, 1.0], [0.0] * 64)
    x = naive_dequant_token(cache, 0, 576)
    # bf16(1.0 · fp32(0.3)) = 0.30078125
    assert x[0] == 0.30078125 and x[0] != torch.tensor(0.3, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.float8_e4m3fn])
def test_dequant_model1_hand_assembled_bytes(dtype):
    pbs = 3
    cache, buf, block_stride = _model1_cache(num_blocks=2, pbs=pbs)
    nope = [0x38] * 448  # 1.0
    nope[64] = 0xBC  # -1.5
    nope[447] = 0x40  # 2.0
    exps = [127, 128, 125, 127, 127, 127, 130]  # scales 1, 2, 1/4, 1, 1, 1, 8
    rope = [0.25] * 63 + [-1.0]
    p = 1 * pbs + 1  # block 1, row 1
    _model1_write(buf, pbs, block_stride, p, nope, exps, rope)

    x = naive_dequant_token(cache.view(dtype), p, 512)
    assert x.shape == (512,)
    assert x[0] == 1.0 and x[63] == 1.0  # tile 0, scale 1
    assert x[64] == -3.0 and x[127] == 2.0  # tile 1, scale 2
    assert x[128] == 0.25  # tile 2, scale 1/4
    assert x[384] == 8.0 and x[447] == 16.0  # tile 6, scale 8
    assert x[448] == 0.25 and x[511] == -1.0  # RoPE
    # Row 1's data is not at view row 1: the view row holds the block-interleaved bytes.
    assert torch.isnan(naive_dequant_token(cache, 0, 512)[:448]).all()


def test_dequant_rejects_bad_inputs():
    cache, _ = _v32_cache(num_blocks=1, pbs=2)
    with pytest.raises(ValueError, match="p"):
        naive_dequant_token(cache, 2, 576)
    with pytest.raises(ValueError, match="k_cache"):
        naive_dequant_token(cache, 0, 512)  # 656-byte rows are not MODEL1
    with pytest.raises(ValueError, match="d_qk"):
        naive_dequant_token(cache, 0, 192)


# --- naive_dense_decode --------------------------------------------------------------------
def test_dense_decode_single_key():
    pbs, d, dv = 3, 8, 4
    k_cache = torch.full((4, pbs, 1, d), math.nan)
    key = torch.arange(1.0, d + 1) / 10
    k_cache[2, 0, 0] = key
    q = torch.randn(1, 1, 2, d, generator=torch.Generator().manual_seed(0))
    block_table = torch.tensor([[2, GARBAGE_PAGE]], dtype=torch.int32)
    out, lse = naive_dense_decode(q, k_cache, block_table, [1], 0.5, False, head_dim_v=dv)
    assert out.shape == (1, 1, 2, dv) and lse.shape == (1, 2, 1)
    for h in range(2):
        torch.testing.assert_close(out[0, 0, h], key[:dv].double(), rtol=0, atol=1e-15)
        assert lse[0, h, 0] == pytest.approx(0.5 * float(q[0, 0, h].double() @ key.double()))


def test_dense_decode_two_keys_known_scores_gqa():
    # pbs = 1, keys on pages 3 and 0; h_q = 4, h_kv = 2: heads 0,1 -> kv 0, heads 2,3 -> kv 1.
    ln3 = math.log(3.0)
    k_cache = torch.full((5, 1, 2, 2), math.nan, dtype=torch.float64)
    k_cache[3, 0, 0] = torch.tensor([0.0, 10.0])  # score 0 for q = [1, 0]
    k_cache[0, 0, 0] = torch.tensor([ln3, 20.0])  # score ln 3
    k_cache[3, 0, 1] = torch.tensor([1.0, -1.0])  # kv head 1: scores 1 and 1
    k_cache[0, 0, 1] = torch.tensor([1.0, 3.0])
    q = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(1, 1, 4, 2)
    block_table = torch.tensor([[3, 0, GARBAGE_PAGE]], dtype=torch.int32)
    out, lse = naive_dense_decode(q, k_cache, block_table, torch.tensor([2]), 1.0, False, 2)
    # kv head 0: weights 1/4, 3/4
    expected0 = torch.tensor([0.75 * ln3, 0.25 * 10 + 0.75 * 20], dtype=torch.float64)
    for h in (0, 1):
        torch.testing.assert_close(out[0, 0, h], expected0)
        assert lse[0, h, 0] == pytest.approx(math.log(4.0))
    for h in (2, 3):
        torch.testing.assert_close(out[0, 0, h], torch.tensor([1.0, 1.0], dtype=torch.float64))
        assert lse[0, h, 0] == pytest.approx(1.0 + math.log(2.0))


def _direct_attention(q_row, keys, dv, scale):
    s = scale * (keys.double() @ q_row.double())
    return torch.softmax(s, 0) @ keys[:, :dv].double(), torch.logsumexp(s, 0)


def test_dense_decode_causal_lonely_rows_and_nan_pages():
    pbs, d, dv, s_q, seqlen = 2, 6, 3, 3, 2
    gen = torch.Generator().manual_seed(1)
    k_cache = torch.full((3, pbs, 1, d), math.nan)
    keys = torch.randn(seqlen, d, generator=gen)
    k_cache[1] = keys[:, None, :]  # page 1 holds keys 0, 1
    q = torch.randn(2, s_q, 1, d, generator=gen)
    block_table = torch.tensor([[1, GARBAGE_PAGE], [GARBAGE_PAGE, GARBAGE_PAGE]], dtype=torch.int32)
    seqlens = torch.tensor([seqlen, 0], dtype=torch.int32)

    out, lse = naive_dense_decode(q, k_cache, block_table, seqlens, 0.3, True, dv)
    # token 0 sees L - 2 = 0 keys (lonely), token 1 one key, token 2 both.
    assert torch.equal(out[0, 0], torch.zeros(1, dv, dtype=torch.float64))
    assert lse[0, 0, 0] == INF
    for t, n in ((1, 1), (2, 2)):
        o, l = _direct_attention(q[0, t, 0], keys[:n], dv, 0.3)
        torch.testing.assert_close(out[0, t, 0], o)
        assert lse[0, 0, t] == pytest.approx(float(l))
    # L = 0: every row lonely
    assert torch.equal(out[1], torch.zeros_like(out[1])) and (lse[1] == INF).all()

    out_nc, lse_nc = naive_dense_decode(q, k_cache, block_table, seqlens, 0.3, False, dv)
    o, l = _direct_attention(q[0, 0, 0], keys, dv, 0.3)
    torch.testing.assert_close(out_nc[0, 0, 0], o)
    assert lse_nc[0, 0, 0] == pytest.approx(float(l))


def test_dense_decode_multi_page_matches_direct_softmax():
    pbs, d, dv, seqlen = 3, 5, 4, 7  # 3 pages, last one partial
    gen = torch.Generator().manual_seed(2)
    k_cache = torch.full((6, pbs, 2, d), math.nan)
    keys = torch.randn(seqlen, 2, d, generator=gen)
    pages = [4, 0, 5]
    for j in range(seqlen):
        k_cache[pages[j // pbs], j % pbs] = keys[j]
    q = torch.randn(1, 2, 4, d, generator=gen)
    block_table = torch.tensor([pages + [GARBAGE_PAGE]], dtype=torch.int32)
    out, lse = naive_dense_decode(q, k_cache, block_table, [seqlen], 0.7, True, dv)
    for t in range(2):
        for h in range(4):
            n = seqlen - (1 - t)
            o, l = _direct_attention(q[0, t, h], keys[:n, h // 2], dv, 0.7)
            torch.testing.assert_close(out[0, t, h], o)
            assert lse[0, h, t] == pytest.approx(float(l))
    assert torch.isfinite(out).all()


# --- naive_sparse_decode -------------------------------------------------------------------
def _unit(i: int, scale: float, n: int) -> list[float]:
    v = [0.0] * n
    v[i] = scale
    return v


def _v32_attention_cache():
    """Tokens (page size 3, padded stride): p=4 -> e0·1 + rope, p=7 -> e0·2 + e1·1."""
    cache, buf = _v32_cache(num_blocks=3, pbs=3)
    tok_a = _unit(0, 1.0, 576)
    tok_a[512] = 0.5
    tok_b = _unit(0, 2.0, 576)
    tok_b[1] = 1.0
    _v32_token(buf, 3, 4, tok_a)
    _v32_token(buf, 3, 7, tok_b)
    return cache, torch.tensor(tok_a, dtype=torch.float64), torch.tensor(tok_b, dtype=torch.float64)


def test_sparse_decode_one_and_two_keys():
    cache, tok_a, tok_b = _v32_attention_cache()
    ln3 = math.log(3.0)
    q = torch.zeros(1, 2, 2, 576)
    q[..., 0] = ln3  # scores: token a ln3, token b 2·ln3
    idx = torch.tensor([[[4, -1, -1, -1], [-1, 7, 4, -1]]], dtype=torch.int32)  # [1, 2, 4]
    out, lse = naive_sparse_decode(q, cache, idx, 1.0)
    assert out.shape == (1, 2, 2, 512) and lse.shape == (1, 2, 2)
    # token 0: only a
    torch.testing.assert_close(out[0, 0, 0], tok_a[:512])
    assert lse[0, 0, 0] == pytest.approx(ln3)
    # token 1: weights 9/12 (b) and 3/12 (a)
    expected = 0.75 * tok_b[:512] + 0.25 * tok_a[:512]
    for h in range(2):
        torch.testing.assert_close(out[0, 1, h], expected)
        assert lse[0, h, 1] == pytest.approx(math.log(12.0))


def test_sparse_decode_sinks():
    cache, tok_a, tok_b = _v32_attention_cache()
    q = torch.zeros(1, 1, 3, 576)
    q[..., 0] = 1.0
    idx = torch.tensor([[[4, 7]]], dtype=torch.int32)
    base_out, base_lse = naive_sparse_decode(q, cache, idx, 1.0)
    sink = torch.tensor([INF, -INF, 0.5])
    out, lse = naive_sparse_decode(q, cache, idx, 1.0, attn_sink=sink)
    torch.testing.assert_close(lse, base_lse)  # lse never includes the sink
    assert torch.isfinite(lse).all()
    assert torch.equal(out[0, 0, 0], torch.zeros(512, dtype=torch.float64))  # +inf: out 0
    torch.testing.assert_close(out[0, 0, 1], base_out[0, 0, 1])  # -inf: no effect
    factor = 1.0 / (1.0 + math.exp(0.5 - float(base_lse[0, 2, 0])))
    torch.testing.assert_close(out[0, 0, 2], base_out[0, 0, 2] * factor)
    # finite sink == an extra key with score 0.5 and a zero V
    lse_e = math.log(math.e**1 + math.e**2)
    expected = (math.e**1 * tok_a[:512] + math.e**2 * tok_b[:512]) / (math.e**lse_e + math.e**0.5)
    torch.testing.assert_close(out[0, 0, 2], expected)


def test_sparse_decode_invalid_and_lengths():
    cache, tok_a, _ = _v32_attention_cache()
    q = torch.randn(2, 1, 2, 576, generator=torch.Generator().manual_seed(3))
    capacity = 9
    # batch 0: all invalid (−1, out of range); batch 1: one valid, then garbage and a
    # valid-but-NaN token (p = 0) past topk_length.
    idx = torch.tensor(
        [[[-1, capacity, -5, 2147483647]], [[4, 0, 2147480000, -1]]], dtype=torch.int32
    )
    sink = torch.tensor([0.0, 1.0])
    out, lse = naive_sparse_decode(q, cache, idx, 0.1, attn_sink=sink, topk_length=[4, 1])
    assert torch.equal(out[0], torch.zeros_like(out[0])) and (lse[0] == INF).all()
    for h in range(2):
        s = 0.1 * float(q[1, 0, h].double() @ tok_a)
        assert lse[1, h, 0] == pytest.approx(s)
        factor = 1.0 / (1.0 + math.exp(float(sink[h]) - s))
        torch.testing.assert_close(out[1, 0, h], tok_a[:512] * factor)
    # topk_length = 0 -> lonely even with a valid index
    out0, lse0 = naive_sparse_decode(q, cache, idx, 0.1, topk_length=torch.tensor([0, 0]))
    assert (lse0 == INF).all() and torch.equal(out0, torch.zeros_like(out0))


def test_sparse_decode_model1_extra_cache_and_duplicates():
    pbs, extra_pbs = 2, 3
    cache, buf, stride = _model1_cache(num_blocks=2, pbs=pbs)
    extra, ebuf, estride = _model1_cache(num_blocks=2, pbs=extra_pbs)
    tok_a = _unit(0, 1.0, 512)
    tok_a[511] = 2.0  # RoPE is part of V for MODEL1
    tok_b = _unit(1, 1.0, 512)
    tok_b[448] = -1.0
    _model1_token(buf, pbs, stride, 3, tok_a)
    _model1_token(ebuf, extra_pbs, estride, 4, tok_b)
    ta = torch.tensor(tok_a, dtype=torch.float64)
    tb = torch.tensor(tok_b, dtype=torch.float64)
    q = torch.zeros(1, 1, 1, 512)  # all scores 0: plain average over listed slots
    idx = torch.tensor([[[3, 3, -1]]], dtype=torch.int32)  # a listed twice
    eidx = torch.tensor([[[4, 0, 1]]], dtype=torch.int32)  # 0, 1: NaN tokens past length
    out, lse = naive_sparse_decode(
        q, cache, idx, 1.0, extra_k_cache=extra, extra_indices_in_kvcache=eidx,
        extra_topk_length=[1],
    )
    torch.testing.assert_close(out[0, 0, 0], (2 * ta + tb) / 3)
    assert lse[0, 0, 0] == pytest.approx(math.log(3.0))
    assert out[0, 0, 0, 511] == pytest.approx(4.0 / 3)  # RoPE dims reach the output


# --- naive_sparse_prefill ------------------------------------------------------------------
def test_sparse_prefill_values_invalid_and_lonely():
    s_kv, d_qk, d_v = 5, 6, 4
    gen = torch.Generator().manual_seed(4)
    kv = torch.randn(s_kv, 1, d_qk, generator=gen)
    kv[1] = math.nan  # never referenced by a valid index
    q = torch.randn(3, 2, d_qk, generator=gen)
    idx = torch.tensor(
        [
            [[0, -1, s_kv, 3]],
            [[-2147483648, 2147483647, 114514, -1]],  # all invalid
            [[4, 2, 1, 1]],  # the NaN row 1 lies past topk_length
        ],
        dtype=torch.int32,
    )
    sink = torch.tensor([-INF, INF])
    out, mx, lse = naive_sparse_prefill(q, kv, idx, 0.5, d_v, sink, topk_length=[4, 4, 2])
    assert out.shape == (3, 2, d_v) and mx.shape == (3, 2) and lse.shape == (3, 2)
    for t, rows in ((0, [0, 3]), (2, [4, 2])):
        keys = kv[rows, 0].double()
        s = 0.5 * (keys @ q[t].double().T)  # [n, h]
        for h in range(2):
            assert mx[t, h] == pytest.approx(float(s[:, h].max()))
            assert lse[t, h] == pytest.approx(float(torch.logsumexp(s[:, h], 0)))
        torch.testing.assert_close(out[t, 0], torch.softmax(s[:, 0], 0) @ keys[:, :d_v])
        assert torch.equal(out[t, 1], torch.zeros(d_v, dtype=torch.float64))  # sink +inf
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert (lse[1] == INF).all() and (mx[1] == -INF).all()


def test_sparse_prefill_single_key():
    kv = torch.tensor([[[1.0, 2.0, 3.0]], [[math.nan] * 3]])
    q = torch.tensor([[[1.0, 0.0, 1.0]]])  # score 0.5·(1 + 3) = 2
    out, mx, lse = naive_sparse_prefill(q, kv, torch.tensor([[[0, 1]]]), 0.5, 2, topk_length=[1])
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert mx[0, 0] == 2.0 and lse[0, 0] == 2.0


# --- naive_mha -----------------------------------------------------------------------------
def test_mha_hand_values_causal_and_empty():
    # seq 0: Sq = 2, Sk = 2; seq 1: Sq = 1, Sk = 0; seq 2: Sq = 3, Sk = 1 (rows 0, 1 lonely)
    q = torch.zeros(6, 1, 2, dtype=torch.float64)
    q[0, 0, 0] = math.log(3.0)  # causal row 0 of seq 0 sees key 0 only
    q[1, 0, 0] = math.log(3.0)
    k = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[5.0, 5.0]]], dtype=torch.float64)
    v = torch.tensor([[[1.0]], [[5.0]], [[7.0]]], dtype=torch.float64)
    out, lse = naive_mha(q, k, v, [0, 2, 3, 6], [0, 2, 2, 3], 1.0, causal=True)
    assert out.shape == (6, 1, 1) and lse.shape == (6, 1)
    assert out[0, 0, 0] == 1.0 and lse[0, 0] == 0.0
    # row 1: scores 0, ln 3 -> weights 1/4, 3/4
    assert out[1, 0, 0] == pytest.approx(0.25 * 1 + 0.75 * 5) and lse[1, 0] == pytest.approx(
        math.log(4.0)
    )
    assert out[2, 0, 0] == 0.0 and lse[2, 0] == -INF  # Sk = 0
    assert (out[3:5] == 0).all() and (lse[3:5] == -INF).all()  # causal lonely
    assert out[5, 0, 0] == 7.0 and lse[5, 0] == 0.0
    out_nc, _ = naive_mha(q, k, v, [0, 2, 3, 6], [0, 2, 2, 3], 1.0, causal=False)
    assert out_nc[0, 0, 0] == pytest.approx(0.25 * 1 + 0.75 * 5)
    assert out_nc[3, 0, 0] == 7.0


def test_mha_gqa_matches_direct_softmax():
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(5, 4, 3, generator=gen, dtype=torch.float64)
    k = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(6, 2, 2, generator=gen, dtype=torch.float64)
    out, lse = naive_mha(q, k, v, torch.tensor([0, 2, 5]), torch.tensor([0, 4, 6]), 0.4, True)
    for n, (q0, q1, k0, k1) in enumerate(((0, 2, 0, 4), (2, 5, 4, 6))):
        sq, sk = q1 - q0, k1 - k0
        for i in range(sq):
            n_vis = i + sk - sq + 1
            if n_vis <= 0:
                assert (out[q0 + i] == 0).all() and (lse[q0 + i] == -INF).all()
                continue
            for h in range(4):
                s = 0.4 * (k[k0 : k0 + n_vis, h // 2] @ q[q0 + i, h])
                expected = torch.softmax(s, 0) @ v[k0 : k0 + n_vis, h // 2]
                torch.testing.assert_close(out[q0 + i, h], expected)
                assert lse[q0 + i, h] == pytest.approx(float(torch.logsumexp(s, 0)))


def _mha_inputs(seed, total_q, total_k, h_q, h_kv, d, dv):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(total_q, h_q, d, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(total_k, h_kv, d, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(total_k, h_kv, dv, generator=gen, dtype=torch.float64, requires_grad=True)
    return q, k, v


@pytest.mark.parametrize("causal", [False, True])
def test_mha_gradcheck(causal):
    # Sq <= Sk everywhere: no lonely rows, so lse is finite and can be checked too.
    q, k, v = _mha_inputs(6, 5, 7, 4, 2, 3, 2)
    cu_q, cu_k = [0, 2, 5], [0, 3, 7]
    assert torch.autograd.gradcheck(
        lambda a, b, c: naive_mha(a, b, c, cu_q, cu_k, 0.6, causal), (q, k, v)
    )


def test_mha_gradcheck_with_lonely_rows():
    # Sq = 3 > Sk = 1 under causal masking and an Sk = 0 sequence: check out only
    # (lse is -inf there) and that those rows get exactly zero, finite gradients.
    q, k, v = _mha_inputs(7, 6, 3, 2, 2, 3, 2)
    cu_q, cu_k = [0, 3, 4, 6], [0, 1, 1, 3]
    assert torch.autograd.gradcheck(
        lambda a, b, c: naive_mha(a, b, c, cu_q, cu_k, 0.6, True)[0], (q, k, v)
    )
    out, lse = naive_mha(q, k, v, cu_q, cu_k, 0.6, True)
    (out.sum() + lse[torch.isfinite(lse)].sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[0:2] == 0).all() and (q.grad[3] == 0).all()  # lonely / Sk = 0 rows
    assert (q.grad[2] != 0).any()


def test_mha_rejects_bad_heads():
    q, k, v = _mha_inputs(8, 2, 2, 3, 2, 4, 4)
    with pytest.raises(ValueError, match="h_kv"):
        naive_mha(q, k, v, [0, 2], [0, 2], None, False)


def test_mha_masked_huge_scores_do_not_underflow_or_nan():
    # The future key (masked for row 0) has score 1e4: it must neither shift the
    # softmax of row 0 into underflow nor give NaN gradients.
    q = torch.tensor([[[1.0]], [[1.0]]], dtype=torch.float64, requires_grad=True)
    k = torch.tensor([[[0.0]], [[1e4]]], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([[[3.0]], [[5.0]]], dtype=torch.float64, requires_grad=True)
    out, lse = naive_mha(q, k, v, [0, 2], [0, 2], 1.0, causal=True)
    assert out[0, 0, 0] == 3.0 and lse[0, 0] == 0.0
    assert out[1, 0, 0] == 5.0 and float(lse[1, 0].detach()) == pytest.approx(1e4)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
