"""Float32 reference of dense MHA varlen prefill, forward and backward (SPEC §2.5).

Per sequence n (queries ``cu_q[n]:cu_q[n+1]``, keys ``cu_k[n]:cu_k[n+1]``), local query i and key j
are valid iff j < Sk and, when causal, j <= i + Sk - Sq (bottom-right aligned). Query head h uses
KV head h // (h_q / h_kv). Rows with no valid key give out 0 and lse -inf. The backward is the
standard one (dlse ignored); KV-head gradients sum over their query-head group. Query rows are
walked in chunks so memory stays bounded; reads ``cu_seqlens`` on the host (prefill is not on the
graph-captured decode path).
"""
from __future__ import annotations

import torch

from .._online_softmax import REF_BUDGET_ELEMS, chunk_size


def _seq_bounds(cu_q: torch.Tensor, cu_k: torch.Tensor) -> list[tuple[int, int, int, int]]:
    qs, ks = cu_q.tolist(), cu_k.tolist()
    return [(qs[n], qs[n + 1], ks[n], ks[n + 1]) for n in range(len(qs) - 1)]


def _masked_scores(qc: torch.Tensor, k: torch.Tensor, scale: float, row0: int, s_q: int,
                   s_k: int, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[h, cq, Sk]`` with -inf at masked pairs, and the validity mask."""
    scores = torch.einsum("qhd,khd->hqk", qc, k) * scale  # [h, cq, Sk]
    rows = torch.arange(row0, row0 + qc.shape[0], device=qc.device)  # [cq]
    cols = torch.arange(s_k, device=qc.device)  # [Sk]
    valid = torch.ones(qc.shape[0], s_k, dtype=torch.bool, device=qc.device)
    if causal:
        valid = cols[None, :] <= rows[:, None] + (s_k - s_q)  # [cq, Sk]
    scores = torch.where(valid[None], scores, torch.full_like(scores, float("-inf")))
    return scores, valid


def _probs(scores: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``exp(s - lse)``; 0 for masked pairs and for rows with no valid key (lse = -inf)."""
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)  # [h, cq]
    p = torch.exp(scores - safe.unsqueeze(-1))
    return torch.where(torch.isinf(lse).unsqueeze(-1), torch.zeros_like(p), p)


def _row_chunk(s_q: int, s_k: int, h: int) -> int:
    # scores, probabilities and a gradient of [h, cq, Sk] live at once
    return chunk_size(s_q, 3 * h * max(s_k, 1), REF_BUDGET_ELEMS)


def mha_prefill_fwd_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                        softmax_scale: float, causal: bool,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``q [total_q, h_q, d]``, ``k [total_k, h_kv, d]``, ``v [total_k, h_kv, dv]`` →
    ``out [total_q, h_q, dv]`` and ``lse [total_q, h_q]``, float32."""
    total_q, h_q, _ = q.shape
    h_kv, d_v = k.shape[1], v.shape[-1]
    group = h_q // h_kv
    out = torch.zeros(total_q, h_q, d_v, dtype=torch.float32, device=q.device)
    lse = torch.full((total_q, h_q), float("-inf"), dtype=torch.float32, device=q.device)
    for q0, q1, k0, k1 in _seq_bounds(cu_seqlens_q, cu_seqlens_k):
        s_q, s_k = q1 - q0, k1 - k0
        if s_q <= 0 or s_k <= 0:
            continue
        kf = k[k0:k1].float().repeat_interleave(group, dim=1)  # [Sk, h_q, d]
        vf = v[k0:k1].float().repeat_interleave(group, dim=1)  # [Sk, h_q, dv]
        step = _row_chunk(s_q, s_k, h_q)
        for r0 in range(0, s_q, step):
            qc = q[q0 + r0:q0 + min(r0 + step, s_q)].float()  # [cq, h_q, d]
            scores, _ = _masked_scores(qc, kf, softmax_scale, r0, s_q, s_k, causal)
            row_lse = torch.logsumexp(scores, dim=-1)  # [h, cq]; -inf when nothing is valid
            p = _probs(scores, row_lse)
            out[q0 + r0:q0 + r0 + qc.shape[0]] = torch.einsum("hqk,khd->qhd", p, vf)
            lse[q0 + r0:q0 + r0 + qc.shape[0]] = row_lse.t()
    return out, lse


def mha_prefill_bwd_ref(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        out: torch.Tensor, lse: torch.Tensor, cu_seqlens_q: torch.Tensor,
                        cu_seqlens_k: torch.Tensor, softmax_scale: float, causal: bool,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dq, dk, dv)`` in float32 given ``dout`` and the forward's ``out``/``lse``."""
    total_q, h_q, _ = q.shape
    h_kv = k.shape[1]
    group = h_q // h_kv
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=q.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=q.device)
    for q0, q1, k0, k1 in _seq_bounds(cu_seqlens_q, cu_seqlens_k):
        s_q, s_k = q1 - q0, k1 - k0
        if s_q <= 0 or s_k <= 0:
            continue
        kf = k[k0:k1].float().repeat_interleave(group, dim=1)  # [Sk, h_q, d]
        vf = v[k0:k1].float().repeat_interleave(group, dim=1)  # [Sk, h_q, dv]
        dk_h = torch.zeros_like(kf)  # [Sk, h_q, d]
        dv_h = torch.zeros_like(vf)  # [Sk, h_q, dv]
        step = _row_chunk(s_q, s_k, h_q)
        for r0 in range(0, s_q, step):
            sl = slice(q0 + r0, q0 + min(r0 + step, s_q))
            qc, doc = q[sl].float(), dout[sl].float()  # [cq, h, d], [cq, h, dv]
            scores, _ = _masked_scores(qc, kf, softmax_scale, r0, s_q, s_k, causal)
            p = _probs(scores, lse[sl].float().t())  # [h, cq, Sk]
            delta = (doc * out[sl].float()).sum(-1).t()  # [h, cq]
            dp = torch.einsum("qhd,khd->hqk", doc, vf)  # [h, cq, Sk]
            ds = p * (dp - delta.unsqueeze(-1))  # [h, cq, Sk]
            dv_h += torch.einsum("hqk,qhd->khd", p, doc)
            dq[sl] = torch.einsum("hqk,khd->qhd", ds, kf) * softmax_scale
            dk_h += torch.einsum("hqk,qhd->khd", ds, qc) * softmax_scale
        dk[k0:k1] = dk_h.unflatten(1, (h_kv, group)).sum(2)
        dv[k0:k1] = dv_h.unflatten(1, (h_kv, group)).sum(2)
    return dq, dk, dv
