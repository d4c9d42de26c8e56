"""Hand-computed checks of the SPEC §5.1 FLOP / byte formulas in openmla.testing.flops."""

from __future__ import annotations

import random

import pytest
import torch

from openmla.testing import flops


# --- dense decode -------------------------------------------------------------------------
def test_dense_decode_flops_hand_computed():
    # 2·s_q·ΣL·h_q·(d+dv) = 2·1·(4+6)·2·(3+2) = 200
    assert flops.dense_decode_flops(2, 1, 2, 3, 2, [4, 6]) == 200
    # s_q = 2 doubles it; tensor lengths accepted
    assert flops.dense_decode_flops(2, 2, 2, 3, 2, torch.tensor([4, 6], dtype=torch.int32)) == 400
    # an int length broadcasts: b=3, L=5 -> ΣL = 15
    assert flops.dense_decode_flops(3, 1, 1, 1, 1, 5) == 2 * 15 * 2


@pytest.mark.parametrize("seed", range(5))
def test_dense_decode_flops_equals_mean_length_form(seed):
    rng = random.Random(seed)
    b, s_q, h_q, d, dv = rng.randint(1, 9), rng.randint(1, 3), rng.randint(1, 128), 576, 512
    seqlens = [rng.randint(0, 5000) for _ in range(b)]
    mean_len = sum(seqlens) / b
    expected = b * h_q * s_q * (2 * d * mean_len + 2 * mean_len * dv)
    got = flops.dense_decode_flops(b, s_q, h_q, d, dv, seqlens)
    assert got == pytest.approx(expected, rel=1e-12)


def test_dense_decode_bytes_hand_computed():
    # (ΣL·h_kv·d + b·s_q·h_q·d + b·s_q·h_q·dv)·2 = (10·1·3 + 2·1·2·3 + 2·1·2·2)·2 = 100
    assert flops.dense_decode_bytes(2, 1, 2, 1, 3, 2, [4, 6]) == 100
    assert flops.dense_decode_bytes(2, 1, 2, 1, 3, 2, [4, 6], elem_size=4) == 200
    # h_kv = 2 reads the KV twice as often: +30·2
    assert flops.dense_decode_bytes(2, 1, 2, 2, 3, 2, [4, 6]) == 160


def test_dense_decode_matches_anchor_table():
    # ANCHORS.md, H200: b=128 s_q=1 h_q=128 s_k=8192: 466 µs -> 626 TFLOPS, 2667 GB/s
    b, s_q, h_q, seq = 128, 1, 128, 8192
    t = 466e-6
    tflops = flops.dense_decode_flops(b, s_q, h_q, 576, 512, [seq] * b) / t / 1e12
    gbps = flops.dense_decode_bytes(b, s_q, h_q, 1, 576, 512, [seq] * b) / t / 1e9
    assert tflops == pytest.approx(626, rel=5e-3)
    assert gbps == pytest.approx(2667, rel=5e-3)


def test_dense_decode_rejects_wrong_length_count():
    with pytest.raises(ValueError, match="seqlens"):
        flops.dense_decode_flops(3, 1, 1, 576, 512, [1, 2])


# --- sparse decode ------------------------------------------------------------------------
def test_sparse_decode_attended():
    assert flops.sparse_decode_attended(2, 3, 4) == 24
    assert flops.sparse_decode_attended(2, 3, 4, topk_length=[1, 3]) == 12
    assert flops.sparse_decode_attended(2, 3, 4, extra_topk=8) == 24 + 48
    assert flops.sparse_decode_attended(2, 3, 4, [1, 3], 8, torch.tensor([2, 0])) == 12 + 6
    with pytest.raises(ValueError, match="topk_length"):
        flops.sparse_decode_attended(2, 3, 4, topk_length=[5, 0])


def test_sparse_decode_flops_and_bytes_hand_computed():
    # 2·h_q·N·(d_qk+d_v) = 2·2·10·1088
    assert flops.sparse_decode_flops(2, 576, 512, 10) == 43520
    # 2·1·2·2·576 + 3·656 + 2·1·2·2·512
    assert flops.sparse_decode_bytes(1, 2, 2, 576, 512, 3) == 4608 + 1968 + 4096
    # MODEL1 tokens count 576 bytes
    assert flops.sparse_decode_bytes(1, 2, 2, 512, 512, 3) == 4096 + 1728 + 4096
    # topk variant: every slot reads a token: N = 1·2·5 = 10
    assert flops.sparse_decode_bytes_topk(1, 2, 2, 576, 512, 5) == 4608 + 10 * 656 + 4096
    with pytest.raises(ValueError, match="d_qk"):
        flops.sparse_decode_bytes(1, 1, 1, 192, 128, 1)


def test_sparse_decode_matches_anchor_table():
    # ANCHORS.md, H200: b=128 s_q=1 h_q=128 topk=2048: 200 µs -> 365 TFLOPS, 1038 GB/s
    b, s_q, h_q, topk, t = 128, 1, 128, 2048, 200e-6
    n_att = flops.sparse_decode_attended(b, s_q, topk)
    tflops = flops.sparse_decode_flops(h_q, 576, 512, n_att) / t / 1e12
    assert tflops == pytest.approx(365, rel=5e-3)
    gbps = flops.sparse_decode_bytes_topk(b, s_q, h_q, 576, 512, topk) / t / 1e9
    assert gbps == pytest.approx(1038, rel=5e-3)


