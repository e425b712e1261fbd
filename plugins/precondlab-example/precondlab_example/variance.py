"""The 'variance' preconditioning of the CTM code base, registered by decorator."""

from precondlab import register
from precondlab.preconditioners import Preconditioner


@register("preconditioner", "variance")
class VariancePrecond(Preconditioner):
    """f = sqrt((s^2 + sd^2)/(t^2 + sd^2)), g = 1 - f: exact flow scaling of N(0, sd^2 I) data."""

    def f(self, t, s):
        sd2 = self.sigma_data ** 2
        return ((s ** 2 + sd2) / (t ** 2 + sd2)).sqrt()

    def g(self, t, s):
        return 1 - self.f(t, s)
