"""Consistency models (Song et al. 2023): s is pinned to eps = sigma_min."""

import torch

from precondlab.labels import with_labels
from precondlab.preconditioners.base import Preconditioner, _bcast
from precondlab.registry import register


@register("preconditioner", "cm")
class CMPrecond(Preconditioner):
    """CM: c_skip = sd^2/((t-eps)^2+sd^2), c_out = sd (t-eps)/sqrt(sd^2+t^2); jumps to eps only."""

    denoiser_form = False
    uses_s = False

    def f(self, t, s):  # c_skip (math note, section 2); s is ignored: always eps.
        sd, eps = self.sigma_data, self.schedule.sigma_min
        return sd ** 2 / ((t - eps) ** 2 + sd ** 2)

    def g(self, t, s):  # c_out
        sd, eps = self.sigma_data, self.schedule.sigma_min
        return sd * (t - eps) / (sd ** 2 + t ** 2).sqrt()

    def network_output(self, net, x, t, s, class_labels=None):
        c_in = 1 / (self.sigma_data ** 2 + t ** 2).sqrt()
        c_noise = t.log() / 4
        return with_labels(net, _bcast(c_in, x) * x, c_noise, torch.zeros_like(c_noise), class_labels=class_labels)
