"""Bidirectional consistency models (Li and He 2024), as in the authors' released code."""

from precondlab.labels import with_labels
from precondlab.preconditioners.base import Preconditioner, _bcast, edm_scalings
from precondlab.registry import register


@register("preconditioner", "bcm")
class BCMPrecond(Preconditioner):
    """BCM: c_skip = (sd^2 + t s)/(sd^2 + t^2), c_out = sd (t - s)/sqrt(sd^2 + t^2)."""

    denoiser_form = False

    def f(self, t, s):
        sd2 = self.sigma_data ** 2
        return (sd2 + t * s) / (sd2 + t ** 2)

    def g(self, t, s):
        sd = self.sigma_data
        return sd * (t - s) / (sd ** 2 + t ** 2).sqrt()

    def network_output(self, net, x, t, s, class_labels=None):
        _, _, c_in, c_noise_t = edm_scalings(t, self.sigma_data)
        _, _, _, c_noise_s = edm_scalings(s, self.sigma_data)
        return with_labels(net, _bcast(c_in, x) * x, c_noise_t, c_noise_s, class_labels=class_labels)
