"""Importing this module registers every built-in entry (each module's @register runs)."""

from precondlab import data, evaluation, image_evaluator, metrics, sampling, schedule  # noqa: F401
from precondlab.nets import songunet  # noqa: F401
from precondlab.odes import analytic, simple  # noqa: F401
from precondlab.preconditioners import analytic as _analytic, bcm, cm, ctm  # noqa: F401
from precondlab.students import mlp  # noqa: F401
from precondlab.teachers import edm_pkl, empirical, gmm, state_dict  # noqa: F401
from precondlab.training import losses, objectives  # noqa: F401
