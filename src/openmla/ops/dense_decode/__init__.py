"""Dense MLA decode over a paged BF16/FP16 KV cache (SPEC §2.1)."""
from ...dispatch import register
from .ref import dense_decode_ref


def run_reference(q, k_cache, block_table, cache_seqlens, softmax_scale, causal, head_dim_v,
                  sched=None):
    """The reference as a backend: FlashMLA's output dtype and layout."""
    out, lse = dense_decode_ref(q, k_cache, block_table, cache_seqlens, softmax_scale, causal,
                                head_dim_v)
    return out.to(q.dtype), lse


register("dense_decode", "reference", run_reference, lambda info, problem: True)
