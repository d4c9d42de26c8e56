"""One decode shape, called a few times through the public API, for Nsight Compute:

    ncu --kernel-name regex:"_dense_decode_gluon_kernel|_decode_combine" --launch-skip 4 \
        --launch-count 2 --section SpeedOfLight --section WarpStateStats \
        python3 benchmarks/dense_decode_profile.py 128 1 16 8192
    ncu --kernel-name regex:_sparse_decode_gluon_kernel --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section SourceCounters \
        python3 benchmarks/dense_decode_profile.py --sparse 128 1 16

Arguments: b s_q h_q s_k [causal: 0 / 1]; with --sparse: b s_q h_q [topk, default 2048] over a
V3.2 FP8 cache of 32768 tokens a request."""
import sys

import torch

import openmla
from openmla.testing import generate as gen


def main() -> None:
    args = sys.argv[1:]
    sparse = args[:1] == ["--sparse"]
    if sparse:
        args = args[1:]
    b, s_q, h_q = (int(x) for x in args[:3])
    if sparse:
        topk = int(args[3]) if len(args) > 3 else 2048
        case = gen.sparse_decode_inputs(b, s_q, h_q, 32768, topk, varlen=False, device="cuda",
                                        seed=0)
    else:
        causal = len(args) > 4 and args[4] == "1"
        case = gen.dense_decode_inputs(b, s_q, h_q, int(args[3]), causal=causal, device="cuda",
                                       seed=0)
    kw = gen.public_kwargs(case)
    for _ in range(4):
        meta = openmla.get_mla_metadata()[0]
        openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=meta)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
