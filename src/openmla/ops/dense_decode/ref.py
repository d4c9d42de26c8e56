"""Float32 reference of dense MLA decode (SPEC §2.1): the executable spec, any device.

For request i, KV head g, query token t and head h (g = h // (h_q / h_kv)) with L =
cache_seqlens[i]: key j < L is ``k_cache[block_table[i, j // pbs], j % pbs, g]`` (all d_qk dims),
its value the first ``head_dim_v`` dims; bottom-right causal when ``causal`` and s_q > 1.
Keys are walked in chunks with an online softmax, so memory stays bounded, and no value is read
back to the host (no synchronisation). Block-table entries past a sequence are never used to
index, and NaN in unused cache rows never reaches the result.
"""
from __future__ import annotations

import torch

from .._online_softmax import REF_BUDGET_ELEMS, OnlineSoftmax, chunk_size


def dense_decode_ref(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor,
                     cache_seqlens: torch.Tensor, softmax_scale: float, causal: bool,
                     head_dim_v: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``out`` ``[b, s_q, h_q, head_dim_v]`` and ``lse`` ``[b, h_q, s_q]``, float32;
    lonely rows (nothing to attend) give out 0 and lse +inf."""
    b, s_q, h_q, d = q.shape
    num_blocks, pbs, h_kv, _ = k_cache.shape
    group = h_q // h_kv
    rows = s_q * group  # query rows per KV head: token-major, then head
    causal = bool(causal) and s_q > 1
    device = q.device

    qf = q.float().reshape(b, s_q, h_kv, group, d).permute(0, 2, 1, 3, 4)
    qf = qf.reshape(b, h_kv, rows, d)  # [b, h_kv, rows, d]
    seqlens = cache_seqlens.to(device=device, dtype=torch.int64)  # [b]
    token_of_row = torch.arange(s_q, device=device).repeat_interleave(group)  # [rows]
    max_len = block_table.shape[1] * pbs
    state = OnlineSoftmax((b, h_kv, rows), head_dim_v, device)

    if num_blocks > 0 and max_len > 0:
        # per key: gathered row (b*h_kv*d) + scores and probabilities (2*b*h_kv*rows)
        chunk = chunk_size(max_len, b * h_kv * (d + 2 * rows), REF_BUDGET_ELEMS, align=pbs)
        for start in range(0, max_len, chunk):
            pos = torch.arange(start, min(start + chunk, max_len), device=device)  # [c]
            in_seq = pos.unsqueeze(0) < seqlens.unsqueeze(1)  # [b, c]
            page = block_table[:, pos // pbs].to(torch.int64)  # [b, c]
            page = torch.where(in_seq, page, torch.zeros_like(page))  # never index with garbage
            k = k_cache[page, (pos % pbs).unsqueeze(0)].float()  # [b, c, h_kv, d]
            k = torch.where(in_seq[:, :, None, None], k, torch.zeros_like(k))
            k = k.permute(0, 2, 1, 3)  # [b, h_kv, c, d]
            scores = torch.matmul(qf, k.transpose(-1, -2)) * softmax_scale  # [b, h_kv, rows, c]
            valid = in_seq[:, None, None, :]  # [b, 1, 1, c]
            if causal:
                # bottom-right: token t sees keys j <= L - s_q + t
                last = seqlens[:, None] - s_q + token_of_row[None, :]  # [b, rows]
                valid = valid & (pos[None, None, None, :] <= last[:, None, :, None])
            scores = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
            v = k[..., :head_dim_v]  # [b, h_kv, c, dv]
            state.update(scores, lambda p: torch.matmul(p, v))

    out = state.out()  # [b, h_kv, rows, dv]
    lse = state.lse()  # [b, h_kv, rows]
    out = out.reshape(b, h_kv, s_q, group, head_dim_v).permute(0, 2, 1, 3, 4)
    out = out.reshape(b, s_q, h_q, head_dim_v)
    lse = lse.reshape(b, h_kv, s_q, group).permute(0, 1, 3, 2).reshape(b, h_q, s_q)
    return out.contiguous(), lse.contiguous()
