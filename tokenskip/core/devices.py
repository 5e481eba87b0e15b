"""The GPUs a process may use, counted once for every stage that splits work over them."""

from __future__ import annotations

import os


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (none without torch or CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip() and gpu.strip() != "-1"]
    try:
        import torch
    except ImportError:  # a launcher needs no torch
        return []
    return [str(i) for i in range(torch.cuda.device_count())]
