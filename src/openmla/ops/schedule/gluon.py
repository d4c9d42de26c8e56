"""The schedule's metadata as the Gluon decode kernels read it (``ref.py`` has the layout)."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def schedule_part(meta_ptr, pid_part, META_COLS: gl.constexpr):
    """Part ``pid_part`` of the schedule: its first and last request, the first request's
    position on the schedule's line, the payload, and the part's interval on that line."""
    meta = meta_ptr + pid_part * META_COLS
    payload = gl.load(meta + 3)
    part_lo = pid_part * payload
    return (gl.load(meta + 0), gl.load(meta + 1), gl.load(meta + 2), payload, part_lo,
            part_lo + payload)
