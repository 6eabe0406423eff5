import os

# Triton kernels run on CPU tensors in the interpreter; this must be set before anything imports triton
# (pytest imports this package before any conftest or test module).
os.environ.setdefault("TRITON_INTERPRET", "1")
