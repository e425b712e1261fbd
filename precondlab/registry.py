"""One registry per kind of component; registration is one decorator, discovery one call.

    @register("preconditioner", "ctm")
    class CTMPrecond(Preconditioner): ...

    list_entries("preconditioner")      -> [Entry(name="ctm", ...), ...]
    get("preconditioner", "ctm")        -> CTMPrecond

Every registered entry is also a gin configurable named ``<kind>.<name>``, so a gin file
says ``train.preconditioner = @preconditioner.ctm()``. Third-party packages register through
the entry-point group ``precondlab.<kind>s`` (``precondlab.preconditioners``, ...); each entry
point names a module or object whose import runs its ``@register`` decorators. Call
``load_plugins()`` before parsing gin (gin does not scan entry points).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import gin

# The call contract of each kind, shown by `precondlab list` (detectron2 style).
KINDS: dict[str, str] = {
    "schedule": "called with its gin parameters; returns a Schedule (alpha, sigma, lambda, Karras grid).",
    "teacher": "called with its gin parameters; returns a Teacher (denoiser D(x, t), data sampler, schedule).",
    "ode": "called with its gin parameters; returns an ODEGeneralization; .fit(teacher) gives l(lambda), s(lambda).",
    "preconditioner": "called with its gin parameters; returns a Preconditioner exposing f(t, s), g(t, s) and jump().",
    "student": "called with (dim=...) and gin parameters; returns an nn.Module F(x, c_noise_t, c_noise_s).",
    "objective": "called with its gin parameters; returns an Objective: objective(student, target, precond, teacher, x0, generator) -> (loss, logs).",
    "loss": "called with its gin parameters; returns a callable distance(a, b) -> per-example tensor.",
    "sampler": "a function sampler(jump, x, ts, *, generator=None, **kw) -> samples (k-diffusion style).",
    "dataset": "called with its gin parameters; returns a finite point set or image dataset.",
    "feature_extractor": "called with (mode=, device=, inception_path=, allow_download=) and its gin parameters ('classifier': classifier_path=, device=); returns a FeatureExtractor: images in [0, 255] -> (N, D) features, with the metric prefix and label that name it.",
}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    module: str

    @property
    def doc(self) -> str:
        text = (self.obj.__doc__ or "").strip()
        return text.splitlines()[0] if text else "(no docstring)"


class UnknownEntryError(KeyError):
    """An unknown registry name; the message lists the close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0])


_ENTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_PLUGINS_LOADED = False


def _check_kind(kind: str) -> str:
    if kind in _ENTRIES:
        return kind
    singular = kind[:-1] if kind.endswith("s") else kind
    if singular in _ENTRIES:
        return singular
    close = difflib.get_close_matches(kind, list(_ENTRIES), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownEntryError(f"Unknown registry kind {kind!r}.{hint} Kinds: {', '.join(_ENTRIES)}.")


def register(kind: str, name: str | None = None) -> Callable[[Any], Any]:
    """Decorator: register a class or function under ``kind`` and expose it to gin."""
    kind = _check_kind(kind)

    def decorate(obj: Any) -> Any:
        entry_name = name or obj.__name__.lower()
        existing = _ENTRIES[kind].get(entry_name)
        if existing is not None:
            if existing.obj is obj or (existing.module == obj.__module__
                                       and getattr(existing.obj, "__qualname__", None) == obj.__qualname__):
                return existing.obj  # the same definition imported twice
            raise ValueError(f"{kind} {entry_name!r} is already registered by {existing.module}; "
                             f"choose another name for {obj.__module__}.{obj.__qualname__}.")
        configurable = gin.configurable(entry_name, module=kind)(obj)
        _ENTRIES[kind][entry_name] = Entry(kind, entry_name, configurable, obj.__module__)
        return configurable

    return decorate


def _close_matches(kind: str, name: str) -> list[str]:
    names = list(_ENTRIES[kind])
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.4)
    close += [n for n in names if (name in n or n in name) and n not in close]
    return close[:4]


def get(kind: str, name: str) -> Any:
    """The registered object; an unknown name raises with the close matches listed."""
    kind = _check_kind(kind)
    load_plugins()
    try:
        return _ENTRIES[kind][name].obj
    except KeyError:
        close = _close_matches(kind, name)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        known = ", ".join(sorted(_ENTRIES[kind])) or "(none)"
        raise UnknownEntryError(f"Unknown {kind} {name!r}.{hint} Registered {kind}s: {known}.") from None


def name_of(obj: Any) -> str:
    """'<kind>.<name>' of a registered class, function or instance (how gin files name it); else the
    class name. Used to name settings in error messages."""
    target = obj if isinstance(obj, type) or inspect.isfunction(obj) else type(obj)
    for kind, entries in _ENTRIES.items():
        for entry in entries.values():
            if entry.obj is target:
                return f"{kind}.{entry.name}"
    return target.__name__


def create(kind: str, name: str, **kwargs: Any) -> Any:
    return get(kind, name)(**kwargs)


def list_entries(kind: str | None = None) -> list[Entry]:
    load_plugins()
    kinds = [_check_kind(kind)] if kind else list(_ENTRIES)
    return [entry for k in kinds for _, entry in sorted(_ENTRIES[k].items())]


def is_registered(kind: str, name: str) -> bool:
    load_plugins()
    return name in _ENTRIES[_check_kind(kind)]


def suggest(kind: str, name: str) -> list[str]:
    return _close_matches(_check_kind(kind), name)


def load_builtins() -> None:
    """Import the modules whose decorators register the built-in entries."""
    importlib.import_module("precondlab.builtins")


def load_plugins(force: bool = False) -> list[str]:
    """Import every ``precondlab.<kind>s`` entry point; returns the names loaded.

    A plugin that fails to import is reported as a warning naming the package, so one broken
    plugin does not take the whole tool down.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED and not force:
        return []
    _PLUGINS_LOADED = True
    load_builtins()
    loaded = []
    for kind in KINDS:
        for group in (f"precondlab.{kind}s", f"precondlab.{kind}"):
            for ep in importlib.metadata.entry_points(group=group):
                try:
                    obj = ep.load()
                except Exception as exc:  # noqa: BLE001 - report, keep going
                    dist = ep.dist.name if ep.dist else "?"
                    warnings.warn(f"precondlab plugin {ep.name!r} from {dist} failed to load: {exc}",
                                  stacklevel=2)
                    continue
                if not isinstance(obj, type(importlib)) and not any(
                        e.obj is obj for e in _ENTRIES[kind].values()):
                    register(kind, ep.name)(obj)  # a plain object: register it under the entry-point name
                loaded.append(f"{kind}:{ep.name}")
    return loaded
