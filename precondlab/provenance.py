"""Where a result comes from: MLflow's standard source tags and stable parameter names.

* ``source_tags(entry_point)``: ``mlflow.user``, ``mlflow.source.type``/``name`` (the command),
  ``mlflow.source.git.commit``/``branch`` and ``precondlab.git_dirty`` of the checkout precondlab
  runs from (when it runs from one), and ``precondlab.version``.
* ``stable_params(config_str)``: gin's operative bindings as MLflow params whose keys are full
  names (``teacher.gmm.dim``, ``experiment.steps``), not gin's shortest unique names, which
  change when a plugin adds another ``gmm`` or ``dim``.
"""

from __future__ import annotations

import functools
import getpass
import importlib.metadata
import subprocess
from pathlib import Path


def _git(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=8)
def git_state(folder: str) -> dict:
    """commit, branch and dirty flag of the git checkout holding ``folder`` ({} if none)."""
    path = Path(folder)
    commit = _git(path, "rev-parse", "HEAD")
    if commit is None:
        return {}
    status = _git(path, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "branch": _git(path, "rev-parse", "--abbrev-ref", "HEAD") or "",
            "dirty": bool(status)}


def distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def machine() -> str:
    """'Linux-6.1-x86_64, 2 CPUs, torch 2.14.1, no GPU' (or the GPU's name)."""
    import os
    import platform

    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.platform(terse=True)}, {os.cpu_count()} CPUs, Python {platform.python_version()}, " \
           f"torch {torch.__version__}, {gpu}"


def source_tags(entry_point: str) -> dict:
    """MLflow's standard source tags for a run started by ``entry_point`` (e.g. 'precondlab run')."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
    tags = {"mlflow.user": user, "mlflow.source.type": "LOCAL", "mlflow.source.name": entry_point,
            "precondlab.version": distribution_version("precondlab"), "precondlab.machine": machine()}
    git = git_state(str(Path(__file__).resolve().parent))
    if git:
        tags.update({"mlflow.source.git.commit": git["commit"], "mlflow.source.git.branch": git["branch"],
                     "precondlab.git_dirty": str(git["dirty"]).lower()})
    return tags


def full_selector(selector: str) -> str:
    """The stable name of a gin configurable: '<kind>.<name>' for registry entries, else its name."""
    from gin import config as gin_config

    from precondlab import registry
    try:
        found = gin_config._REGISTRY.get_match(selector)  # noqa: SLF001 - gin has no public lookup
    except Exception:  # noqa: BLE001
        return selector
    if found is None:
        return selector
    module = found.module or ""
    return f"{module}.{found.name}" if module in registry.KINDS else found.name


def stable_params(config_str: str) -> dict:
    """gin's config text as flat params with stable keys, macros (%NAME) substituted."""
    params, macros = {}, {}
    for line in config_str.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or " = " not in line:
            continue
        key, value = (v.strip() for v in line.split(" = ", 1))
        if "." not in key:
            macros[key] = value
            continue
        scope, _, name = key.rpartition("/")
        selector, _, param = name.rpartition(".")
        params[f"{scope + '/' if scope else ''}{full_selector(selector)}.{param}"] = value
    for key, value in params.items():
        if value.startswith("%") and value[1:] in macros:
            params[key] = macros[value[1:]]
    return params


__all__ = ["distribution_version", "full_selector", "git_state", "machine", "source_tags", "stable_params"]
