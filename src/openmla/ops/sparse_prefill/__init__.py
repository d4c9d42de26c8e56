"""Sparse MLA prefill over a flat BF16 KV (SPEC §2.3)."""
import torch

from ...dispatch import register
from .ref import sparse_prefill_ref


def run_reference(q, kv, indices, sm_scale, d_v, attn_sink=None, topk_length=None):
    """The reference as a backend: bf16 out, float32 max_logits and lse."""
    out, max_logits, lse = sparse_prefill_ref(q, kv, indices, sm_scale, d_v, attn_sink,
                                              topk_length)
    return out.to(torch.bfloat16), max_logits, lse


register("sparse_prefill", "reference", run_reference, lambda info, problem: True)
