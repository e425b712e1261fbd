"""Image-space trajectory alignment (student vs teacher from the same noise) and sample grids."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def alignment(student_samples: torch.Tensor,
              teacher_samples: torch.Tensor,
              data_range: float = 2.0) -> dict:
    """MSE per scalar and PSNR = 10 log10(data_range^2 / MSE) between paired images in [-1, 1].

    Both come from the same noise, so this measures trajectory alignment, not sample quality.
    ``data_range`` is the peak-to-peak range of the data: 2 for [-1, 1]. PSNR is computed from the
    MSE over the whole set (inf when the samples coincide).
    """
    if student_samples.shape != teacher_samples.shape:
        raise ValueError(f"shapes differ: {tuple(student_samples.shape)} vs {tuple(teacher_samples.shape)}")
    diff = student_samples.detach().double().cpu() - teacher_samples.detach().double().cpu()
    mse = float((diff ** 2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)
    return {"mse": mse, "psnr": psnr}


def save_grid(images: torch.Tensor, path, nrow: int = 8, padding: int = 2) -> Path:
    """Write (N, C, H, W) images in [-1, 1] as one PNG grid of ``nrow`` images per row.

    The file is (ceil(N / nrow) * (H + padding) + padding) high and
    (min(N, nrow) * (W + padding) + padding) wide (torchvision's make_grid layout).
    """
    import torchvision.utils   # seconds to import (it pulls in torch._dynamo): only when a grid is saved
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    torchvision.utils.save_image(x, str(path), nrow=nrow, padding=padding)
    return path
