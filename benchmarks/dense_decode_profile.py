"""One dense-decode shape, called a few times through the public API, for Nsight Compute:

    ncu --kernel-name regex:"_dense_decode_gluon_kernel|_decode_combine" --launch-skip 4 \
        --launch-count 2 --section SpeedOfLight --section WarpStateStats \
        python3 benchmarks/dense_decode_profile.py 128 1 16 8192

Arguments: b s_q h_q s_k [causal: 0 / 1]."""
import sys

import torch

import openmla
from openmla.testing import generate as gen


def main() -> None:
    b, s_q, h_q, s_k = (int(x) for x in sys.argv[1:5])
    causal = len(sys.argv) > 5 and sys.argv[5] == "1"
    case = gen.dense_decode_inputs(b, s_q, h_q, s_k, causal=causal, device="cuda", seed=0)
    kw = gen.public_kwargs(case)
    for _ in range(4):
        meta = openmla.get_mla_metadata()[0]
        openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=meta)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
