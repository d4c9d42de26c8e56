"""Argument checks shared by the public functions: O(1) metadata checks that raise errors naming
the argument, what was expected and what was given (SPEC §1.7). Data-dependent checks (index
bounds, sequence lengths against the cache) run only when ``OPENMLA_DEBUG=1``: they read tensors
back to the host."""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import torch

from .errors import ArgumentTypeError, ArgumentValueError


def debug_enabled() -> bool:
    return os.environ.get("OPENMLA_DEBUG", "0") not in ("", "0")


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return " or ".join(str(d).replace("torch.", "") for d in dtypes)


def tensor(name: str, t: object, *, ndim: int | None = None,
           dtypes: Sequence[torch.dtype] | None = None, shape: Sequence[int | None] | None = None,
           device: torch.device | None = None, last_dim_contiguous: bool = False,
           contiguous: bool = False, why: str = "") -> torch.Tensor:
    """Check one tensor argument; ``shape`` entries of None match any size."""
    suffix = f" ({why})" if why else ""
    if not isinstance(t, torch.Tensor):
        raise ArgumentTypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ArgumentValueError(
            f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}{suffix}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ArgumentTypeError(
            f"{name}: expected dtype {_dtype_names(dtypes)}{suffix}, got {str(t.dtype).replace('torch.', '')}")
    if shape is not None:
        if t.dim() != len(shape) or any(e is not None and e != g for e, g in zip(shape, t.shape)):
            want = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
            raise ArgumentValueError(
                f"{name}: expected shape {want}{suffix}, got {list(t.shape)}")
    if device is not None and t.device != device:
        raise ArgumentValueError(
            f"{name}: expected a tensor on {device} (the device of q), got one on {t.device}")
    if contiguous and not t.is_contiguous():
        raise ArgumentValueError(f"{name}: expected a contiguous tensor, got strides {t.stride()}")
    if last_dim_contiguous and t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ArgumentValueError(
            f"{name}: expected the last dim to be contiguous (stride 1), got strides {t.stride()}")
    return t


def optional_tensor(name: str, t: object, **kw) -> torch.Tensor | None:
    return None if t is None else tensor(name, t, **kw)


def integer(name: str, value: object, *, allowed: Sequence[int] | None = None,
            minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name}: expected an int, got {type(value).__name__}")
    if allowed is not None and value not in allowed:
        raise ArgumentValueError(
            f"{name}: expected {' or '.join(map(str, allowed))}, got {value}")
    if minimum is not None and value < minimum:
        raise ArgumentValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def scale(name: str, value: object, *, required: bool = False) -> float | None:
    if value is None:
        if required:
            raise ArgumentTypeError(f"{name}: expected a float, got None")
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        raise ArgumentTypeError(
            f"{name}: expected a Python float, got a tensor (pass float(t); reading a device "
            f"tensor would synchronise)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name}: expected a float, got {type(value).__name__}")
    value = float(value)
    if not value == value or value in (float("inf"), float("-inf")):
        raise ArgumentValueError(f"{name}: expected a finite float, got {value}")
    return value


def flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def must_be_none(name: str, value: object, why: str) -> None:
    if value is not None:
        raise ArgumentValueError(f"{name}: expected None {why}, got {type(value).__name__}")


def nonnegative_values(name: str, t: torch.Tensor, upper: int | None = None,
                       upper_name: str = "") -> None:
    """Debug-mode check that every value lies in [0, upper]."""
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0:
        raise ArgumentValueError(f"{name}: expected values >= 0, got {lo}")
    if upper is not None and hi > upper:
        raise ArgumentValueError(f"{name}: expected values <= {upper} ({upper_name}), got {hi}")
