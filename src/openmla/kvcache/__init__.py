"""KV-cache formats."""
from .fp8 import (  # noqa: F401
    FP8_FORMATS,
    Fp8Format,
    dequantize_kvcache,
    fp8_format,
    gather_dequant,
    quantize_kvcache,
)
