"""precondlab: preconditioning for consistency distillation (CM, CTM, BCM, Analytic-Precond)."""

from precondlab.registry import create, get, list_entries, load_plugins, register  # noqa: F401

__version__ = "0.1.0"
