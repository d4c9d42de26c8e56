"""openmla: FlashMLA's Multi-head Latent Attention API in Python (Triton / Gluon kernels, and a
float32 reference path that runs on any device). ``import openmla as flash_mla`` works."""
from . import ops  # noqa: F401
from .ops import dense_decode, mha_prefill, sparse_decode, sparse_prefill  # noqa: F401  (backends)
from .interface import (
    FlashMLASchedMeta,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_mla_sparse_fwd,
    flash_mla_with_kvcache,
    get_mla_metadata,
)

__version__ = "0.1.0"
FLASH_MLA_API_VERSION = "1.0.0"  # the FlashMLA API (version and 2026-01 call forms) implemented

__all__ = [
    "get_mla_metadata",
    "flash_mla_with_kvcache",
    "flash_mla_sparse_fwd",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
]
