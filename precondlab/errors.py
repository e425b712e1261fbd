"""Exceptions shared across precondlab (no heavy imports: the CLI imports this at every start).

* ``UserInputError``: input a person can fix (a missing or corrupt dataset, checkpoint or
  feature-extractor file, a teacher and dataset that do not fit). Its message names the file and
  says what to do; the CLI prints that message alone and exits with status 2. The concrete
  classes (``DatasetError``, ``CheckpointError``, ``FeatureExtractorError``) live beside the code
  that raises them and subclass it.
* ``CheckpointError``: a checkpoint file that cannot be used (named, with what is wrong).
* ``NonFiniteLossError``: training diverged; the run stops and the last good checkpoint is kept.
"""

from __future__ import annotations

import re


class UserInputError(Exception):
    """Bad input the user can fix; the message says which file or setting and what to do."""


class CheckpointError(UserInputError, RuntimeError):
    """A checkpoint (teacher, student, training state) that is missing, corrupt, unsupported or asks
    to run code; the message names the file and what is wrong with it, in one line."""


class ContractError(UserInputError):
    """A component that breaks the contract of its kind (docs/plugins.md): named with its plugin."""


class PluginError(UserInputError):
    """An exception raised inside a plugin's code during a run: named with the plugin."""


class ResumeError(UserInputError):
    """A run that cannot be resumed as asked (unknown run, no checkpoint, a config that changes the math)."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: the run stops (its MLflow run, if any, is marked FAILED)
    and the last good checkpoint is kept."""


# gin re-raises an exception from inside a configurable with a line appended, e.g.
# "\n  In call to configurable 'edm_pkl' (<function edm_pkl at 0x7f...>)".
_GIN_CONTEXT = re.compile(r"\n\s*In call to configurable '[^']*' \([^\n]*\)")


def user_message(exc: BaseException) -> str:
    """The exception's text without the call-site lines gin appends (the message names the
    file and the fix by itself)."""
    return _GIN_CONTEXT.sub("", str(exc)).strip()


__all__ = ["CheckpointError", "ContractError", "NonFiniteLossError", "PluginError", "ResumeError", "UserInputError",
           "user_message"]
