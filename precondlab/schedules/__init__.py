"""Noise schedules: the interface (``Schedule``) and EDM's (``EDMSchedule``, registered as schedule.edm)."""

from precondlab.schedules.base import Schedule, _bcast  # noqa: F401
from precondlab.schedules.edm import EDMSchedule  # noqa: F401

__all__ = ["EDMSchedule", "Schedule"]
