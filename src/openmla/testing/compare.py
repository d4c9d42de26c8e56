"""Comparison of an answer with a reference, as FlashMLA's test toolkit does (SPEC §4.1), and
the tolerance table of every op (FlashMLA's own tolerances).

1. shapes must match; 2. +inf / -inf / NaN must sit at exactly the same positions (those are then
zeroed); 3. every element within ``abs_tol`` or within ``rel_tol`` relative to the reference;
4. the cosine-style difference ``1 - 2 Σ a r / Σ (a² + r²)`` (float64) at most ``cos_diff_tol``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Tol:
    abs_tol: float
    rel_tol: float
    cos_diff_tol: float


# FlashMLA's tolerances per op and output (SPEC §4.1). A tolerance is part of the spec: change it
# here explicitly, with the reason, never around a failing test.
TOLERANCES: dict[str, dict[str, Tol]] = {
    "dense_decode": {"out": Tol(8e-4, 2.01 / 128, 5e-6), "lse": Tol(1e-6, 8.01 / 65536, 0.0)},
    "sparse_decode": {"out": Tol(1e-3, 2.01 / 128, 5e-6), "lse": Tol(1e-6, 8.01 / 65536, 0.0)},
    "sparse_prefill": {"out": Tol(8e-4, 3.01 / 128, 7e-6), "lse": Tol(1e-6, 2.01 / 65536, 0.0),
                       "max_logits": Tol(1e-6, 2.01 / 65536, 0.0)},
    "mha_prefill": {"out": Tol(1e-3, 8.01 / 128, 7e-6), "lse": Tol(1e-6, 2.01 / 65536, 0.0),
                    "dq": Tol(1e-3, 8.01 / 128, 7e-6), "dk": Tol(1e-3, 8.01 / 128, 7e-6),
                    "dv": Tol(1e-3, 8.01 / 128, 7e-6)},
}
# lse is compared element-wise only (FlashMLA sets no cosine bound on it): 0.0 disables step 4
# for those rows of the table, see ``check_is_allclose``.


def compare(ans: torch.Tensor, ref: torch.Tensor, tol: Tol) -> str | None:
    """None when ``ans`` matches ``ref`` within ``tol``; otherwise the reason."""
    if ans.shape != ref.shape:
        return f"shape {tuple(ans.shape)} != reference shape {tuple(ref.shape)}"
    a = ans.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    for label, fn in (("+inf", lambda x: torch.isposinf(x)), ("-inf", lambda x: torch.isneginf(x)),
                      ("nan", torch.isnan)):
        ma, mr = fn(a), fn(r)
        if not torch.equal(ma, mr):
            diff = (ma != mr).nonzero()
            where = tuple(diff[0].tolist())
            return (f"{label} positions differ at {diff.shape[0]} elements, first at {where}: "
                    f"answer {a[where].item()}, reference {r[where].item()}")
        a = torch.where(ma, torch.zeros_like(a), a)
        r = torch.where(mr, torch.zeros_like(r), r)
    err = (a - r).abs()
    ok = (err < tol.abs_tol) | (err / (r.abs() + 1e-6) < tol.rel_tol)
    if not bool(ok.all()):
        bad = (~ok).nonzero()
        where = tuple(bad[0].tolist())
        return (f"{bad.shape[0]} of {ok.numel()} elements outside abs {tol.abs_tol:g} / rel "
                f"{tol.rel_tol:g}; first at {where}: answer {a[where].item():.8g}, reference "
                f"{r[where].item():.8g}; max abs err {err.max().item():.3g}")
    if tol.cos_diff_tol > 0:
        denom = (a * a + r * r).sum()
        cos_diff = 0.0 if (r * r).sum() < 1e-12 else float(1 - 2 * (a * r).sum() / denom)
        if cos_diff > tol.cos_diff_tol:
            return f"cosine difference {cos_diff:.3g} > {tol.cos_diff_tol:g}"
    return None


def compare_to_baseline(ans: torch.Tensor, ref: torch.Tensor, baseline: torch.Tensor,
                        cos_diff_tol: float, factor: float = 2.0, floor: float = 1e-5) -> str | None:
    """FlashAttention's criterion for gradients: ``max|ans - ref|`` at most ``factor`` times
    ``max|baseline - ref|`` (+ ``floor``), where ``baseline`` is the same math done by PyTorch in
    the inputs' precision (P and dS rounded like the kernel's operands), plus the cosine bound.

    Gradients sum many terms whose bf16 rounding does not cancel: an element whose terms cancel
    (|dv| of 1e-3 from terms of size 1) carries an absolute error any bf16 kernel has, so an
    element-wise relative bound on it measures the format, not the kernel. A reference whose
    largest element is within ``floor`` gets the max-error bound only."""
    if ans.shape != ref.shape or baseline.shape != ref.shape:
        return f"shapes {tuple(ans.shape)} / {tuple(baseline.shape)} != reference {tuple(ref.shape)}"
    a = ans.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    base = baseline.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(a).all()):
        return f"{int((~torch.isfinite(a)).sum())} non-finite elements"
    err, base_err = (a - r).abs().max().item(), (base - r).abs().max().item()
    if err > factor * base_err + floor:
        where = tuple(((a - r).abs() == err).nonzero()[0].tolist())
        return (f"max abs err {err:.3g} > {factor:g} x {base_err:.3g} (PyTorch in the inputs' "
                f"precision) + {floor:g}; at {where}: answer {a[where].item():.8g}, reference "
                f"{r[where].item():.8g}")
    if r.abs().max().item() <= floor:
        # a reference within the absolute floor is a gradient that is zero but for rounding
        # (one visible key: dS = P∘(dP − D) = 0): it has no direction for the cosine bound
        return None
    return compare(ans, ref, Tol(float("inf"), float("inf"), cos_diff_tol))


def mha_forward_baseline(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, scale: float,
                         causal: bool) -> torch.Tensor:
    """``out`` of plain PyTorch varlen attention in the inputs' dtype, the ``baseline`` of
    ``compare_to_baseline`` for a forward: scores and softmax in float32 from the inputs,
    P rounded to the input dtype before P·V (FlashAttention's test baseline), bottom-right
    causal, GQA; rows with no key are 0."""
    group = q.shape[1] // k.shape[1]
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[-1], dtype=q.dtype, device=q.device)
    bounds = zip(cu_seqlens_q.tolist()[:-1], cu_seqlens_q.tolist()[1:],
                 cu_seqlens_k.tolist()[:-1], cu_seqlens_k.tolist()[1:])
    for q0, q1, k0, k1 in bounds:
        if q1 == q0 or k1 == k0:
            continue
        qs = q[q0:q1].transpose(0, 1)
        ks = k[k0:k1].repeat_interleave(group, dim=1).transpose(0, 1)
        vs = v[k0:k1].repeat_interleave(group, dim=1).transpose(0, 1)
        sc = torch.matmul(qs.float(), ks.float().transpose(1, 2)) * scale
        if causal:
            i = torch.arange(q1 - q0, device=q.device)[:, None]
            j = torch.arange(k1 - k0, device=q.device)[None, :]
            sc = sc.masked_fill(j > i + (k1 - k0) - (q1 - q0), float("-inf"))
        p = torch.softmax(sc, dim=-1).nan_to_num(0.0).to(q.dtype)
        out[q0:q1] = torch.matmul(p, vs).transpose(0, 1)
    return out


def mha_backward_baseline(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, scale: float,
                          causal: bool, dout: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(dq, dk, dv)`` of plain PyTorch varlen attention in the inputs' dtype (scores and
    softmax in float32, P rounded to the input dtype before P·V, as FlashAttention's test
    baseline), through autograd: the ``baseline`` of ``compare_to_baseline`` for a backward."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    outs = []
    bounds = zip(cu_seqlens_q.tolist()[:-1], cu_seqlens_q.tolist()[1:],
                 cu_seqlens_k.tolist()[:-1], cu_seqlens_k.tolist()[1:])
    for q0, q1, k0, k1 in bounds:
        qs = q[q0:q1].transpose(0, 1)
        ks = k[k0:k1].repeat_interleave(group, dim=1).transpose(0, 1)
        vs = v[k0:k1].repeat_interleave(group, dim=1).transpose(0, 1)
        sc = torch.matmul(qs, ks.transpose(1, 2)).float() * scale
        if causal:  # bottom-right aligned
            i = torch.arange(q1 - q0, device=q.device)[:, None]
            j = torch.arange(k1 - k0, device=q.device)[None, :]
            sc = sc.masked_fill(j > i + (k1 - k0) - (q1 - q0), float("-inf"))
        p = torch.softmax(sc, dim=-1).nan_to_num(0.0).to(q.dtype)
        outs.append(torch.matmul(p, vs).transpose(0, 1))
    out = torch.cat(outs)
    return torch.autograd.grad(out, (q, k, v), dout)


def check_is_allclose(name: str, ans: torch.Tensor, ref: torch.Tensor, abs_tol: float,
                      rel_tol: float, cos_diff_tol: float) -> bool:
    """FlashMLA's ``check_is_allclose``: True when close; prints why not otherwise."""
    why = compare(ans, ref, Tol(abs_tol, rel_tol, cos_diff_tol))
    if why is not None:
        print(f"{name}: {why}")
    return why is None


def assert_close(name: str, ans: torch.Tensor, ref: torch.Tensor, tol: Tol) -> None:
    """Raise AssertionError naming ``name`` and the reason when ``ans`` is not close to ``ref``."""
    why = compare(ans, ref, tol)
    if why is not None:
        raise AssertionError(f"{name}: {why}")


@contextlib.contextmanager
def nan_filled_outputs() -> Iterator[None]:
    """Inside the block every floating-point tensor made by ``torch.empty`` starts as NaN, so an
    output element a kernel fails to write fails the comparison with the reference."""
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.dtype.is_floating_point:
            t.fill_(float("nan"))
        return t

    torch.empty = nan_empty
    try:
        yield
    finally:
        torch.empty = real_empty
