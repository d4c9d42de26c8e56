"""The direct-launcher host path (``openmla.ops._launch``): its specialisation key and, on a
GPU, that calls through it give exactly what calls through the JIT give."""
import pytest
import torch

from openmla.ops import _launch


def test_arg_key_separates_what_triton_specialises_on():
    base = torch.zeros(64, dtype=torch.int32)
    assert _launch._arg_key(base) != _launch._arg_key(base[1:])  # 16-byte alignment
    assert _launch._arg_key(base) != _launch._arg_key(base.float())  # dtype
    assert _launch._arg_key(1) != _launch._arg_key(2)  # the value 1
    assert _launch._arg_key(16) != _launch._arg_key(17)  # multiples of 16
    assert _launch._arg_key(2**31) != _launch._arg_key(2**31 - 16)  # 32-bit range
    assert _launch._arg_key(True) != _launch._arg_key(1)
    assert _launch._arg_key(32) == _launch._arg_key(48)
    assert _launch._arg_key(0.5) == _launch._arg_key(2.0)
    with pytest.raises(TypeError):
        _launch._arg_key(object())


class _FakeKernel:
    """Records how it was launched."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.calls.append((grid, args, kwargs))
        return run


def test_disabled_path_is_the_jit_call(monkeypatch):
    monkeypatch.setattr(_launch, "_ENABLED", False)
    k = _FakeKernel()
    x = torch.zeros(4)
    _launch.launch(k, (3, 1), (x, 5), dict(BLOCK=8, num_warps=4))
    assert k.calls == [((3, 1), (x, 5), dict(BLOCK=8, num_warps=4))]


def _public_call(case):
    import openmla
    from openmla.testing import generate as gen

    return openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                          tile_scheduler_metadata=openmla.get_mla_metadata()[0])


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["dense_decode", "sparse_decode"])
def test_fast_path_matches_the_jit_path_gpu(op, monkeypatch):
    """Repeated calls (the later ones through the cached launcher), a call whose
    ``cache_seqlens`` / ``topk_length`` is a 4-byte-offset view (another specialisation key), and
    the same calls with the fast path off: bitwise the same outputs, and the launcher cache
    holds the kernels."""
    from openmla.device import device_info
    from openmla.ops.combine.kernel import _decode_combine_kernel
    from openmla.ops.schedule.kernel import _decode_schedule_kernel
    from openmla.testing import generate as gen

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setattr(_launch, "_ENABLED", None)
    cases = []
    for seed in range(3):
        if op == "dense_decode":
            case = gen.dense_decode_inputs(5, 2, 16 if seed else 64, 700, causal=True,
                                           varlen=True, device="cuda", seed=seed)
            field = "cache_seqlens"
        else:
            case = gen.sparse_decode_inputs(5, 1, 16 if seed else 64, 900, 256,
                                            with_topk_length=True, device="cuda", seed=seed)
            field = "topk_length"
        cases.append(case)
    shifted = dict(cases[0])
    holder = torch.zeros(shifted[field].numel() + 1, dtype=torch.int32, device="cuda")
    holder[1:] = shifted[field]
    shifted[field] = holder[1:]  # same values, 4 bytes past an aligned address
    assert shifted[field].data_ptr() % 16 != 0
    cases.append(shifted)
    fast = [[t.clone() for t in _public_call(c)] for c in cases + cases]
    torch.cuda.synchronize()
    if device_info("cuda").is_hopper or op == "dense_decode":
        assert _launch.cached_kernels(_decode_combine_kernel) >= 1
        assert _launch.cached_kernels(_decode_schedule_kernel) >= 1
    monkeypatch.setattr(_launch, "_ENABLED", False)
    slow = [[t.clone() for t in _public_call(c)] for c in cases]
    torch.cuda.synchronize()
    for i, (out, lse) in enumerate(slow):
        for got in (fast[i], fast[i + len(cases)]):
            assert torch.equal(got[0], out), i
            assert torch.equal(got[1].nan_to_num(), lse.nan_to_num()), i


def test_idle_hooks():
    from triton import knobs

    assert _launch._idle(None)
    chain = knobs.HookChain()
    assert _launch._idle(chain)
    chain.add(print)
    assert not _launch._idle(chain)
    assert not _launch._idle(print)
