"""Two CTAs of a cluster sharing shared-memory tiles, for Gluon kernels on Hopper (sm90).

Triton 3.6's Gluon launches clusters (``num_ctas``) but has no store into a peer CTA's shared
memory and no handle on a buffer's shared address. These helpers add both, in PTX:

* a buffer's shared address is ``global_smem`` (the base of the kernel's dynamic shared memory)
  plus the offset Triton's allocator gave it. The offsets are read, by buffer name, from the
  kernel's TTGIR after running the same allocation passes Triton runs (``smem_offsets``); the
  kernel takes them as constexprs, so ``launch_pair`` compiles a kernel twice (placeholders,
  then the real offsets) and checks that the second compile put every buffer where the first
  one did;
* ``bulk_to_peer``: ``cp.async.bulk.shared::cluster.shared::cta`` copies of byte ranges of this
  CTA's shared memory to the same offsets in the peer CTA, completing (byte count) on the peer's
  mbarrier; ``arrive_peer``: an arrive on the peer's mbarrier;
  ``cluster_sync``: every warp of both CTAs, after the barriers' initialisation;
* ``launch_pair``: the compiled kernel launched with clusters of two CTAs along grid axis 0
  (the kernel itself is compiled for one CTA: ``program_id(0)`` is the CTA's rank in the pair).

The single-thread helpers run on thread 0 of the calling warpgroup (a partition of 4 warps; the
predicate is element 0 of a ``gl.arange`` over its threads). The warpgroup must meet at a
barrier between its threads' last accesses of the data concerned and the helper: a Gluon
``mbarrier.arrive`` makes it meet first, ``mbarrier.expect`` does not (one thread arrives, no
barrier before it), so ``bulk_to_peer`` after ``expect`` needs ``gl.thread_barrier()`` after
the threads' stores and ``fence_async_shared()``. Without it thread 0 copied rows other warps
had not stored yet: a rare result that differed run to run (H200, 1 in 40 calls at b=74
s_q=2 h_q=128), the wrong peer rows racecheck saw, whole warps' rows at a time.
"""
from __future__ import annotations

import os
import re
import tempfile

