"""Resuming a run: which MLflow run, which of its checkpoints, and whether this config may continue it.

``precondlab run CONFIG --resume RUN_ID`` (or ``--resume latest``: the newest unfinished run of
the experiment that has a checkpoint) continues that MLflow run from its newest checkpoint that
loads and matches its checksum. The config must describe the same math: every gin binding must
equal the one the run started with, except those in ``RESUMABLE`` (raising the step count is
how a finished run is continued).
"""

from __future__ import annotations

import os
import socket
import tempfile
import warnings
from pathlib import Path

from precondlab.errors import CheckpointError, ResumeError
from precondlab.training import checkpoint

# Bindings a resumed run may change: they decide how long and how often, not what is computed.
RESUMABLE = {"experiment.steps", "experiment.name", "experiment.eval_every", "experiment.checkpoint_every",
             "experiment.checkpoint_minutes", "experiment.keep_checkpoints"}


def identity_tags() -> dict:
    """Where a run is running, so that resuming a live run can be refused."""
    return {"precondlab.host": socket.gethostname(), "precondlab.pid": str(os.getpid())}


def _alive_here(run) -> int | None:
    tags = run.data.tags
    if tags.get("precondlab.host") != socket.gethostname() or run.info.status != "RUNNING":
        return None
    try:
        pid = int(tags.get("precondlab.pid", ""))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ValueError, OSError):
        return None
    return pid if pid != os.getpid() and b"precondlab" in cmdline else None


def find_run(client, experiment_id: str, spec: str):
    """The run ``spec`` names (a run id, or 'latest'), checked to be resumable."""
    if spec == "latest":
        runs = client.search_runs([experiment_id], filter_string="attributes.status != 'FINISHED' and "
                                                                 "tags.`precondlab.checkpoint_step` LIKE '%'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise ResumeError("--resume latest: no unfinished run with a checkpoint in this experiment "
                              "(`mlflow ui` lists the runs; pass a run id to continue a finished one)")
        run = runs[0]
    else:
        try:
            run = client.get_run(spec)
        except Exception:  # noqa: BLE001 - MLflow raises its own 'not found' per backend
            raise ResumeError(f"--resume {spec}: no such MLflow run in this tracking store") from None
    pid = _alive_here(run)
    if pid is not None:
        raise ResumeError(f"run {run.info.run_id} is still running (process {pid} on this machine); stop it "
                          f"(Ctrl-C or kill {pid}) before resuming it")
    return run


def fetch_checkpoint(client, run_id: str) -> tuple[dict, str, list[str]]:
    """Download the run's checkpoints, newest first, until one loads and matches its checksum; returns
    it, its name and the names of every checkpoint the run's artifact store holds. The downloads
    are deleted once the newest good one is in memory."""
    try:
        names = [f.path for f in client.list_artifacts(run_id, "checkpoints")]
    except Exception:  # noqa: BLE001
        names = []
    ckpts = sorted((n for n in names if checkpoint.step_of(n) is not None), key=checkpoint.step_of, reverse=True)
    if not ckpts:
        raise ResumeError(f"run {run_id} has no training checkpoint to resume from (it stopped before its "
                          f"first one; start it again instead)")
    with tempfile.TemporaryDirectory(prefix="precondlab-resume-") as tmp:
        state, name = _first_good(client, run_id, names, ckpts, Path(tmp))
    return state, name, [Path(n).name for n in ckpts]


def _first_good(client, run_id: str, names: list[str], ckpts: list[str], dest: Path) -> tuple[dict, str]:
    problems = []
    for name in ckpts:  # newest first, each downloaded (beside its manifest) only if the newer ones fail
        folder = dest / Path(name).stem
        folder.mkdir(parents=True, exist_ok=True)
        for artifact in (name, name + ".json"):
            if artifact in names:
                client.download_artifacts(run_id, artifact, str(folder))
        path = next(folder.rglob(Path(name).name), folder / Path(name).name)
        try:
            return checkpoint.load(path), Path(name).name
        except CheckpointError as exc:
            problems.append(str(exc))
            warnings.warn(f"{exc}; trying the previous checkpoint", stacklevel=3)
    raise ResumeError(f"run {run_id}: no usable training checkpoint ({'; '.join(problems)})")


def check_config(saved: dict, now: dict, saved_step: int, steps: int, run_id: str, finished: bool) -> None:
    """Refuse a config that changes the math, or asks for fewer steps than were already made."""
    changed = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k) and k not in RESUMABLE]
    if changed:
        shown = "; ".join(f"{k} = {saved.get(k, '(unset)')} in the run, {now.get(k, '(unset)')} now" for k in changed[:4])
        more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
        raise ResumeError(f"cannot resume run {run_id} with this config: it changes the math ({shown}{more}); "
                          f"only {', '.join(sorted(RESUMABLE))} may change")
    if steps < saved_step:
        raise ResumeError(f"run {run_id} is at step {saved_step}, beyond experiment.steps = {steps}: raise STEPS "
                          f"to continue it")
    if steps == saved_step and finished:
        raise ResumeError(f"run {run_id} already reached experiment.steps = {steps}: raise STEPS to continue it")


__all__ = ["RESUMABLE", "check_config", "fetch_checkpoint", "find_run", "identity_tags"]
