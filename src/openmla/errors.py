"""Exception classes of openmla.

FlashMLA reports bad input with ``RuntimeError`` (its C++ checks) or ``AssertionError`` (its
Python asserts). openmla raises ``ValueError`` / ``TypeError`` / ``NotImplementedError`` whose
message names the argument, what was expected and what was given; each class below also derives
from the class FlashMLA raised in the same situation, so handlers written for FlashMLA still
catch it.
"""


class OpenMLAError(Exception):
    """Base class of every error openmla raises for bad input."""


class ArgumentValueError(OpenMLAError, ValueError, RuntimeError):
    """An argument has a wrong shape, value, stride, device or combination."""


class ArgumentTypeError(OpenMLAError, TypeError, RuntimeError):
    """An argument has a wrong type or dtype."""


class UnsupportedError(OpenMLAError, NotImplementedError):
    """A valid request that no backend of openmla supports (yet). NotImplementedError is a
    RuntimeError."""


class SchedMetaError(OpenMLAError, ValueError, AssertionError):
    """Misuse of the scheduling metadata: a ``FlashMLASchedMeta`` reused with a call whose
    configuration differs from the one it was initialised with, or a wrong metadata argument
    (FlashMLA asserts in both cases)."""
