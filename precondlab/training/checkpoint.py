"""Training checkpoints that a kill cannot lose or corrupt, and the random streams they carry.

A checkpoint is ``step-<step>.pt`` (``torch.save`` of tensors and plain values only, so it loads
with ``weights_only=True``) beside ``step-<step>.pt.json``, its manifest (step, size, sha256).
Both are written atomically (temporary file, fsync, rename, fsync of the folder). Loading checks
the size and checksum before unpickling; a truncated or corrupt file is reported by name and
the previous checkpoint is tried.

``torch.save`` writes one tensor at a time (a CUDA tensor is copied to the host just before it
is written), so a checkpoint costs no second copy of the model in memory
(``benchmarks/checkpoint_cost.py`` measures it).
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from precondlab.errors import CheckpointError
from precondlab.fileio import atomic_write
from precondlab.hashing import file_digest
from precondlab.safe_load import load_tensors

FORMAT = 1
_NAME = re.compile(r"step-(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def step_of(path: str | Path) -> int | None:
    found = _NAME.search(Path(path).name)
    return int(found.group(1)) if found else None


def save(folder: str | Path, state: dict) -> tuple[Path, Path]:
    """Write ``state`` (which has a ``step``) as a checkpoint and its manifest; returns both paths."""
    folder = Path(folder)
    path = folder / checkpoint_name(int(state["step"]))
    with atomic_write(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    manifest = {"format": FORMAT, "step": int(state["step"]), "file": path.name,
                "size": path.stat().st_size, "sha256": file_digest(path)}
    side = path.with_name(path.name + ".json")
    with atomic_write(side) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return path, side


def load(path: str | Path) -> dict:
    """The checkpoint at ``path`` after its size and checksum match its manifest."""
    path = Path(path)
    side = path.with_name(path.name + ".json")
    if not path.is_file():
        raise CheckpointError(f"training checkpoint {path}: no such file")
    if not side.is_file():
        raise CheckpointError(f"training checkpoint {path}: its manifest {side.name} is missing, so its "
                              f"checksum cannot be verified")
    try:
        manifest = json.loads(side.read_text())
        size, digest = int(manifest["size"]), str(manifest["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"training checkpoint {path}: unreadable manifest {side.name} ({exc})") from None
    actual = path.stat().st_size
    if actual != size:
        raise CheckpointError(f"training checkpoint {path}: truncated ({actual} of {size} bytes)")
    if file_digest(path) != digest:
        raise CheckpointError(f"training checkpoint {path}: corrupt (its sha256 differs from the manifest's)")
    state = load_tensors(path, "training checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"training checkpoint {path}: not a precondlab training checkpoint of format {FORMAT}")
    return state


def rotate(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and their manifests); returns what was deleted."""
    paths = sorted((p for p in Path(folder).glob("step-*.pt") if step_of(p) is not None), key=step_of)
    gone = []
    for path in paths[:-keep] if keep > 0 else []:
        for victim in (path, path.with_name(path.name + ".json")):
            victim.unlink(missing_ok=True)
            gone.append(victim)
    return gone


# -- random streams -----------------------------------------------------------------------------
def capture_rng(generators: dict[str, torch.Generator]) -> dict:
    """Every random stream a run draws from: torch's global CPU (and CUDA) generators, numpy's,
    Python's, and the run's own generators (noise, data order), as tensors and plain values."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "generators": {name: gen.get_state() for name, gen in generators.items()},
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    for name, gen in generators.items():
        gen.set_state(state["generators"][name])
    keys = state["numpy"]
    np.random.set_state(("MT19937", keys["keys"].numpy().astype(np.uint32), keys["pos"], keys["has_gauss"],
                         keys["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])




class Checkpointer:
    """A run's checkpoints: written every ``every`` steps and every ``minutes`` of wall-clock, logged
    to the run's artifact store as they are written, the newest ``keep`` kept (locally and there).
    ``logged`` lists the checkpoints already in the store (a resumed run's)."""

    def __init__(self, folder: str | Path, log, every: int, minutes: float = 0.0, keep: int = 3,
                 logged: list[str] | None = None):
        self.folder, self.log = Path(folder), log
        self.every, self.seconds, self.keep = every, 60.0 * minutes, keep
        self.logged = sorted(logged or [], key=step_of)
        self.last_step: int | None = None
        self.last_path: Path | None = None
        self._last_time = time.monotonic()

    def due(self, step: int) -> bool:
        return self.due_by_step(step) or self.due_by_time()

    def due_by_step(self, step: int) -> bool:
        return step % self.every == 0

    def due_by_time(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self._last_time >= self.seconds

    def save(self, state: dict) -> Path:
        path, side = save(self.folder, state)
        self._last_time = time.monotonic()
        self.last_step, self.last_path = int(state["step"]), path
        self.logged = sorted(set(self.logged) | {path.name}, key=step_of)
        rotate(self.folder, self.keep)
        if self.log is not None:
            self.log.artifact(path, "checkpoints")
            self.log.artifact(side, "checkpoints")
            self.log.tag("precondlab.checkpoint_step", str(self.last_step))
            for name in self.logged[:-self.keep]:
                self.log.delete_artifact(f"checkpoints/{name}")
                self.log.delete_artifact(f"checkpoints/{name}.json")
        self.logged = self.logged[-self.keep:]
        return path

    def location(self) -> str | None:
        """The last checkpoint as the run's artifact (a local path for a local store, else its URI)."""
        if self.last_path is None:
            return None
        return self.log.artifact_location("checkpoints", self.last_path.name) if self.log else str(self.last_path)


__all__ = ["FORMAT", "Checkpointer", "capture_rng", "checkpoint_name", "load", "restore_rng", "rotate", "save", "step_of"]
