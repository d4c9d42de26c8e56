"""FP8 KV-cache layouts of FlashMLA's sparse decode (SPEC §2.4): quantize and dequantize.

Both layouts quantize the NoPE part of each token per tile of consecutive elements to
float8_e4m3fn with a power-of-two scale per tile, and keep the 64 RoPE values in bf16.

* V32 (d_qk 576): 656 bytes per token, contiguous: 512 fp8 NoPE bytes, 4 fp32 scales (one per
  128-wide tile), 64 bf16 RoPE values.
* MODEL1 (d_qk 512): per page block, first ``pbs`` rows of 576 bytes (448 fp8 NoPE bytes and 64
  bf16 RoPE values), then ``pbs`` rows of 8 bytes (7 UE8M0 scale bytes, one per 64-wide tile,
  and a pad byte). The tensor is a byte view ``[num_blocks, pbs, 1, 584]``; row r of that view
  is not token r's data.

Caches are ``[num_blocks, pbs, 1, bytes_per_token]`` tensors of dtype float8_e4m3fn (int8 and
uint8 views are accepted too) whose block stride may exceed ``pbs * bytes_per_token``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_E4M3_MAX = 448.0
MIN_SCALE = 1e-4  # scales are clamped below to this before rounding up to a power of two
D_ROPE = 64
D_V = 512
_UE8M0_BIAS = 127


@dataclass(frozen=True)
class Fp8Format:
    name: str
    d_qk: int  # dims of a dequantized token
    d_nope: int  # quantized dims
    tile: int  # elements per scale
    bytes_per_token: int  # last dim of the cache tensor
    row_bytes: int  # bytes of one token's NoPE + RoPE data
    scale_bytes: int  # bytes per token holding its scales (fp32 x4 or UE8M0 x7 + pad)
    block_interleaved: bool  # scales stored after all rows of a page block

    @property
    def num_tiles(self) -> int:
        return self.d_nope // self.tile


V32 = Fp8Format("V32", d_qk=576, d_nope=512, tile=128, bytes_per_token=656, row_bytes=512,
                scale_bytes=16, block_interleaved=False)
MODEL1 = Fp8Format("MODEL1", d_qk=512, d_nope=448, tile=64, bytes_per_token=584, row_bytes=576,
                   scale_bytes=8, block_interleaved=True)
FP8_FORMATS = {576: V32, 512: MODEL1}
FP8_CACHE_DTYPES = (torch.float8_e4m3fn, torch.int8, torch.uint8)


def fp8_format(d_qk: int) -> Fp8Format:
    """The FP8 layout used for tokens of ``d_qk`` dims (576: V32, 512: MODEL1)."""
    try:
        return FP8_FORMATS[d_qk]
    except KeyError:
        raise ValueError(f"d_qk: expected 576 (V32) or 512 (MODEL1) for an FP8 KV cache, "
                         f"got {d_qk}") from None


def tile_scales(x: torch.Tensor, tile: int) -> torch.Tensor:
    """Power-of-two scale per ``tile`` consecutive elements of the last dim of ``x``:
    ``2^ceil(lg(max(amax/448, 1e-4)))``, float32, shape ``[..., n / tile]``."""
    xt = x.float().unflatten(-1, (-1, tile))  # [..., n_tiles, tile]
    s = xt.abs().amax(dim=-1) / FP8_E4M3_MAX
    return torch.exp2(torch.ceil(torch.log2(s.clamp(min=MIN_SCALE))))


def _quantize_tiles(x: torch.Tensor, scales: torch.Tensor, tile: int) -> torch.Tensor:
    """fp8 bytes (uint8) of ``x / scale`` per tile; ``|x / scale| <= 448`` by construction."""
    xt = x.float().unflatten(-1, (-1, tile)) / scales.unsqueeze(-1)
    return xt.to(torch.float8_e4m3fn).flatten(-2).view(torch.uint8)


def _alloc_blocks(num_blocks: int, block_bytes: int, block_stride: int | None,
                  device: torch.device) -> torch.Tensor:
    """``[num_blocks, block_stride]`` uint8 storage whose first ``block_bytes`` per row are used."""
    stride = block_bytes if block_stride is None else block_stride
    if stride < block_bytes:
        raise ValueError(f"block_stride: expected at least {block_bytes} bytes "
                         f"(pbs * bytes_per_token), got {stride}")
    return torch.zeros(num_blocks, stride, dtype=torch.uint8, device=device)


def quantize_kvcache(kv: torch.Tensor, block_stride: int | None = None) -> torch.Tensor:
    """Quantize a bf16 KV cache ``[num_blocks, pbs, 1, d_qk]`` (d_qk 576: V32, 512: MODEL1).

    Returns ``[num_blocks, pbs, 1, bytes_per_token]`` float8_e4m3fn, a byte view whose block
    stride is ``block_stride`` bytes (default ``pbs * bytes_per_token``; larger values pad each
    block, as some callers and FlashMLA's tests do).
    """
    if kv.dim() != 4 or kv.shape[2] != 1:
        raise ValueError(f"kv: expected shape [num_blocks, pbs, 1, d_qk], got {tuple(kv.shape)}")
    fmt = fp8_format(kv.shape[-1])
    nb, pbs = kv.shape[0], kv.shape[1]
    B = fmt.bytes_per_token
    store = _alloc_blocks(nb, pbs * B, block_stride, kv.device)
    x = kv[:, :, 0, :]  # [nb, pbs, d_qk]
    nope, rope = x[..., :fmt.d_nope], x[..., fmt.d_nope:].to(torch.bfloat16).contiguous()
    scales = tile_scales(nope, fmt.tile)  # [nb, pbs, num_tiles]
    q_bytes = _quantize_tiles(nope, scales, fmt.tile)  # [nb, pbs, d_nope]
    rope_bytes = rope.view(torch.uint8)  # [nb, pbs, 128]
    if not fmt.block_interleaved:
        tok = torch.cat([q_bytes, scales.contiguous().view(torch.uint8), rope_bytes], dim=-1)
        store[:, :pbs * B] = tok.reshape(nb, pbs * B)
    else:
        rows = torch.cat([q_bytes, rope_bytes], dim=-1)  # [nb, pbs, 576]
        exps = (torch.log2(scales).round().to(torch.int32) + _UE8M0_BIAS).to(torch.uint8)
        pad = torch.zeros(nb, pbs, fmt.scale_bytes - fmt.num_tiles, dtype=torch.uint8,
                          device=kv.device)
        srows = torch.cat([exps, pad], dim=-1)  # [nb, pbs, 8]
        store[:, :pbs * fmt.row_bytes] = rows.reshape(nb, pbs * fmt.row_bytes)
        store[:, pbs * fmt.row_bytes:pbs * B] = srows.reshape(nb, pbs * fmt.scale_bytes)
    cache = torch.as_strided(store, (nb, pbs, 1, B), (store.stride(0), B, B, 1))
    return cache.view(torch.float8_e4m3fn)


def _flat_bytes(cache: torch.Tensor) -> torch.Tensor:
    """1-D uint8 view over every byte the cache's blocks span (honours a padded block stride)."""
    c = cache.view(torch.uint8)
    nb, pbs, _, B = c.shape
    span = (nb - 1) * c.stride(0) + pbs * B if nb > 0 else 0
    return torch.as_strided(c, (span,), (1,), c.storage_offset())


def gather_dequant(cache: torch.Tensor, indices: torch.Tensor, d_qk: int) -> torch.Tensor:
    """Dequantized bf16 tokens ``[N, d_qk]`` at physical ``indices`` ``[N]`` (page * pbs + offset).

    Every index must be valid (``0 <= p < num_blocks * pbs``); callers replace invalid ones.
    Dequantization is ``bf16(float(q) * scale)``, exact for power-of-two scales.
    """
    fmt = fp8_format(d_qk)
    flat = _flat_bytes(cache)
    pbs, stride0 = cache.shape[1], cache.stride(0)
    p = indices.to(torch.int64)
    blk, row = p // pbs, p % pbs
    if not fmt.block_interleaved:
        base = blk * stride0 + row * fmt.bytes_per_token  # [N]
        tok = flat[base[:, None] + torch.arange(fmt.bytes_per_token, device=p.device)]
        nope = tok[:, :fmt.d_nope]
        scales = tok[:, fmt.d_nope:fmt.d_nope + fmt.scale_bytes].contiguous().view(torch.float32)
        rope = tok[:, fmt.d_nope + fmt.scale_bytes:]
    else:
        base = blk * stride0 + row * fmt.row_bytes
        tok = flat[base[:, None] + torch.arange(fmt.row_bytes, device=p.device)]
        sbase = blk * stride0 + pbs * fmt.row_bytes + row * fmt.scale_bytes
        exps = flat[sbase[:, None] + torch.arange(fmt.num_tiles, device=p.device)]
        scales = torch.exp2(exps.float() - _UE8M0_BIAS)
        nope, rope = tok[:, :fmt.d_nope], tok[:, fmt.d_nope:]
    values = nope.contiguous().view(torch.float8_e4m3fn).float().unflatten(-1, (-1, fmt.tile))
    nope_bf16 = (values * scales.unsqueeze(-1)).to(torch.bfloat16).flatten(-2)
    return torch.cat([nope_bf16, rope.contiguous().view(torch.bfloat16)], dim=-1)


def dequantize_kvcache(cache: torch.Tensor, d_qk: int | None = None) -> torch.Tensor:
    """Dequantize a whole FP8 cache to bf16 ``[num_blocks, pbs, 1, d_qk]``.

    ``d_qk`` defaults to the format implied by the cache's last dim (656: 576, 584: 512).
    """
    if d_qk is None:
        by_bytes = {f.bytes_per_token: f.d_qk for f in FP8_FORMATS.values()}
        if cache.shape[-1] not in by_bytes:
            raise ValueError(f"cache: expected last dim 656 (V32) or 584 (MODEL1), "
                             f"got {cache.shape[-1]}")
        d_qk = by_bytes[cache.shape[-1]]
    nb, pbs = cache.shape[0], cache.shape[1]
    idx = torch.arange(nb * pbs, device=cache.device)
    return gather_dequant(cache, idx, d_qk).view(nb, pbs, 1, d_qk)
