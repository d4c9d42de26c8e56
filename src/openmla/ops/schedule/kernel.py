"""Device kernel of the split-KV schedule (semantics: ``ref.py``). One program walks the
requests in chunks twice: the total cost first, then prefix sums, pieces per request and, for
every part at once, the first and last request it touches. No host synchronisation, so a decode
step that computes its schedule can be captured in a CUDA graph."""
import triton
import triton.language as tl


@triton.jit
def _decode_schedule_kernel(
    lengths_ptr, meta_ptr, num_splits_ptr,
    batch, num_parts,
    BLOCK_N: tl.constexpr, OVERHEAD: tl.constexpr, META_COLS: tl.constexpr,
    CHUNK: tl.constexpr, PARTS: tl.constexpr,
):
    total = tl.zeros([], dtype=tl.int32)
    for c0 in range(0, batch, CHUNK):
        offs = c0 + tl.arange(0, CHUNK)  # [CHUNK]
        mask = offs < batch
        length = tl.load(lengths_ptr + offs, mask=mask, other=0)
        n = tl.maximum((length + BLOCK_N - 1) // BLOCK_N, 1)
        total += tl.sum(tl.where(mask, n + OVERHEAD, 0), axis=0)
    payload = (total + num_parts - 1) // num_parts

    parts = tl.arange(0, PARTS)  # [PARTS]
    x0 = parts * payload
    x1 = x0 + payload
    begin = tl.zeros([PARTS], dtype=tl.int32)
    started = tl.zeros([PARTS], dtype=tl.int32)
    s_begin = tl.zeros([PARTS], dtype=tl.int32)
    carry_s = tl.zeros([], dtype=tl.int32)
    carry_pieces = tl.zeros([], dtype=tl.int32)
    tl.store(num_splits_ptr, carry_pieces)
    for c0 in range(0, batch, CHUNK):
        offs = c0 + tl.arange(0, CHUNK)  # [CHUNK]
        mask = offs < batch
        length = tl.load(lengths_ptr + offs, mask=mask, other=0)
        n = tl.maximum((length + BLOCK_N - 1) // BLOCK_N, 1)
        cost = tl.where(mask, n + OVERHEAD, 0)
        s = tl.cumsum(cost, axis=0) - cost + carry_s  # [CHUNK] exclusive prefix
        start = s + OVERHEAD
        end = start + n
        pieces = tl.where(mask, (end - 1) // payload - start // payload + 1, 0)
        tl.store(num_splits_ptr + 1 + offs, tl.cumsum(pieces, axis=0) + carry_pieces, mask=mask)
        before = (end[None, :] <= x0[:, None]) & mask[None, :]  # [PARTS, CHUNK]
        begin += tl.sum(before.to(tl.int32), axis=1)
        s_begin += tl.sum(tl.where(before, cost[None, :], 0), axis=1)
        started += tl.sum(((start[None, :] < x1[:, None]) & mask[None, :]).to(tl.int32), axis=1)
        carry_s += tl.sum(cost, axis=0)
        carry_pieces += tl.sum(pieces, axis=0)
    pmask = parts < num_parts
    row = meta_ptr + parts * META_COLS
    tl.store(row + 0, begin, mask=pmask)
    tl.store(row + 1, started - 1, mask=pmask)
    tl.store(row + 2, s_begin, mask=pmask)
    tl.store(row + 3, tl.zeros([PARTS], dtype=tl.int32) + payload, mask=pmask)
    for col in tl.static_range(4, META_COLS):
        tl.store(row + col, tl.zeros([PARTS], dtype=tl.int32), mask=pmask)
