"""Split-KV schedule of the decode kernels, computed on the device (SPEC §3)."""
