"""openmla's ops: one package per op, each with its float32 reference beside its kernels."""
