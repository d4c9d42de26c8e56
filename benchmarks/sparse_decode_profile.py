"""One sparse-decode shape (V3.2 FP8 cache), called a few times through the public API, for
Nsight Compute:

    ncu --kernel-name regex:_sparse_decode_gluon_kernel --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section SourceCounters \
        python3 benchmarks/sparse_decode_profile.py 128 1 16

Arguments: b s_q h_q [topk, default 2048; s_k 32768]."""
import sys

import torch

import openmla
from openmla.testing import generate as gen


def main() -> None:
    b, s_q, h_q = (int(x) for x in sys.argv[1:4])
    topk = int(sys.argv[4]) if len(sys.argv) > 4 else 2048
    case = gen.sparse_decode_inputs(b, s_q, h_q, 32768, topk, varlen=False, device="cuda",
                                    seed=0)
    kw = gen.public_kwargs(case)
    for _ in range(4):
        meta = openmla.get_mla_metadata()[0]
        openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=meta)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
