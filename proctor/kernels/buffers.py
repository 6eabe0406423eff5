"""Output buffers for the kernels, poisoned so that an element a kernel forgot to write cannot pass a test."""

from __future__ import annotations

import torch


def poisoned(*shape: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NaN for floats, -1 for integers."""
    return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
