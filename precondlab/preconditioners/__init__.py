from precondlab.preconditioners.base import Preconditioner, edm_scalings  # noqa: F401
