"""Float32 reference of sparse MLA prefill (SPEC §2.3).

For query t and head h: index k < topk (and k < topk_length[t] if given) with value p is valid iff
0 <= p < s_kv; score ``sm_scale * <q[t, h], kv[p, 0]>``; V is the first d_v dims of kv (all 512
for d_qk 512). Returns out (sink applied), max_logits and lse in natural-log units; a query with
no valid index gets out 0, max_logits -inf and lse +inf. Queries and indices are walked in chunks.
"""
from __future__ import annotations

import torch

from .._online_softmax import REF_BUDGET_ELEMS, OnlineSoftmax, chunk_size


def sparse_prefill_ref(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor,
                       sm_scale: float, d_v: int = 512,
                       attn_sink: torch.Tensor | None = None,
                       topk_length: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``out`` ``[s_q, h_q, d_v]``, ``max_logits`` and ``lse`` ``[s_q, h_q]``, float32."""
    s_q, h_q, d_qk = q.shape
    s_kv = kv.shape[0]
    topk = indices.shape[-1]
    device = q.device
    out = torch.empty(s_q, h_q, d_v, dtype=torch.float32, device=device)
    max_logits = torch.empty(s_q, h_q, dtype=torch.float32, device=device)
    lse = torch.empty(s_q, h_q, dtype=torch.float32, device=device)
    sink = None if attn_sink is None else attn_sink.to(device).float()  # [h_q]
    kv2 = kv[:, 0, :]  # [s_kv, d_qk]
    # per (query, index slot): gathered token (d_qk) + scores and probabilities (2 * h_q)
    per_slot = d_qk + 2 * h_q
    k_chunk = chunk_size(topk, per_slot, REF_BUDGET_ELEMS // 4)
    q_chunk = chunk_size(s_q, k_chunk * per_slot, REF_BUDGET_ELEMS)
    for q0 in range(0, s_q, q_chunk):
        q1 = min(q0 + q_chunk, s_q)
        qf = q[q0:q1].float()  # [cq, h_q, d_qk]
        state = OnlineSoftmax((q1 - q0, h_q), d_v, device)
        for k0 in range(0, topk, k_chunk):
            ids = indices[q0:q1, 0, k0:k0 + k_chunk].to(torch.int64)  # [cq, c]
            valid = (ids >= 0) & (ids < s_kv)
            if topk_length is not None:
                slot = torch.arange(k0, k0 + ids.shape[-1], device=device)  # [c]
                valid = valid & (slot[None, :] < topk_length[q0:q1].to(device)[:, None])
            safe = torch.where(valid, ids, torch.zeros_like(ids))
            keys = kv2[safe].float() if s_kv > 0 else torch.zeros(
                *ids.shape, d_qk, dtype=torch.float32, device=device)  # [cq, c, d_qk]
            keys = torch.where(valid[..., None], keys, torch.zeros_like(keys))
            scores = torch.matmul(qf, keys.transpose(-1, -2)) * sm_scale  # [cq, h_q, c]
            scores = torch.where(valid[:, None, :], scores,
                                 torch.full_like(scores, float("-inf")))
            v = keys[..., :d_v]  # [cq, c, d_v]
            state.update(scores, lambda p: torch.matmul(p, v))
        out[q0:q1] = state.out(sink)
        max_logits[q0:q1] = state.m
        lse[q0:q1] = state.lse()
    return out, max_logits, lse
