"""Sparse MLA prefill over a flat BF16 KV (SPEC §2.3)."""
import torch

from ...device import gluon_available, interpreting, triton_available
from ...dispatch import register
from . import gluon_library  # noqa: F401  (registers openmla::sparse_prefill_gluon)
from .ref import sparse_prefill_ref

D_QK_KERNEL = (512, 576)  # MODEL1 (V = all 512 dims) and V3.2 (512 latent + 64 RoPE)


def run_reference(q, kv, indices, sm_scale, d_v, attn_sink=None, topk_length=None):
    """The reference as a backend: bf16 out, float32 max_logits and lse."""
    out, max_logits, lse = sparse_prefill_ref(q, kv, indices, sm_scale, d_v, attn_sink,
                                              topk_length)
    return out.to(torch.bfloat16), max_logits, lse


def run_triton(q, kv, indices, sm_scale, d_v, attn_sink=None, topk_length=None):
    from .launch import sparse_prefill_triton  # imports triton only when a kernel runs

    return sparse_prefill_triton(q, kv, indices, sm_scale, d_v, attn_sink, topk_length)


def run_gluon(q, kv, indices, sm_scale, d_v, attn_sink=None, topk_length=None):
    from .gluon_launch import gluon_ok, sparse_prefill_gluon
    from .launch import sparse_prefill_triton

    if not gluon_ok(q, kv):  # unaligned strides or no KV row: the portable kernel takes them
        return sparse_prefill_triton(q, kv, indices, sm_scale, d_v, attn_sink, topk_length)
    return sparse_prefill_gluon(q, kv, indices, sm_scale, d_v, attn_sink, topk_length)


def gluon_supports(info, problem) -> bool:
    """Hopper, Gluon of the supported Triton, d_qk 512 or 576, any h_q (64-head work items; a
    last partial block masks its rows)."""
    if not (info.is_hopper and not interpreting() and gluon_available()):
        return False
    return problem.get("d_qk", 576) in D_QK_KERNEL


def triton_supports(info, problem) -> bool:
    """CUDA / ROCm devices, or CPU tensors under the Triton interpreter; d_qk 512 or 576."""
    on_device = info.kind == "cuda" or (info.kind == "cpu" and interpreting())
    return on_device and problem.get("d_qk", 576) in D_QK_KERNEL and triton_available()


register("sparse_prefill", "reference", run_reference, lambda info, problem: True)
register("sparse_prefill", "triton", run_triton, triton_supports)
register("sparse_prefill", "gluon", run_gluon, gluon_supports)
