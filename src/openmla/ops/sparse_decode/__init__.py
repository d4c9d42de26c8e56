"""Sparse MLA decode over the FP8 KV cache (SPEC §2.2, §2.4)."""
import torch

from ...device import gluon_available, interpreting, triton_available
from ...dispatch import register
from . import gluon_library  # noqa: F401  (registers openmla::sparse_decode_gluon)
from .ref import sparse_decode_ref

D_QK_KERNEL = (576, 512)  # V32 and MODEL1 layouts


def run_reference(q, k_cache, indices, sm_scale, head_dim_v, attn_sink=None, topk_length=None,
                  extra_k_cache=None, extra_indices_in_kvcache=None, extra_topk_length=None,
                  sched=None):
    """The reference as a backend: bf16 out, lse ``[b, h_q, s_q]`` as a transposed view of a
    contiguous ``[b, s_q, h_q]`` buffer (FlashMLA's layout)."""
    out, lse = sparse_decode_ref(q, k_cache, indices, sm_scale, head_dim_v, attn_sink,
                                 topk_length, extra_k_cache, extra_indices_in_kvcache,
                                 extra_topk_length)
    return out.to(torch.bfloat16), lse.transpose(1, 2).contiguous().transpose(1, 2)


def run_triton(q, k_cache, indices, sm_scale, head_dim_v, attn_sink=None, topk_length=None,
               extra_k_cache=None, extra_indices_in_kvcache=None, extra_topk_length=None,
               sched=None):
    from .launch import sparse_decode_triton  # imports triton only when a kernel runs

    return sparse_decode_triton(q, k_cache, indices, sm_scale, head_dim_v, attn_sink,
                                topk_length, extra_k_cache, extra_indices_in_kvcache,
                                extra_topk_length, sched)


def run_gluon(q, k_cache, indices, sm_scale, head_dim_v, attn_sink=None, topk_length=None,
              extra_k_cache=None, extra_indices_in_kvcache=None, extra_topk_length=None,
              sched=None):
    # calls the Gluon kernel does not take (MODEL1, extra cache) run the portable kernel
    from .gluon_launch import sparse_decode_gluon

    return sparse_decode_gluon(q, k_cache, indices, sm_scale, head_dim_v, attn_sink, topk_length,
                               extra_k_cache, extra_indices_in_kvcache, extra_topk_length, sched)


def gluon_supports(info, problem) -> bool:
    """Hopper, not interpreting, Gluon of the targeted Triton; the V3.2 layout (d_qk 576)
    without an extra cache, any h_q (tiles of 64 heads, fewer padded). Other calls take the
    portable kernel (forcing the Gluon backend on them is refused by the dispatcher)."""
    if not (info.is_hopper and not interpreting() and gluon_available()):
        return False
    if not problem:  # `openmla info`: the device alone
        return True
    return problem.get("d_qk", 576) == 576 and not problem.get("has_extra", False)


def triton_supports(info, problem) -> bool:
    """CUDA / ROCm devices, or CPU tensors under the Triton interpreter; both FP8 layouts."""
    on_device = info.kind == "cuda" or (info.kind == "cpu" and interpreting())
    return (on_device and problem.get("d_qk", D_QK_KERNEL[0]) in D_QK_KERNEL
            and triton_available())


register("sparse_decode", "reference", run_reference, lambda info, problem: True)
register("sparse_decode", "triton", run_triton, triton_supports)
register("sparse_decode", "gluon", run_gluon, gluon_supports)
