"""Consistency trajectory models (Kim et al. 2024)."""

from precondlab.preconditioners.base import Preconditioner
from precondlab.registry import register


@register("preconditioner", "ctm")
class CTMPrecond(Preconditioner):
    """CTM: G = (s/t) x_t + (1 - s/t) D_theta(x_t, t, s), the teacher ODE's Euler (DDIM) step."""

    def f(self, t, s):
        return s / t

    def g(self, t, s):
        return 1 - s / t
