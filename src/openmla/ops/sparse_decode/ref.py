"""Float32 reference of sparse MLA decode over an FP8 KV cache (SPEC §2.2).

For request i, token t, head h the attended set is the main cache's indices[i, t, :T] followed by
the extra cache's extra_indices[i, t, :T'] (T, T' from topk_length / extra_topk_length or the full
width). A physical index p = page * pbs + offset addresses a token of its own cache; -1 (and any
p < 0 or p >= num_blocks * pbs) is invalid. Tokens are dequantized to bf16 exactly as the kernels
see them; scores, softmax and output are float32. The sink scales the output by
1 / (1 + exp(sink - lse)) and never enters lse. Indices are walked in chunks (bounded memory).
"""
from __future__ import annotations

import torch

from ...kvcache.fp8 import gather_dequant
from .._online_softmax import REF_BUDGET_ELEMS, OnlineSoftmax, chunk_size


def _attend_cache(state: OnlineSoftmax, qf: torch.Tensor, cache: torch.Tensor,
                  indices: torch.Tensor, length: torch.Tensor | None, sm_scale: float,
                  head_dim_v: int) -> None:
    b, s_q, h_q, d_qk = qf.shape
    topk = indices.shape[-1]
    num_tokens = cache.shape[0] * cache.shape[1]
    device = qf.device
    # per index slot: dequantized token (d_qk) + scores and probabilities (2 * h_q)
    chunk = chunk_size(topk, b * s_q * (d_qk + 2 * h_q), REF_BUDGET_ELEMS)
    for start in range(0, topk, chunk):
        ids = indices[:, :, start:start + chunk].to(torch.int64)  # [b, s_q, c]
        valid = (ids >= 0) & (ids < num_tokens)  # [b, s_q, c]
        if length is not None:
            slot = torch.arange(start, start + ids.shape[-1], device=device)  # [c]
            valid = valid & (slot[None, None, :] < length.to(device)[:, None, None])
        safe = torch.where(valid, ids, torch.zeros_like(ids))
        kv = gather_dequant(cache, safe.flatten(), d_qk).float()  # [b*s_q*c, d_qk]
        kv = kv.view(b, s_q, -1, d_qk)  # [b, s_q, c, d_qk]
        kv = torch.where(valid[..., None], kv, torch.zeros_like(kv))
        scores = torch.matmul(qf, kv.transpose(-1, -2)) * sm_scale  # [b, s_q, h_q, c]
        scores = torch.where(valid[:, :, None, :], scores, torch.full_like(scores, float("-inf")))
        v = kv[..., :head_dim_v]  # [b, s_q, c, dv]
        state.update(scores, lambda p: torch.matmul(p, v))


def sparse_decode_ref(q: torch.Tensor, k_cache: torch.Tensor, indices: torch.Tensor,
                      sm_scale: float, head_dim_v: int = 512,
                      attn_sink: torch.Tensor | None = None,
                      topk_length: torch.Tensor | None = None,
                      extra_k_cache: torch.Tensor | None = None,
                      extra_indices_in_kvcache: torch.Tensor | None = None,
                      extra_topk_length: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``out`` ``[b, s_q, h_q, head_dim_v]`` and ``lse`` ``[b, h_q, s_q]``, float32;
    lonely rows give out 0 and lse +inf (whatever the sink)."""
    b, s_q, h_q, d_qk = q.shape
    qf = q.float()  # [b, s_q, h_q, d_qk]
    state = OnlineSoftmax((b, s_q, h_q), head_dim_v, q.device)
    if k_cache.shape[0] * k_cache.shape[1] > 0:
        _attend_cache(state, qf, k_cache, indices, topk_length, sm_scale, head_dim_v)
    if extra_k_cache is not None and extra_k_cache.shape[0] * extra_k_cache.shape[1] > 0:
        _attend_cache(state, qf, extra_k_cache, extra_indices_in_kvcache, extra_topk_length,
                      sm_scale, head_dim_v)
    sink = None if attn_sink is None else attn_sink.to(q.device).float()  # [h_q]
    out = state.out(sink)  # [b, s_q, h_q, dv]
    lse = state.lse().transpose(1, 2)  # [b, h_q, s_q] view of [b, s_q, h_q]
    return out, lse
