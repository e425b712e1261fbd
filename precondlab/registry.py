"""One registry per kind of component; registration is one decorator, discovery one call.

    @register("preconditioner", "ctm")
    class CTMPrecond(Preconditioner): ...

    list_entries("preconditioner")      -> [Entry(name="ctm", ...), ...]
    get("preconditioner", "ctm")        -> CTMPrecond

Every registered entry is also a gin configurable named ``<kind>.<name>``, so a gin file says
``experiment.preconditioner = @preconditioner.ctm()``.

Components are declared the same way whoever wrote them: an entry point in the group of their
kind (``GROUPS``: ``precondlab.preconditioners``, ``precondlab.losses``, ...) names the module or
object; ``load_plugins()`` imports them, precondlab's own first (its ``pyproject.toml`` lists
them), so that no plugin can take a built-in's name. This module imports no component. The group
``precondlab.configurables`` names modules that declare other gin configurables (the experiment,
the evaluators). A plugin that fails to load (an import error, a name clash, an entry point that
is not callable, a ``register`` that raises) is one warning line naming its distribution and
entry point; everything else keeps working, and using a name it would have provided says why it
is missing. The written contract of each kind is ``docs/plugins.md``.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import importlib.metadata
import inspect
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import gin

# The call contract of each kind, shown by `precondlab list` (detectron2 style); in full: docs/plugins.md.
KINDS: dict[str, str] = {
    "schedule": "called with its gin parameters; returns a Schedule (alpha, sigma, lambda, Karras grid).",
    "teacher": "called with its gin parameters; returns a Teacher (denoiser D(x, t), data sampler, schedule; "
               "label_dim > 0: class-conditional, D(x, t, class_labels=) and sample_data).",
    "ode": "called with its gin parameters; returns an ODEGeneralization; .fit(teacher) gives l(lambda), s(lambda).",
    "preconditioner": "called with its gin parameters; returns a Preconditioner: f(t, s), g(t, s) with "
                      "f(t, t) = 1, g(t, t) = 0, and jump().",
    "student": "called with (dim=...) and gin parameters; returns an nn.Module "
               "F(x, c_noise_t, c_noise_s[, class_labels]).",
    "objective": "called with its gin parameters; returns an Objective: objective(student, target, precond, "
                 "teacher, x0, generator[, class_labels=]) -> (loss, logs).",
    "loss": "called with its gin parameters; returns a callable distance(a, b) -> per-example tensor.",
    "sampler": "a function sampler(jump, x, ts, *, generator=None, **kw) -> samples (k-diffusion style).",
    "dataset": "called with its gin parameters; returns a finite point set or image dataset.",
    "feature_extractor": "called with (mode=, device=, inception_path=, allow_download=) and its gin parameters "
                         "('classifier': classifier_path=, device=); returns a FeatureExtractor: images in "
                         "[0, 255] -> (N, D) features, with the metric prefix and label that name it.",
}
_PLURAL = {"loss": "losses"}
GROUPS: dict[str, str] = {kind: f"precondlab.{_PLURAL.get(kind, kind + 's')}" for kind in KINDS}
CONFIGURABLES = "precondlab.configurables"
# Spellings of the groups that earlier versions scanned ("precondlab.losss", "precondlab.loss", ...).
_OLD_GROUPS = {kind: [g for g in (f"precondlab.{kind}s", f"precondlab.{kind}") if g != GROUPS[kind]] for kind in KINDS}
OWN_DISTRIBUTION = "precondlab"


class PluginWarning(UserWarning):
    """A plugin that could not be loaded, or that uses a deprecated entry-point group."""


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    module: str
    distribution: str = "?"          # the installed distribution that provides it
    version: str = "?"

    @property
    def doc(self) -> str:
        text = (self.obj.__doc__ or "").strip()
        return text.splitlines()[0] if text else "(no docstring)"

    @property
    def third_party(self) -> bool:
        """Provided by an installed distribution other than precondlab (not by code run in-process)."""
        return self.distribution not in (OWN_DISTRIBUTION, "?")


@dataclass(frozen=True)
class Failure:
    """Why a plugin's entry is missing."""

    kind: str
    name: str
    distribution: str
    entry_point: str                 # "group: name = value"
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} belongs to the plugin {self.distribution} ({self.entry_point}), which " \
               f"failed to load: {self.reason}"


