"""Shared pytest setup: the ``gpu`` marker skips cleanly without CUDA; Triton kernels run in the
interpreter without CUDA; fixed seeds per test."""
import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter (set before triton is imported;
# openmla imports it only when a kernel first runs).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poisoned_outputs():
    """Every float tensor allocated with torch.empty during the test starts as NaN, so an output
    element a kernel fails to write fails the comparison with the reference."""
    from openmla.testing.compare import nan_filled_outputs

    with nan_filled_outputs():
        yield
