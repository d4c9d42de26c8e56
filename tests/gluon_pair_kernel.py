"""A CTA-pair kernel for ``test_gluon_cluster.py``: each CTA of a cluster fills half of a
swizzled bf16 tile and copies it into the peer's shared memory; both write the whole tile out."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier

from openmla.ops._gluon_cluster import arrive_peer, bulk_to_peer, cluster_sync, smem_base


@gluon.jit
def _pair_reader(tile, ready, done, out_ptr, SMEM_DONE: gl.constexpr,
                 ROWS: gl.constexpr, COLS: gl.constexpr):
    cluster_sync()
    rank = gl.program_id(0)
    mbarrier.wait(ready, 0)
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    r = gl.arange(0, ROWS, layout=gl.SliceLayout(1, blk))
    c = gl.arange(0, COLS, layout=gl.SliceLayout(0, blk))
    gl.store(out_ptr + rank * ROWS * COLS + r[:, None] * COLS + c[None, :], tile.load(blk))
    # the peer has its half too: neither CTA leaves while a copy may still read it
    mbarrier.arrive(done, count=1)
    arrive_peer(smem_base() + SMEM_DONE, 1 - rank)
    mbarrier.wait(done, 0)

@gluon.jit
def _pair_writer(tile, ready, in_ptr, SMEM_TILE: gl.constexpr, SMEM_READY: gl.constexpr,
                 ROWS: gl.constexpr, COLS: gl.constexpr):
    cluster_sync()
    rank = gl.program_id(0)
    HALF: gl.constexpr = ROWS // 2
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    r = gl.arange(0, HALF, layout=gl.SliceLayout(1, blk)) + rank * HALF
    c = gl.arange(0, COLS, layout=gl.SliceLayout(0, blk))
    x = gl.load(in_ptr + r[:, None] * COLS + c[None, :])
    if rank == 0:
        tile.slice(0, HALF, dim=0).store(x)
    else:
        tile.slice(HALF, HALF, dim=0).store(x)
    fence_async_shared()
    gl.thread_barrier()  # every thread's stores fenced before thread 0 copies them
    HALF_BLOCK: gl.constexpr = HALF * 128  # 128-byte rows in 64-column blocks
    mbarrier.expect(ready, HALF_BLOCK * (COLS // 64))
    bulk_to_peer(smem_base() + SMEM_TILE + rank * HALF_BLOCK, smem_base() + SMEM_READY,
                 1 - rank, HALF_BLOCK, COLS // 64, 2 * HALF_BLOCK)

@gluon.jit
def _pair_kernel(in_ptr, out_ptr, SMEM_TILE: gl.constexpr, SMEM_READY: gl.constexpr,
                 SMEM_DONE: gl.constexpr, ROWS: gl.constexpr, COLS: gl.constexpr):
    layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, COLS], gl.bfloat16)
    tile = gl.allocate_shared_memory(gl.bfloat16, [ROWS, COLS], layout)
    ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    done = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(ready, count=1)
    mbarrier.init(done, count=2)
    fence_async_shared()
    gl.warp_specialize([
        (_pair_reader, (tile, ready, done, out_ptr, SMEM_DONE, ROWS, COLS)),
        (_pair_writer, (tile, ready, in_ptr, SMEM_TILE, SMEM_READY, ROWS, COLS)),
    ], [4], [96])


BUFFERS = {"SMEM_TILE": "tile", "SMEM_READY": "ready", "SMEM_DONE": "done"}