class UnknownEntryError(KeyError):
    """An unknown registry name; the message lists the close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0])


_ENTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_FAILED: dict[tuple[str, str], Failure] = {}
_PLUGINS_LOADED = False
_LOADING: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("precondlab_loading", default=None)


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
            raise ValueError(f"{kind} {entry_name!r} is already registered by {existing.module} "
                             f"({existing.distribution}); choose another name for {obj.__module__}.{obj.__qualname__}.")
        if not callable(obj):
            raise TypeError(f"cannot register {obj!r} as {kind} {entry_name!r}: it is not a class or a function")
        configurable = gin.configurable(entry_name, module=kind)(obj)
        dist, version = _LOADING.get() or _distribution_of(obj.__module__)
        _ENTRIES[kind][entry_name] = Entry(kind, entry_name, configurable, obj.__module__, dist, version)
        _FAILED.pop((kind, entry_name), None)
        return configurable

    return decorate


@functools.lru_cache(maxsize=1)
def _packages() -> dict:
    return importlib.metadata.packages_distributions()


def _distribution_of(module: str) -> tuple[str, str]:
    """The distribution whose files hold ``module`` (for entries registered outside load_plugins)."""
    top = module.split(".")[0]
    for dist in _packages().get(top, []):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ("?", "?")


def _close_matches(kind: str, name: str) -> list[str]:
    names = list(_ENTRIES[kind])
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.4)
    close += [n for n in names if (name in n or n in name) and n not in close]
    return close[:4]


def failure(kind: str, name: str) -> Failure | None:
    """Why ``name`` is missing, when a plugin that would have provided it failed to load."""
    load_plugins()
    return _FAILED.get((_check_kind(kind), name))


def get(kind: str, name: str) -> Any:
    """The registered object; an unknown name raises with the close matches listed (or, for a name a
    broken plugin would have provided, why that plugin is missing)."""
    kind = _check_kind(kind)
    load_plugins()
    try:
        return _ENTRIES[kind][name].obj
    except KeyError:
        if (kind, name) in _FAILED:
            raise UnknownEntryError(str(_FAILED[(kind, name)])) from None
        close = _close_matches(kind, name)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        known = ", ".join(sorted(_ENTRIES[kind])) or "(none)"
        raise UnknownEntryError(f"Unknown {kind} {name!r}.{hint} Registered {kind}s: {known}.") from None


def entry(kind: str, name: str) -> Entry:
    get(kind, name)
    return _ENTRIES[_check_kind(kind)][name]


def entry_of(obj: Any) -> Entry | None:
    """The registry entry of a registered class, function or instance of a registered class."""
    target = obj if isinstance(obj, type) or inspect.isfunction(obj) else type(obj)
    for entries in _ENTRIES.values():
        for e in entries.values():
            if e.obj is target:
                return e
    return None


def describe_entry(found: Entry) -> str:
    """'preconditioner variance (plugin precondlab-example 0.1.0)' or '... (precondlab 0.1.0)'."""
    what = "plugin " if found.third_party else ""
    return f"{found.kind} {found.name!r} ({what}{found.distribution} {found.version})"


def plugin_in_traceback(exc: BaseException) -> Entry | None:
    """The third-party entry whose code raised ``exc``: the innermost frame in a plugin's module,
    matched to the entry whose class or function it runs (else any entry of that package)."""
    plugins = [e for entries in _ENTRIES.values() for e in entries.values() if e.third_party]
    found = None
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        qualname = getattr(tb.tb_frame.f_code, "co_qualname", tb.tb_frame.f_code.co_name)
        same_package = [e for e in plugins if e.module.split(".")[0] == module.split(".")[0]]
        if same_package:
            exact = [e for e in same_package if e.module == module
                     and qualname.split(".")[0] == getattr(e.obj, "__qualname__", "").split(".")[0]]
            found = (exact or same_package)[0]
        tb = tb.tb_next
    return found


def name_of(obj: Any) -> str:
    """'<kind>.<name>' of a registered class, function or instance (how gin files name it); else the
    class name. Used to name settings in error messages."""
    found = entry_of(obj)
    if found is not None:
        return f"{found.kind}.{found.name}"
    target = obj if isinstance(obj, type) or inspect.isfunction(obj) else type(obj)
    return target.__name__


def create(kind: str, name: str, **kwargs: Any) -> Any:
    return get(kind, name)(**kwargs)


def list_entries(kind: str | None = None) -> list[Entry]:
    load_plugins()
    kinds = [_check_kind(kind)] if kind else list(_ENTRIES)
    return [entry for k in kinds for _, entry in sorted(_ENTRIES[k].items())]


def failures() -> list[Failure]:
    load_plugins()
    return sorted(_FAILED.values(), key=lambda f: (f.kind, f.name))


def is_registered(kind: str, name: str) -> bool:
    load_plugins()
    return name in _ENTRIES[_check_kind(kind)]


def suggest(kind: str, name: str) -> list[str]:
    return _close_matches(_check_kind(kind), name)


# -- loading entry points -------------------------------------------------------------------------
def _entry_points() -> list[tuple[str, str | None, importlib.metadata.EntryPoint]]:
    """(kind or None for configurables, deprecated group or None, entry point): precondlab's own first."""
    found = []
    for kind in KINDS:
        for ep in importlib.metadata.entry_points(group=GROUPS[kind]):
            found.append((kind, None, ep))
        for group in _OLD_GROUPS[kind]:
            for ep in importlib.metadata.entry_points(group=group):
                found.append((kind, group, ep))
    for ep in importlib.metadata.entry_points(group=CONFIGURABLES):
        found.append((None, None, ep))
    own = [f for f in found if f[2].dist is not None and f[2].dist.name == OWN_DISTRIBUTION]
    return own + [f for f in found if f not in own]


