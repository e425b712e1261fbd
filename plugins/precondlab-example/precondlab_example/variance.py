"""The 'variance' preconditioning of the CTM code base, registered by decorator."""

from precondlab import register
from precondlab.preconditioners import Preconditioner


@register("preconditioner", "variance")
class VariancePrecond(Preconditioner):
    """f = sqrt((s^2 + sd^2)/(t^2 + sd^2)), g = 1 - f: exact flow scaling of N(0, sd^2 I) data."""

    # f x_t alone is the exact flow of Gaussian data, so F is a correction to it, not a denoiser:
    # G with F = D(x_t, t) does not follow the teacher ODE as s -> t (precondlab check's
    # first_order rule), the consistency gap and the DSM regulariser do not apply.
    denoiser_form = False

    def f(self, t, s):
        sd2 = self.sigma_data ** 2
        return ((s ** 2 + sd2) / (t ** 2 + sd2)).sqrt()

    def g(self, t, s):
        return 1 - self.f(t, s)
