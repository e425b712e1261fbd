"""Content hashes for cache keys and checksums: files read in chunks, tensors by their bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def update_with_file(h, path: str | Path, chunk: int = 1 << 20) -> None:
    """Feed a file's bytes into the hash object ``h``, a chunk at a time."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes."""
    h = hashlib.new(algorithm)
    update_with_file(h, path)
    return h.hexdigest()


def update_with_tensor(h, label: str, tensor: torch.Tensor) -> None:
    """Feed ``label:dtype:shape:`` and then the tensor's raw bytes into ``h``."""
    t = tensor.detach().cpu().contiguous()
    h.update(f"{label}:{t.dtype}:{tuple(t.shape)}:".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
