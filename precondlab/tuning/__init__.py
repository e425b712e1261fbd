"""Ray Tune sweeps: the definition (spec), one trial in a Ray worker (trial), the driver (runner)."""
