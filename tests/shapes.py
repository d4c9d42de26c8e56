"""The three test tiers in one place.

* CPU: tiny shapes, each case well under a second on a 2-core CPU (CI runs these).
* GPU: FlashMLA's correctness and corner matrix (SPEC §4.2-§4.5), cut to a size that runs in
  minutes on one GPU; marked ``gpu``.
* PROD: the production shape of each op (V3.2: h_q 128, d_qk 576, topk 2048); marked ``gpu``.
"""
# dense decode: (b, s_q, h_q, h_kv, s_k, page_block_size, causal, varlen, zero_seqlens)
DENSE_DECODE_CPU = [
    (2, 1, 4, 1, 40, 16, False, False, False),
    (3, 2, 6, 2, 37, 1, True, True, True),
    (2, 3, 3, 1, 20, 7, True, True, False),
    (1, 2, 8, 8, 70, 64, False, False, False),
    (2, 1, 2, 1, 5, 256, False, True, True),
    (3, 2, 32, 1, 150, 64, True, True, True),  # 64 rows, h_kv 1, page 64: descriptor kernel
    (2, 1, 64, 1, 300, 128, False, True, False),
]
DENSE_DECODE_GPU = [
    (b, s_q, h_q, h_kv, s_k, pbs, causal, varlen, zero)
    for b in (1, 74)
    for s_q in (1, 2, 4)
    for (h_q, h_kv) in ((16, 1), (64, 2), (128, 1))
    for s_k in (20, 1000)
    for (pbs, causal, varlen, zero) in ((64, True, True, True), (16, False, False, False))
]
DENSE_DECODE_PROD = [(128, 2, 128, 1, 8192, 64, True, True, False)]
# the ends of FlashMLA's s_k range (SPEC §4.2: 1 to 16k) and its b = 128, both page sizes and
# both kernels' row tilings (16 heads: one padded tile; 128: two tiles)
DENSE_DECODE_RANGE = [
    (b, s_q, h_q, 1, s_k, pbs, causal, varlen, zero)
    for (b, s_k) in ((128, 1), (128, 16384), (1, 16384))
    for (s_q, h_q) in ((1, 16), (4, 128))
    for (pbs, causal, varlen, zero) in ((64, True, True, True), (16, False, False, False))
]

# sparse decode: (d_qk, b, s_q, h_q, s_k, topk, pbs, extra (topk, s_k, pbs) or None,
#                 topk_length, extra_topk_length, all_invalid, zero_seqlens)
SPARSE_DECODE_CPU = [
    (576, 2, 1, 4, 40, 16, 4, None, False, False, False, False),
    (576, 2, 2, 3, 30, 24, 61, None, True, False, False, True),
    (512, 2, 1, 2, 40, 8, 2, (16, 50, 5), True, True, False, False),
    (512, 1, 3, 4, 20, 32, 1, (8, 30, 64), False, False, False, False),
    (576, 2, 2, 2, 20, 8, 3, None, False, False, True, False),
]
SPARSE_DECODE_GPU = [
    (d_qk, b, s_q, h_q, s_k, topk, pbs, extra, tl, etl, False, False)
    for d_qk in (576, 512)
    for b in (4, 74)
    for s_q in (1, 3)
    for h_q in (16, 64, 128)
    for (s_k, topk, pbs) in ((512, 64, 2), (1024, 576, 61), (2046, 2048, 64))
    for (extra, tl, etl) in (((None, False, False),) if d_qk == 576 else
                             ((None, True, False), ((512, 1024, 64), True, True)))
]
SPARSE_DECODE_PROD = [(576, 128, 2, 128, 32768, 2048, 64, None, False, False, False, False)]

# sparse prefill: (d_qk, s_q, s_kv, h_q, topk, topk_length, sink, all_invalid)
SPARSE_PREFILL_CPU = [
    (576, 5, 40, 4, 16, False, False, False),
    (512, 4, 10, 3, 24, True, True, False),
    (576, 6, 30, 2, 8, True, True, True),
    (576, 3, 1, 1, 4, False, True, False),
]
SPARSE_PREFILL_GPU = [
    (d_qk, s_q, s_kv, h_q, topk, tl, sink, inv)
    for d_qk in (576, 512)
    for h_q in (16, 64, 128)
    for (s_kv, topk) in ((128, 128), (592, 128), (1592, 384), (95, 128), (114, 384))
    for s_q in (1, 62)
    for (tl, sink, inv) in ((False, False, False), (True, True, True))
]
SPARSE_PREFILL_PROD = [(576, 4096, 32768, 128, 2048, False, True, False)]

# MHA: (b, mean_sq, mean_sk, h, h_kv, d, dv, causal, varlen)
MHA_CPU = [
    (2, 5, 7, 2, 2, 16, 8, True, True),
    (2, 6, 4, 4, 2, 24, 16, True, False),  # Sk < Sq: lonely causal rows
    (3, 4, 4, 2, 1, 16, 16, False, True),
]
MHA_GPU = [
    (2, sq, sk, h, hkv, d, dv, causal, varlen)
    for (sq, sk) in ((512, 512), (300, 1000))
    for (h, hkv) in ((16, 16), (32, 4))
    for (d, dv) in ((128, 128), (192, 128))
    for causal in (False, True)
    for varlen in (False, True)
]
