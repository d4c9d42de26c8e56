"""Launch configuration of the dense MHA prefill kernels (forward, dQ, dK/dV): a frozen
dataclass chosen by a pure heuristic of the head dims and the device, testable without a GPU.

UNTUNED: the numbers are FlashAttention-2's Triton starting points (SPEC §6.4), checked only
for registers / spills with an offline sm_90 compile; they have not run on a GPU yet. Each
branch will carry its measured number once the kernels are tuned on an H100 / H200.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...device import DeviceInfo

MIN_DOT = 16  # tl.dot needs every tile dim >= 16
MAX_HEAD_DIM = 256  # d_qk and d_v: one head-dim tile (two for d_qk) per register budget
CPU_BLOCK = 16  # interpreter: small tiles so tiny test sequences cross several blocks


@dataclass(frozen=True)
class MhaPrefillConfig:
    block_m: int  # forward: query rows per program
    block_n: int  # forward: keys per step of the key loop
    num_warps: int
    num_stages: int
    dq_block_m: int  # dQ kernel: query rows per program
    dq_block_n: int  # dQ kernel: keys per step
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
    interpreter, where only correctness matters)."""
    if info.kind == "cpu":
        return MhaPrefillConfig(CPU_BLOCK, CPU_BLOCK, 4, 1, CPU_BLOCK, CPU_BLOCK, CPU_BLOCK,
                                CPU_BLOCK, 4, 1, 1)
    widest = max(d_qk, d_v)
    if widest <= 64:
        # untuned: FA2's Triton tutorial forward for d 64 (BLOCK_M 128, BLOCK_N 64, 4 warps)
        return MhaPrefillConfig(128, 64, 4, 3, 64, 64, 32, 64, 4, 2, 1)
    # Backward, from an offline sm_90 compile (ptxas, causal, bf16; not timed): the dK/dV
    # program holds fp32 dK [64, d] and dV [64, dv] for its whole life; with 32 query rows per
    # step, 8 warps and 1 stage it needs 209 registers at d 128 and 246 at d 192, no spills,
    # where 64 rows (or 2 stages) hit the 255 cap and spill 48-460 bytes. dQ 64 x 64 with
    # 2 stages: 141 / 181 registers, no spills (1 stage: 255 and a 12-byte spill at d 192).
    if widest <= 128:
        # untuned: FA2 forward for d 128 (128 x 64 tiles, 8 warps: the [128, 128] fp32
        # accumulator is 64 registers a thread); 188 registers, no spills, 3 stages
        return MhaPrefillConfig(128, 64, 8, 3, 64, 64, 32, 64, 8, 2, 1)
    # untuned: d_qk 192 (128 + 64 tiles) and anything up to 256: the same tiles, 2 stages
    # (one K stage is 64 x 192 x 2 B = 24 KiB plus 16 KiB of V); 198 registers, no spills
    return MhaPrefillConfig(128, 64, 8, 2, 64, 64, 32, 64, 8, 2, 1)
