"""SIGINT and SIGTERM during a run: finish the step, write a checkpoint, end the MLflow run KILLED.

Ctrl-C sends SIGINT; ``docker stop``, SLURM (at the time limit or on ``scancel``) and Kubernetes send
SIGTERM. Inside ``SignalGuard`` the first signal is a request: the training loop honours it at the
end of the current step (``guard.requested``). Outside the loop (setup, statistics) it raises
``Interrupted`` at once, and so does a second signal anywhere ("press Ctrl-C again to stop now").
The exit status is 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as shells report it.
"""

from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A run stopped by a signal (a BaseException, like KeyboardInterrupt: ``except Exception`` lets it by)."""

    def __init__(self, signum: int, step: int | None = None, run_id: str | None = None,
                 checkpoint: str | None = None):
        super().__init__(signum, step, run_id, checkpoint)
        self.signum, self.step, self.run_id, self.checkpoint = signum, step, run_id, checkpoint

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        where = f" at step {self.step}" if self.step is not None else ""
        return f"stopped by {self.name}{where}"


class SignalGuard:
    """Install the handlers for the duration of a run (main thread only; elsewhere a no-op: Ray's
    trial threads are stopped by Tune, not by signals)."""

    def __init__(self):
        self.requested: int | None = None
        self.deferring = False
        self._previous: dict = {}

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None or not self.deferring:
            self.requested = signum
            raise Interrupted(signum)
        self.requested = signum
        print(f"\nprecondlab: {signal.Signals(signum).name} received: finishing this step and writing a checkpoint "
              f"(send it again to stop at once)", file=sys.stderr, flush=True)

    def check(self, step: int) -> None:
        """Raise Interrupted if a signal arrived during the step that just ended."""
        if self.requested is not None:
            raise Interrupted(self.requested, step)


__all__ = ["Interrupted", "SignalGuard"]
