"""Student samplers (registered: sampler.deterministic, sampler.gamma) and the sampling times of an evaluation."""

from precondlab.samplers.ctm import sample_deterministic, sample_gamma  # noqa: F401
from precondlab.samplers.times import (check_nfe_times, describe_times, nfe_grid, nfe_times,  # noqa: F401
                                       sample_student)
