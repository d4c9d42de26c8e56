"""Launch configuration of the dense MHA prefill kernels (forward, dQ, dK/dV): a frozen
dataclass chosen by a pure heuristic of the head dims and the device, testable without a GPU.

The Hopper branches carry the figures benchmarks/mha_prefill_sweep.py measured on an H100; the
d <= 64 branch is untuned.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...device import DeviceInfo

MIN_DOT = 16  # tl.dot needs every tile dim >= 16
MAX_HEAD_DIM = 256  # d_qk and d_v: one head-dim tile (two for d_qk) per register budget
CPU_BLOCK = 16  # interpreter: small tiles so tiny test sequences cross several blocks
DQ_FUSED = 0  # dq_block_m value: no dQ kernel, the dK/dV kernel adds dQ by atomics
DQ_ATOMIC = 1  # dq_block_n value with DQ_FUSED: per-element relaxed atomics (any device)
DQ_TMA = 2  # dq_block_n value with DQ_FUSED: TMA reduce-adds (Hopper and later, exact tiles)


@dataclass(frozen=True)
class MhaPrefillConfig:
    block_m: int  # forward: query rows per program
    block_n: int  # forward: keys per step of the key loop
    num_warps: int
    num_stages: int
    dq_block_m: int  # dQ kernel: query rows per program; DQ_FUSED (0): no dQ kernel
    dq_block_n: int  # dQ kernel: keys per step; with DQ_FUSED: DQ_ATOMIC or DQ_TMA
    dkdv_block_m: int  # dK/dV kernel: query rows per step of the query loop
    dkdv_block_n: int  # dK/dV kernel: keys per program
    bwd_num_warps: int
    dq_num_stages: int
    dkdv_num_stages: int


def _pow2_at_least(n: int, lo: int = 1) -> int:
    p = lo
    while p < n:
        p *= 2
    return p


def head_dim_split(d_qk: int) -> tuple[int, int]:
    """The two power-of-two tiles the Q·Kᵀ head dim is cut into: (192 → 128 + 64, 128 → 128 + 0,
    100 → 64 + 64 masked, 8 → 16 masked + 0). A 192-wide head is two exact tiles, where padding
    it to 256 would waste a quarter of the Q·Kᵀ and dQ/dK FLOPs."""
    head = MIN_DOT
    while head * 2 <= d_qk:
        head *= 2
    rest = d_qk - head
    return head, (_pow2_at_least(rest, MIN_DOT) if rest > 0 else 0)


def value_dim_tile(d_v: int) -> int:
    """The value head dim padded to a power of two >= 16 (columns past d_v are masked)."""
    return _pow2_at_least(d_v, MIN_DOT)


def pick_config(d_qk: int, d_v: int, info: DeviceInfo) -> MhaPrefillConfig:
    """Configuration for head dims ``d_qk``, ``d_v`` (each <= 256) on ``info`` (CPU: the
    interpreter, where only correctness matters). Causal and non-causal share one config (the
    same tiles run in both; only the masked share of the loops differs)."""
    if info.kind == "cpu":
        return MhaPrefillConfig(CPU_BLOCK, CPU_BLOCK, 4, 1, DQ_FUSED, DQ_ATOMIC, CPU_BLOCK,
                                CPU_BLOCK, 4, 1, 1)
    widest = max(d_qk, d_v)
    if widest <= 64:
        # untuned: FA2's Triton tutorial forward for d 64 (BLOCK_M 128, BLOCK_N 64, 4 warps)
        return MhaPrefillConfig(128, 64, 4, 3, 64, 64, 32, 64, 4, 2, 1)
    # Measured on an H100 (2026-11-22, benchmarks/mha_prefill_sweep.py, 4 x 4096 causal, 16
    # heads): forward 128 x 64 / 8 warps / 3 stages 850 us at (192, 128) (0.51 of matmul; 2
    # stages 1023, 128 x 128 894-1131, 64-row tiles 1174+), 128 x 128 / 3 stages 655 us at
    # (128, 128). Backward: the dQ kernel with 128-row tiles + the dK/dV kernel (32 query rows
    # a step, 128 keys, 8 warps) 3531 us at (192, 128), 2888 at (128, 128); dQ fused into the
    # dK/dV kernel by TMA reduce-adds 3683 (2 stages) / 4768 (1 stage); 64-row dQ tiles 4653.
    if widest <= 128:
        return MhaPrefillConfig(128, 128, 8, 3, 128, 64, 32, 128, 8, 2, 1)
    return MhaPrefillConfig(128, 64, 8, 3, 128, 64, 32, 128, 8, 2, 1)