def _load(kind: str | None, ep: importlib.metadata.EntryPoint) -> None:
    """Import one entry point; register a plain object it names under the entry point's name."""
    dist = ep.dist.name if ep.dist is not None else "?"
    version = ep.dist.version if ep.dist is not None else "?"
    token = _LOADING.set((dist, version))
    try:
        obj = ep.load()
        if kind is None or isinstance(obj, types.ModuleType):
            return                                   # a module: importing it registered its entries
        if entry_of(obj) is not None:
            return                                   # registered by its own decorator
        if not callable(obj):
            raise TypeError(f"it names {type(obj).__name__} {obj!r}, not a class or a function")
        register(kind, ep.name)(obj)
    finally:
        _LOADING.reset(token)


def load_plugins(force: bool = False) -> list[str]:
    """Import every component entry point (precondlab's own first); returns what was loaded.

    A plugin that fails is recorded (``failures()``) and reported as one PluginWarning naming
    its distribution and entry point; the others are loaded as usual."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED and not force:
        return []
    _PLUGINS_LOADED = True
    loaded = []
    for kind, old_group, ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else "?"
        where = f"{old_group or (GROUPS[kind] if kind else CONFIGURABLES)}: {ep.name} = {ep.value}"
        if old_group is not None:
            warnings.warn(f"plugin {dist}: the entry-point group {old_group!r} is deprecated; name it "
                          f"{GROUPS[kind]!r} ({ep.name} = {ep.value})", PluginWarning, stacklevel=2)
        try:
            _load(kind, ep)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the rest down
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            if kind is not None and (kind, ep.name) not in _ENTRIES[kind]:
                _FAILED[(kind, ep.name)] = Failure(kind, ep.name, dist, where, reason)
            warnings.warn(f"plugin {dist} ({where}) was not loaded: {reason}", PluginWarning, stacklevel=2)
            continue
        loaded.append(f"{kind or 'configurable'}:{ep.name}")
    return loaded
