"""Dense MLA decode over a paged BF16/FP16 KV cache (SPEC §2.1)."""
from ...device import gluon_available, interpreting, triton_available
from ...dispatch import register
from .ref import dense_decode_ref

D_QK_KERNEL = 576  # the kernels take DeepSeek V3's 512 latent + 64 RoPE dims


def run_reference(q, k_cache, block_table, cache_seqlens, softmax_scale, causal, head_dim_v,
                  sched=None):
    """The reference as a backend: FlashMLA's output dtype and layout."""
    out, lse = dense_decode_ref(q, k_cache, block_table, cache_seqlens, softmax_scale, causal,
                                head_dim_v)
    return out.to(q.dtype), lse


def run_triton(q, k_cache, block_table, cache_seqlens, softmax_scale, causal, head_dim_v,
               sched=None):
    from .launch import dense_decode_triton  # imports triton only when a kernel runs

    return dense_decode_triton(q, k_cache, block_table, cache_seqlens, softmax_scale, causal,
                               head_dim_v, sched)


def run_gluon(q, k_cache, block_table, cache_seqlens, softmax_scale, causal, head_dim_v,
              sched=None):
    from .launch import dense_decode_gluon, dense_decode_triton, gluon_ok

    if not gluon_ok(q, k_cache):  # e.g. padded pages: the portable kernel takes them
        return dense_decode_triton(q, k_cache, block_table, cache_seqlens, softmax_scale, causal,
                                   head_dim_v, sched)
    return dense_decode_gluon(q, k_cache, block_table, cache_seqlens, softmax_scale, causal,
                              head_dim_v, sched)


def gluon_supports(info, problem) -> bool:
    """Hopper, one KV head, pages of whole 64-key tiles (others run the portable kernel).

    Requests with fewer than 64 query rows (s_q * h_q) are padded to one 64-row wgmma tile: the
    extra rows read neighbouring rows of Q (zeros past its end) and are never written."""
    if not (info.is_hopper and not interpreting() and gluon_available()):
        return False
    if not problem:  # `openmla info`: the device alone
        return True
    return (problem.get("d") == D_QK_KERNEL and problem.get("h_kv") == 1
            and problem.get("page_block_size", 0) % 64 == 0)


def triton_supports(info, problem) -> bool:
    """CUDA / ROCm devices, or CPU tensors under the Triton interpreter; d_qk 576."""
    on_device = info.kind == "cuda" or (info.kind == "cpu" and interpreting())
    return on_device and problem.get("d", D_QK_KERNEL) == D_QK_KERNEL and triton_available()


register("dense_decode", "reference", run_reference, lambda info, problem: True)
register("dense_decode", "triton", run_triton, triton_supports)
register("dense_decode", "gluon", run_gluon, gluon_supports)
