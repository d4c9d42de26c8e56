"""FlashMLA's module path ``flash_mla.flash_mla_interface``, for callers that import from it."""
from .interface import (  # noqa: F401
    FlashMLASchedMeta,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_mla_sparse_fwd,
    flash_mla_with_kvcache,
    get_mla_metadata,
)