from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def smem_base():
    """The shared-window address of the kernel's dynamic shared memory (offset 0)."""
    return gl.inline_asm_elementwise("mov.u32 $0, global_smem;", "=r,r", [gl.to_tensor(0)],
                                     dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def cluster_sync():
    """Every warp of both CTAs: the mbarrier initialisations are visible cluster-wide, and
    neither CTA goes on before the other got here. Call it at the start of every partition of
    a warp-specialized kernel (not before ``warp_specialize``: only the default warps run the
    code before it, and the cluster barrier waits for every warp that has not exited)."""
    gl.inline_asm_elementwise(
        "fence.mbarrier_init.release.cluster;\n\tbarrier.cluster.arrive.release.aligned;\n\t"
        "barrier.cluster.wait.acquire.aligned;\n\tmov.u32 $0, 0;", "=r,r", [gl.to_tensor(0)],
        dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _first_of_warpgroup():
    """A [128] tensor over the warpgroup's threads, one element a thread: true in thread 0.
    (The thread index read in PTX instead made ptxas spill another partition's registers.)"""
    one: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    return gl.arange(0, 128, layout=one) == 0


@gluon.jit
def arrive_peer(bar_addr, peer):
    """Thread 0 of the warpgroup arrives on the mbarrier at shared offset ``bar_addr`` of CTA
    ``peer``, with the instruction's default semantics (release, CTA scope: what CUTLASS's
    cluster barrier arrive emits). The callers arrive once their reads of the buffers the
    barrier guards are complete (wgmma waited for, loaded values used). H100, b=128 topk=2048,
    graph µs: s_q=2 h_q=128 387.6 / 388.2 against 394.3 with release at cluster scope (whose
    fence showed in the profile), s_q=1 h_q=128 203.9 / 205.1 against 209.0; bitwise equal."""
    gl.inline_asm_elementwise(
        "mapa.shared::cluster.u32 $0, $1, $2;\n\t"
        "@$3 mbarrier.arrive.shared::cluster.b64 _, [$0];",
        "=r,r,r,b", [bar_addr, peer, _first_of_warpgroup()], dtype=gl.int32, is_pure=False,
        pack=1)


@gluon.constexpr_function
def _bulk_asm(size, count, stride):
    # outputs (scratch): $0 source address, $1 its peer address, $2 the peer's mbarrier;
    # inputs: $3 source base, $4 mbarrier, $5 peer rank, $6 predicate (thread 0)
    body = ["mapa.shared::cluster.u32 $2, $4, $5;"]
    for j in range(count):
        body.append(f"add.u32 $0, $3, {j * stride};")
        body.append("mapa.shared::cluster.u32 $1, $0, $5;")
        body.append(f"@$6 cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes"
                    f" [$1], [$0], {size}, [$2];")
    return "\n\t".join(body)


@gluon.jit
def bulk_to_peer(base, bar_addr, peer, SIZE: gl.constexpr, COUNT: gl.constexpr = 1,
                 STRIDE: gl.constexpr = 0):
    """Thread 0 of the warpgroup copies COUNT byte ranges of SIZE bytes, STRIDE apart, from
    shared address ``base`` (all multiples of 16) to the same addresses in CTA ``peer``; the
    copies complete on the peer's mbarrier at ``bar_addr`` (its expected byte count)."""
    gl.inline_asm_elementwise(_bulk_asm(SIZE, COUNT, STRIDE), "=&r,=&r,=&r,r,r,r,b",
                              [base, bar_addr, peer, _first_of_warpgroup()],
                              dtype=(gl.int32, gl.int32, gl.int32), is_pure=False, pack=1)


# --- host side ---------------------------------------------------------------------------------

# after the allocation pass: `%name = ttg.local_alloc {allocation.offset = N : i32} ...` (the
# printer names a value after its source variable, callers' names for inlined helpers too)
_ALLOC = re.compile(r'%([A-Za-z_]\w*) = ttg\.local_alloc[^\n]*\{allocation\.offset = (\d+) : i32\}')


def smem_offsets(ttgir: str, capability: int = 90) -> dict[str, int]:
    """Shared-memory offset of each named ``allocate_shared_memory`` buffer of a compiled
    kernel (its TTGIR), as Triton's allocation passes place it."""
    from triton._C.libtriton import ir, nvidia, passes
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend

    ctx = ir.context()
    ir.load_dialects(ctx)
    CUDABackend(GPUTarget("cuda", capability, 32)).load_dialects(ctx)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ttgir")
        with open(path, "w") as f:
            f.write(ttgir)
        mod = ir.parse_mlir_module(path, ctx)
    pm = ir.pass_manager(ctx)
    passes.ttgpuir.add_combine_tensor_select_and_if(pm)
    passes.ttgpuir.add_allocate_warp_groups(pm)
    passes.convert.add_scf_to_cf(pm)
    passes.gluon.add_inliner(pm)
    nvidia.passes.ttgpuir.add_allocate_shared_memory_nv(pm, capability, 86)
    pm.run(mod, "smem_offsets")
    text = mod.str() if hasattr(mod, "str") else str(mod)
    out: dict[str, int] = {}
    for name, off in _ALLOC.findall(text):
        out.setdefault(name, int(off))
    return out


_PAIR_CACHE: dict[tuple, tuple] = {}


def launch_pair(kernel, grid: tuple, args: tuple, kwargs: dict, buffers: dict[str, str]) -> None:
    """Launch ``kernel`` with clusters of two CTAs along grid axis 0 (``grid[0]`` must be 2).
    ``buffers`` maps the kernel's offset constexprs to the buffer names whose shared offsets
    they carry (``smem_offsets``)."""
    from triton.runtime import driver

    from ._launch import spec_key

    if grid[0] != 2:
        raise ValueError(f"grid: expected 2 CTAs along axis 0 for a pair launch, got {grid}")
    device = driver.active.get_current_device()
    key = (id(kernel), spec_key(device, args, kwargs))
    hit = _PAIR_CACHE.get(key)
    if hit is None:
        first = kernel.warmup(*args, grid=grid, **kwargs, **{k: 0 for k in buffers})
        offs = smem_offsets(first.asm["ttgir"])
        missing = [n for n in buffers.values() if n not in offs]
        if missing:
            raise RuntimeError(f"pair launch: no shared offset found for {missing}")
        # the printer suffixes a repeated name (`k_s`, `k_s_0`): a name must be one buffer's
        twice = [n for n in buffers.values() if f"{n}_0" in offs]
        if twice:
            raise RuntimeError(f"pair launch: more than one buffer named {twice}")
        consts = {k: offs[n] for k, n in buffers.items()}
        compiled = kernel.warmup(*args, grid=grid, **kwargs, **consts)
        again = smem_offsets(compiled.asm["ttgir"])
        if any(again.get(n) != offs[n] for n in buffers.values()):
            raise RuntimeError("pair launch: the buffers moved between the two compiles")
        tail = []
        for p in kernel.params[len(args):]:
            if p.name in kwargs:
                tail.append(kwargs[p.name])
            elif p.name in consts:
                tail.append(consts[p.name])
            elif p.has_default:
                tail.append(p.default)
            else:
                raise TypeError(f"pair launch: no value for parameter {p.name}")
        packed = tuple(compiled.packed_metadata)
        meta = (packed[0], 2) + packed[2:]  # num_warps, num_ctas (the cluster), shared bytes
        hit = (compiled, meta, tuple(tail))
        _PAIR_CACHE[key] = hit
    compiled, meta, tail = hit
    stream = driver.active.get_current_stream(device)
    compiled.run(1, grid[1], grid[2], stream, compiled.function, meta, None, None, None,
                 *args, *tail)
