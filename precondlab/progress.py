"""What a run says while it works: named phases, progress bars, and how long each phase took.

Everything goes to stderr (stdout is for results: the summary, or ``--json``). On a terminal a
bar redraws in place; elsewhere (CI logs, files) a plain line is printed every ``interval``
seconds and at the end, so a log never fills with carriage returns.

    phases = Phases(stream=sys.stderr)
    with phases("statistics", "120 lambda points x 4096 samples"):
        for i in phases.bar(range(120), "statistics", unit="point"): ...
    phases.seconds   # {"statistics": 2.1, ...} -> time/<phase> in MLflow and the summary
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time
from typing import Iterable, Iterator

_CURRENT: contextvars.ContextVar["Phases | None"] = contextvars.ContextVar("precondlab_phases", default=None)


def is_terminal(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class Bar:
    """A progress bar: tqdm on a terminal, periodic lines otherwise, nothing when disabled."""

    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0, stream=None,
                 enabled: bool = True, interval: float = 10.0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = stream or sys.stderr
        self.enabled, self.interval = enabled, interval
        self.postfix = ""
        self._tqdm = None
        self._start = self._last = time.monotonic()
        self._first = initial
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm
            self._tqdm = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                              dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = ", ".join(f"{k} {v}" for k, v in postfix.items())
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.update(n)
            if postfix:
                self._tqdm.set_postfix_str(self.postfix)
        elif time.monotonic() - self._last >= self.interval:
            self._line()

    def _line(self) -> None:
        self._last = now = time.monotonic()
        rate = (self.n - self._first) / max(now - self._start, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else float("nan")
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"  {self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n / max(self.total, 1):.0f}%), "
              f"{rate:.3g} {self.unit}/s, {eta:.0f} s left{extra}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.enabled and self.n != self._first:
            self._line()


class Phases:
    """Named phases of a run: each says when it starts (and what it does), and its seconds are kept.
    While a phase runs, components reach it with ``progress.bar(...)`` (no argument passing)."""

    def __init__(self, stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, what: str = "", after: float = 0.0) -> Iterator[None]:
        """A phase; its line is printed when it starts, or only once it has lasted ``after`` seconds
        (a phase that usually ends at once, or fails at once with its own message, stays quiet)."""
        header = f"[precondlab] {name}{': ' + what if what else ''}"
        timer = None
        if self.enabled and after <= 0:
            print(header, file=self.stream, flush=True)
        elif self.enabled:
            timer = threading.Timer(after, lambda: print(header, file=self.stream, flush=True))
            timer.daemon = True
            timer.start()
        start = time.perf_counter()
        token = _CURRENT.set(self)
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
            _CURRENT.reset(token)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def note(self, text: str) -> None:
        if self.enabled:
            print(f"  {text}", file=self.stream, flush=True)

    def bar(self, items: Iterable, desc: str, total: int | None = None, unit: str = "it") -> Iterator:
        items = list(items) if total is None else items
        bar = Bar(total if total is not None else len(items), desc, unit, stream=self.stream, enabled=self.enabled)
        try:
            for item in items:
                yield item
                bar.update(1)
        finally:
            bar.close()


def bar(total: int, desc: str, unit: str = "it") -> Bar:
    """A bar in the current phase's stream (disabled outside a phase, e.g. in library use)."""
    phases = _CURRENT.get()
    return Bar(total, desc, unit, stream=phases.stream if phases else None,
               enabled=bool(phases and phases.enabled))


__all__ = ["Bar", "Phases", "bar", "is_terminal"]
