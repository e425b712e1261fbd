"""A plain class named by an entry point (no decorator): precondlab registers it as 'ring'."""

import math

import torch

from precondlab.teachers.gmm import GMMTeacher


class RingTeacher(GMMTeacher):
    """2-D ring of K equal Gaussians (radius 1, std 0.05): a mode-coverage test teacher."""

    def __init__(self, num_components: int = 8, radius: float = 1.0, std: float = 0.05, schedule=None):
        angles = torch.arange(num_components, dtype=torch.float64) * 2 * math.pi / num_components
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        super().__init__(means=means.tolist(), stds=[std] * num_components, schedule=schedule)
