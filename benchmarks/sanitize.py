"""Every GPU kernel of openmla once, on small shapes with the corner cases, for
compute-sanitizer (no timing): run it as

    PYTHONPATH=src compute-sanitizer --tool memcheck --error-exitcode 1 \
        python3 benchmarks/sanitize.py [op ...]

Each case forces one backend through the environment and checks the result against the
reference too, so a case that reads out of bounds and happens to get the right answer is still
reported by the sanitizer, and one that gets a wrong answer fails here."""
import os
import sys

import torch

import openmla
from openmla.ops.dense_decode.ref import dense_decode_ref
from openmla.ops.mha_prefill.ref import mha_prefill_fwd_ref
from openmla.ops.sparse_decode.ref import sparse_decode_ref
from openmla.ops.sparse_prefill.ref import sparse_prefill_ref
from openmla.testing import generate as gen
from openmla.testing.compare import TOLERANCES, compare

DEV = os.environ.get("OPENMLA_SANITIZE_DEVICE", "cuda")


def _dense(backend, b, s_q, h_q, s_k, pbs, causal, h_kv=1):
    os.environ["OPENMLA_BACKEND_DENSE_DECODE"] = backend
    case = gen.dense_decode_inputs(b, s_q, h_q, s_k, h_kv=h_kv, page_block_size=pbs,
                                   causal=causal, varlen=True, zero_seqlens=True, device=DEV,
                                   seed=s_k)
    out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                              tile_scheduler_metadata=openmla.get_mla_metadata()[0])
    r_out, r_lse = dense_decode_ref(**gen.reference_kwargs("dense_decode", case))
    tol = TOLERANCES["dense_decode"]
    return compare(out, r_out.to(out.dtype), tol["out"]) or compare(lse, r_lse, tol["lse"])


def _sparse_decode(backend, b, s_q, h_q, s_k, topk, d_qk, pbs, extra, ring="1", raw="0"):
    os.environ["OPENMLA_BACKEND_SPARSE_DECODE"] = backend
    os.environ["OPENMLA_SPARSE_RAW"] = raw  # h_q <= 16: the raw-stage kernel or not
    os.environ["OPENMLA_SPARSE_RING"] = ring  # then: the cp.async ring kernel or not
    case = gen.sparse_decode_inputs(b, s_q, h_q, s_k, topk, d_qk=d_qk, page_block_size=pbs,
                                    with_topk_length=True, extra_topk=64 if extra else None,
                                    extra_s_k=300 if extra else None, device=DEV, seed=topk)
    out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                              tile_scheduler_metadata=openmla.get_mla_metadata()[0])
    r_out, r_lse = sparse_decode_ref(**gen.reference_kwargs("sparse_decode", case))
    tol = TOLERANCES["sparse_decode"]
    return compare(out, r_out.to(out.dtype), tol["out"]) or compare(lse, r_lse, tol["lse"])


def _sparse_prefill(backend, s_q, s_kv, h_q, topk, d_qk):
    os.environ["OPENMLA_BACKEND_SPARSE_PREFILL"] = backend
    case = gen.sparse_prefill_inputs(s_q, s_kv, h_q, topk, d_qk=d_qk, with_topk_length=True,
                                     with_attn_sink=True, invalid_row_fraction=0.2, device=DEV,
                                     seed=topk)
    out, ml, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    r_out, r_ml, r_lse = sparse_prefill_ref(**gen.reference_kwargs("sparse_prefill", case))
    tol = TOLERANCES["sparse_prefill"]
    return (compare(out, r_out.to(out.dtype), tol["out"]) or compare(lse, r_lse, tol["lse"])
            or compare(ml, r_ml, tol["max_logits"]))


def _mha(backend, sq, sk, h, h_kv, d, dv, causal):
    os.environ["OPENMLA_BACKEND_MHA_PREFILL"] = backend
    case = gen.mha_inputs(3, sq, sk, h, h_kv=h_kv, d=d, dv=dv, causal=causal, varlen=True,
                          requires_grad=True, device=DEV, seed=sq)
    out, lse = openmla.flash_attn_varlen_func(**gen.public_kwargs(case))
    grads = torch.autograd.grad(out, (case["q"], case["k"], case["v"]),
                                case["extras"]["grad_out"])
    r_out, r_lse = mha_prefill_fwd_ref(**gen.reference_kwargs("mha_prefill", case))
    tol = TOLERANCES["mha_prefill"]
    bad = compare(out, r_out.to(out.dtype), tol["out"]) or compare(lse, r_lse, tol["lse"])
    if bad is None and not all(bool(torch.isfinite(g).all()) for g in grads):
        bad = "non-finite gradient"
    return bad


def _mha_bwd_schedule(sq, sk, h, h_kv, d, causal, lag):
    """The Gluon backward alone with the given dQ schedule (the op takes the default one)."""
    from openmla.ops.mha_prefill.gluon_bwd_launch import mha_prefill_bwd_gluon_kernel

    case = gen.mha_inputs(3, sq, sk, h, h_kv=h_kv, d=d, dv=128, causal=causal, varlen=True,
                          device=DEV, seed=sq)
    rk = gen.reference_kwargs("mha_prefill", case)
    r_out, r_lse = mha_prefill_fwd_ref(**rk)
    grads = mha_prefill_bwd_gluon_kernel(
        case["extras"]["grad_out"], case["q"], case["k"], case["v"], r_out.to(case["q"].dtype),
        r_lse, rk["cu_seqlens_q"], rk["cu_seqlens_k"], rk["softmax_scale"], causal, lag=lag)
    return None if all(bool(torch.isfinite(g).all()) for g in grads) else "non-finite gradient"


