"""Distances between a student estimate and its target (per example)."""

from __future__ import annotations

import math

import torch

from precondlab.registry import register


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


@register("loss", "l2")
def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per example."""
    return _flat(a - b).pow(2).mean(-1)


@register("loss", "pseudo_huber")
def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c_per_sqrt_dim: float = 0.00054) -> torch.Tensor:
    """sqrt(|a - b|^2 + c^2) - c with c = 0.00054 sqrt(d) (Song and Dhariwal 2023)."""
    diff = _flat(a - b)
    c = c_per_sqrt_dim * math.sqrt(diff.shape[1])
    return (diff.pow(2).sum(-1) + c * c).sqrt() - c
