"""Offline checks of kernels compiled for Hopper (sm_90a) on any machine: what the ptxas bundled
with Triton reports for the PTX Triton generated (registers, spill bytes, warnings)."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class PtxasReport:
    registers: int  # -1 when ptxas did not say
    spill_stores: int  # bytes; -1 when ptxas did not say
    text: str  # ptxas's whole output (warnings included)


def ptxas_report(ptx: str, arch: str = "sm_90a") -> PtxasReport:
    """Assemble ``ptx`` with ``ptxas -v`` and read its resource report."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        res = subprocess.run([ptxas, "-v", f"-arch={arch}", f.name, "-o", os.devnull],
                             capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    text = res.stderr + res.stdout
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return PtxasReport(int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else -1,
                       text)


def with_constexpr_defaults(fn, constexprs: dict) -> dict:
    """``constexprs`` completed with the defaults of ``fn``'s constexpr parameters it leaves
    out, as a launch gives them (an offline compile would otherwise take them as run-time
    arguments)."""
    return {**{p.name: p.default for p in fn.params if p.is_constexpr and p.has_default},
            **constexprs}