CASES = {
    "dense_decode": [
        ("triton pointer pbs16 h_kv2", lambda: _dense("triton", 3, 2, 32, 200, 16, True, 2)),
        ("triton tma", lambda: _dense("triton", 3, 1, 64, 300, 64, False)),
        ("gluon seesaw (128 rows)", lambda: _dense("gluon", 4, 2, 64, 700, 64, True)),
        ("gluon seesaw, odd tile counts", lambda: _dense("gluon", 3, 1, 128, 200, 64, False)),
        ("gluon 64 rows", lambda: _dense("gluon", 3, 1, 64, 400, 64, False)),
        ("gluon 16 heads (swapped)", lambda: _dense("gluon", 3, 1, 16, 300, 64, False)),
        ("gluon 2x12 rows causal (swapped)", lambda: _dense("gluon", 3, 2, 12, 500, 64, True)),
    ],
    "sparse_decode": [
        ("triton V3.2", lambda: _sparse_decode("triton", 2, 2, 64, 300, 128, 576, 64, False)),
        ("triton MODEL1 + extra", lambda: _sparse_decode("triton", 2, 1, 64, 300, 64, 512, 64,
                                                         True)),
        ("gluon V3.2", lambda: _sparse_decode("gluon", 2, 2, 64, 300, 128, 576, 64, False)),
        ("gluon V3.2 16 heads (swapped)", lambda: _sparse_decode("gluon", 3, 1, 16, 300, 100,
                                                                 576, 61, False, ring="0")),
        ("gluon V3.2 2x8 heads (swapped)", lambda: _sparse_decode("gluon", 4, 2, 8, 500, 200,
                                                                  576, 64, False, ring="0")),
        ("gluon V3.2 16 heads (ring)", lambda: _sparse_decode("gluon", 3, 1, 16, 300, 100, 576,
                                                              61, False)),
        ("gluon V3.2 2x8 heads (ring)", lambda: _sparse_decode("gluon", 4, 2, 8, 500, 200, 576,
                                                               64, False)),
        ("gluon V3.2 16 heads (raw stages)", lambda: _sparse_decode("gluon", 3, 1, 16, 300, 100,
                                                                    576, 61, False, raw="1")),
        ("gluon V3.2 2x8 heads (raw stages)", lambda: _sparse_decode("gluon", 4, 2, 8, 500, 200,
                                                                     576, 64, False, raw="1")),
        ("gluon V3.2 128 heads (CTA pair)", lambda: _sparse_decode("gluon", 3, 2, 128, 500, 200,
                                                                   576, 61, False)),
        ("gluon V3.2 96 heads (CTA pair)", lambda: _sparse_decode("gluon", 2, 1, 96, 300, 130,
                                                                  576, 64, False)),
    ],
    "sparse_prefill": [
        ("triton d576", lambda: _sparse_prefill("triton", 5, 300, 64, 128, 576)),
        ("triton d512 16 heads", lambda: _sparse_prefill("triton", 5, 300, 16, 96, 512)),
        ("gluon d576", lambda: _sparse_prefill("gluon", 5, 300, 128, 128, 576)),
        ("gluon seesaw d576 64 heads, odd tiles", lambda: _sparse_prefill("gluon", 5, 300, 64, 130, 576)),
        ("gluon d512 16 heads", lambda: _sparse_prefill("gluon", 5, 300, 16, 96, 512)),
    ],
    "mha_prefill": [
        ("triton 192/128 GQA causal", lambda: _mha("triton", 70, 90, 4, 2, 192, 128, True)),
        ("triton 128/128", lambda: _mha("triton", 50, 40, 2, 2, 128, 128, False)),
        # (on abf59bb the causal case ran on the persistent grid, then its default; 0 errors)
        ("gluon 192/128 GQA causal", lambda: _mha("gluon", 70, 90, 4, 2, 192, 128, True)),
        ("gluon 128/128", lambda: _mha("gluon", 50, 40, 2, 2, 128, 128, False)),
        ("gluon bwd 192/128 lagged dQ", lambda: _mha_bwd_schedule(70, 90, 4, 2, 192, True, True)),
        ("gluon bwd 128/128 unlagged dQ", lambda: _mha_bwd_schedule(150, 130, 4, 4, 128, True,
                                                                    False)),
    ],
}


def main() -> int:
    ops = sys.argv[1:] or list(CASES)
    failed = 0
    for op in ops:
        for name, fn in CASES[op]:
            try:
                why = fn()
            except Exception as e:  # noqa: BLE001 - report and go on
                why = f"{type(e).__name__}: {e}"
            if DEV == "cuda":
                torch.cuda.synchronize()
            print(f"{op:15} {name:28} {'ok' if why is None else 'FAIL ' + why}", flush=True)
            failed += why is not None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
