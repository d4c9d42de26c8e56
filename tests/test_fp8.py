"""FP8 KV-cache helpers (SPEC §2.4): power-of-two scales, round trip within e4m3 rounding, bytes
exactly where the layouts put them, padded block strides honoured."""
import pytest
import torch

from openmla.kvcache import fp8
from openmla.testing.naive import naive_dequant_token


def _kv(nb, pbs, d, scale=0.1):
    return (torch.randn(nb, pbs, 1, d) * scale).clamp(-1, 1).to(torch.bfloat16)


@pytest.mark.parametrize("d_qk", [576, 512])
@pytest.mark.parametrize("pad", [0, 1])
def test_round_trip_within_e4m3_rounding(d_qk, pad):
    fmt = fp8.fp8_format(d_qk)
    nb, pbs = 3, 5
    kv = _kv(nb, pbs, d_qk)
    cache = fp8.quantize_kvcache(kv, block_stride=(pbs + pad) * fmt.bytes_per_token)
    assert cache.shape == (nb, pbs, 1, fmt.bytes_per_token)
    assert cache.stride(0) == (pbs + pad) * fmt.bytes_per_token
    assert cache.dtype == torch.float8_e4m3fn
    back = fp8.dequantize_kvcache(cache)
    assert back.dtype == torch.bfloat16 and back.shape == kv.shape
    # RoPE dims are stored as bf16: exact
    assert torch.equal(back[..., fmt.d_nope:], kv[..., fmt.d_nope:])
    # NoPE: e4m3 has 3 mantissa bits -> relative error <= 2^-4 of the value, plus the
    # subnormal step 2^-9 * scale near zero; bf16 rounding of the product adds 2^-8 relative
    x = kv[..., :fmt.d_nope].float().unflatten(-1, (-1, fmt.tile))
    s = fp8.tile_scales(kv[..., :fmt.d_nope], fmt.tile).unsqueeze(-1)
    y = back[..., :fmt.d_nope].float().unflatten(-1, (-1, fmt.tile))
    bound = x.abs() * (2 ** -4 + 2 ** -8) + s * 2 ** -9
    assert bool(((y - x).abs() <= bound).all())
    # quantizing a dequantized cache is lossless (values are on the fp8 grid already)
    assert torch.equal(fp8.dequantize_kvcache(fp8.quantize_kvcache(back)), back)


def test_scales_are_powers_of_two_covering_amax():
    x = torch.randn(4, 7, 512) * torch.logspace(-6, 2, 7)[None, :, None]
    s = fp8.tile_scales(x, 128)
    assert bool((torch.exp2(torch.log2(s).round()) == s).all())
    amax = x.unflatten(-1, (-1, 128)).abs().amax(-1)
    assert bool((amax / s <= fp8.FP8_E4M3_MAX).all())
    # smallest such power of two, unless clamped at the 1e-4 floor
    assert bool(((amax / (s / 2) > fp8.FP8_E4M3_MAX) | (s / 2 < fp8.MIN_SCALE)).all())


def test_v32_bytes_where_spec_puts_them():
    kv = _kv(2, 3, 576)
    cache = fp8.quantize_kvcache(kv)
    raw = cache.view(torch.uint8)[1, 2, 0]  # token 5, 656 bytes
    x = kv[1, 2, 0]
    scales = raw[512:528].clone().view(torch.float32)  # 4 fp32 scales, one per 128-wide tile
    assert torch.equal(scales, fp8.tile_scales(x[:512], 128))
    assert torch.equal(raw[528:656].clone().view(torch.bfloat16), x[512:])
    nope = raw[:512].clone().view(torch.float8_e4m3fn).float()
    expect = (x[:512].float().view(4, 128) / scales[:, None]).to(torch.float8_e4m3fn).float()
    assert torch.equal(nope, expect.flatten())


def test_model1_bytes_are_block_interleaved():
    pbs = 3
    kv = _kv(2, pbs, 512)
    cache = fp8.quantize_kvcache(kv, block_stride=pbs * 584 + 64)
    blk = torch.as_strided(cache.view(torch.uint8), (pbs * 584,), (1,),
                           cache.storage_offset() + cache.stride(0))  # block 1's bytes
    x = kv[1, 2, 0]  # token r = 2 of block 1
    row = blk[2 * 576:3 * 576]
    assert torch.equal(row[448:].clone().view(torch.bfloat16), x[448:])
    exps = blk[pbs * 576 + 2 * 8:pbs * 576 + 2 * 8 + 7]
    scales = torch.exp2(exps.float() - 127)
    assert torch.equal(scales, fp8.tile_scales(x[:448], 64))
    assert int(blk[pbs * 576 + 2 * 8 + 7]) == 0  # pad byte
    nope = row[:448].clone().view(torch.float8_e4m3fn).float()
    expect = (x[:448].float().view(7, 64) / scales[:, None]).to(torch.float8_e4m3fn).float()
    assert torch.equal(nope, expect.flatten())


@pytest.mark.parametrize("d_qk", [576, 512])
def test_gather_matches_independent_decoder(d_qk):
    fmt = fp8.fp8_format(d_qk)
    nb, pbs = 4, 3
    cache = fp8.quantize_kvcache(_kv(nb, pbs, d_qk), block_stride=(pbs + 2) * fmt.bytes_per_token)
    idx = torch.randint(0, nb * pbs, (9,))
    got = fp8.gather_dequant(cache, idx, d_qk).float()
    for n, p in enumerate(idx.tolist()):
        assert torch.equal(got[n], naive_dequant_token(cache, p, d_qk).float())


def test_bad_arguments():
    with pytest.raises(ValueError, match="d_qk"):
        fp8.quantize_kvcache(_kv(1, 2, 128))
    with pytest.raises(ValueError, match="block_stride"):
        fp8.quantize_kvcache(_kv(1, 2, 576), block_stride=100)
    with pytest.raises(ValueError, match="kv: expected shape"):
        fp8.quantize_kvcache(torch.zeros(2, 576, dtype=torch.bfloat16))
