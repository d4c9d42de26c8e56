"""Dense MHA varlen prefill, forward and backward (SPEC §1.6, §2.5)."""
from ...dispatch import register
from .ref import mha_prefill_bwd_ref, mha_prefill_fwd_ref


def run_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal):
    """Forward: out in q's dtype, lse ``[total_q, h_q]`` with strides ``(1, total_q)``."""
    out, lse = mha_prefill_fwd_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)
    return out.to(q.dtype), lse.t().contiguous().t()


def run_reference_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                           causal):
    dq, dk, dv = mha_prefill_bwd_ref(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                     softmax_scale, causal)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


register("mha_prefill", "reference", run_reference, lambda info, problem: True,
         backward=run_reference_backward)
