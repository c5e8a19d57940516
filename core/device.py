"""The one place where the compute device is chosen."""

from __future__ import annotations

import os

import torch

__all__ = ["get_device"]


def get_device() -> torch.device:
    """CUDA when available (and not disabled by ``BIRDSHIELD_DEVICE=cpu``), else CPU."""
    want = os.environ.get("BIRDSHIELD_DEVICE", "").strip().lower()
    if want:
        return torch.device(want)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