def test_count_unique_indices():
    idx = torch.tensor([[[0, 5, -1, 5]], [[7, 0, 9, 9]]], dtype=torch.int32)  # [2, 1, 4]
    assert flops.count_unique_indices(idx) == 5  # {-1, 0, 5, 7, 9}
    # lengths [2, 4]: batch 0 keeps {0, 5}; masked slots become -1 (upstream) or vanish
    assert flops.count_unique_indices(idx, [2, 4]) == 5  # {-1, 0, 5, 7, 9}
    assert flops.count_unique_indices(idx, [2, 4], masked_as_minus_one=False) == 4
    # lengths [1, 1]: {0, 7} kept
    assert flops.count_unique_indices(idx, torch.tensor([1, 1])) == 3  # + -1
    assert flops.count_unique_indices(idx, [1, 1], masked_as_minus_one=False) == 2
    # garbage past the length is never counted
    garbage = torch.tensor([[[3, 2147480000, 2147483647]]], dtype=torch.int32)
    assert flops.count_unique_indices(garbage, [1], masked_as_minus_one=False) == 1


# --- sparse prefill -----------------------------------------------------------------------
def test_sparse_prefill_flops_and_bytes_hand_computed():
    assert flops.sparse_prefill_flops(3, 2, 576, 512, topk=4) == 2 * 12 * 2 * 1088
    got = flops.sparse_prefill_flops(3, 2, 576, 512, topk=4, topk_length=[1, 2, 3])
    assert got == 2 * 6 * 2 * 1088
    with pytest.raises(ValueError):
        flops.sparse_prefill_flops(3, 2, 576, 512)
    # N_valid·d_qk·2 + s_q·h_q·(d_qk+d_v)·2 = 4·576·2 + 2·2·1088·2
    assert flops.sparse_prefill_bytes(4, 2, 2, 576, 512) == 4608 + 8704


def test_count_valid_prefill_indices():
    idx = torch.tensor([[[0, 5, -1, 9]], [[2, 3, 4, 100]]], dtype=torch.int32)  # [2, 1, 4]
    assert flops.count_valid_prefill_indices(idx, s_kv=5) == 4
    assert flops.count_valid_prefill_indices(idx, s_kv=5, topk_length=[1, 2]) == 3
    assert flops.count_valid_prefill_indices(idx, s_kv=5, topk_length=[0, 0]) == 0


def test_sparse_prefill_matches_anchor_table():
    # ANCHORS.md, H200: s_q=4096 h_q=128 topk=2048 d_qk=576: 4164 µs -> 561 TFLOPS
    f = flops.sparse_prefill_flops(4096, 128, 576, 512, topk=2048)
    assert f / 4164e-6 / 1e12 == pytest.approx(561, rel=5e-3)


# --- dense MHA ----------------------------------------------------------------------------
def _brute_pairs(sq: int, sk: int, causal: bool) -> int:
    return sum(
        1 for i in range(sq) for j in range(sk) if (not causal or j <= i + sk - sq)
    )


def test_mha_pairs_hand_computed():
    # Sq=3, Sk=5 causal: rows see 3, 4, 5 keys
    assert flops.mha_pairs([0, 3], [0, 5], causal=True) == 12
    assert flops.mha_pairs([0, 3], [0, 5], causal=False) == 15
    # Sq=5, Sk=2 causal: rows 0-2 see none, row 3 one, row 4 two
    assert flops.mha_pairs([0, 5], [0, 2], causal=True) == 3
    # Sk = 0 and Sq = 0 sequences contribute nothing
    assert flops.mha_pairs([0, 3, 3, 7], [0, 0, 4, 8], causal=True) == 0 + 0 + 10
    assert flops.mha_pairs(torch.tensor([0, 4]), torch.tensor([0, 4]), causal=True) == 10


def test_mha_pairs_against_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        b = rng.randint(1, 4)
        sq = [rng.randint(0, 12) for _ in range(b)]
        sk = [rng.randint(0, 12) for _ in range(b)]
        cu_q = [0]
        cu_k = [0]
        for a, c in zip(sq, sk):
            cu_q.append(cu_q[-1] + a)
            cu_k.append(cu_k[-1] + c)
        for causal in (False, True):
            expected = sum(_brute_pairs(a, c, causal) for a, c in zip(sq, sk))
            assert flops.mha_pairs(cu_q, cu_k, causal) == expected


def test_mha_pairs_long_sequences_closed_form():
    n = 131072
    assert flops.mha_pairs([0, n], [0, n], causal=True) == n * (n + 1) // 2


def test_mha_flops():
    cu = [0, 3]
    cuk = [0, 5]
    # N = 12 causal; h=2, d=4, dv=3
    assert flops.mha_flops(cu, cuk, 2, 4, 3, causal=True) == 2 * 12 * 2 * 7
    assert flops.mha_flops(cu, cuk, 2, 4, 3, causal=True, backward=True) == 2 * 12 * 2 * (12 + 6)
    assert flops.mha_flops(cu, cuk, 2, 4, 3, causal=False) == 2 * 15 * 2 * 7
    with pytest.raises(ValueError, match="cu_seqlens"):
        flops.mha_pairs([0, 3], [0, 2, 4], causal=False)
