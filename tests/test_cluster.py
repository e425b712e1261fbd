"""A real multi-node Ray cluster, started as users start one (`ray start --head`, `ray start
--address`, token authentication), running a multi-worker run and a sweep of multi-worker
trials; and an address where nothing listens. Apart from tests/test_sweep.py so that the
longest test does not share a test worker with the other sweeps (make test runs files in
parallel, one file per worker at a time)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from test_sweep import METRIC, REPO, TINY, VENV_BIN, children, write_sweep


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        time.sleep(0.3)
    raise TimeoutError(f"{log}: no {text!r} after {timeout} s")


@pytest.mark.slow
def test_a_two_node_cluster_with_token_auth_runs_a_multi_worker_run_and_sweep(tmp_path):
    """A real 2-node Ray cluster on loopback, started the stock way (`ray start --head`, then a second
    `ray start --address` with its own --temp-dir). Ray has run locally before, so ~/.ray/auth_token
    exists and `ray start` turns token authentication on; precondlab must pick the token up as Ray's
    CLI does (RAY_AUTH_MODE is not set anywhere). On it: a 2-worker run (`precondlab run --workers 2
    --address`) and a sweep of two 2-worker trials, which Tune runs at once (each node offers 3 CPUs: a
    trial needs 2 for its workers). Each `ray start --block` is a child of this test, so ending them
    ends exactly their processes."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))      # what a local ray.init() leaves
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    ray_tmp = [tempfile.mkdtemp(prefix=f"plray{i}-", dir="/tmp") for i in (0, 1)]  # short: socket path limits
    ray_bin = str(VENV_BIN / "ray")
    procs = []
    try:
        head_log, worker_log = tmp_path / "head.log", tmp_path / "worker.log"
        procs.append(subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=3",
                                       "--include-dashboard=false", f"--temp-dir={ray_tmp[0]}"],
                                      env=env, stdout=head_log.open("w"), stderr=subprocess.STDOUT))
        _wait_for(head_log, "Ray runtime started", procs[0])
        assert "Token authentication is enabled" in head_log.read_text()   # what the stock setup does here
        # A second node joins as Ray's docs say: RAY_AUTH_MODE=token for `ray start --address`
        procs.append(subprocess.Popen([ray_bin, "start", "--block", f"--address=127.0.0.1:{port}", "--num-cpus=3",
                                       f"--temp-dir={ray_tmp[1]}"], env={**env, "RAY_AUTH_MODE": "token"},
                                      stdout=worker_log.open("w"), stderr=subprocess.STDOUT))
        _wait_for(worker_log, "Ray runtime started", procs[1])
        uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
        address = f"127.0.0.1:{port}"

        one = subprocess.run([sys.executable, "-m", "precondlab", "run", str(REPO / "gin" / "toy_ctm.gin"),
                              *[a for b in TINY + ["STEPS = 20", "experiment.eval_every = 10"]
                                for a in ("--gin_bindings", b)], "--workers", "2", "--address",
                              address, "--tracking-uri", uri, "--experiment", "cluster-run"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-3000:]
        assert "on 2 Ray workers" in one.stdout

        path = write_sweep(tmp_path / "cluster.toml", "cluster", 20, '"experiment.lr" = { grid = [1e-3, 2e-3] }',
                           extra='[scheduler]\ntype = "fifo"\n[resources]\ncpu = 1\nworkers = 2\n')
        done = subprocess.run([sys.executable, "-m", "precondlab", "sweep", str(path), "--address", address,
                               "--tracking-uri", uri, "--output", str(tmp_path / "out")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for folder in ray_tmp:
            shutil.rmtree(folder, ignore_errors=True)

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cluster-run").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["precondlab.world_size"] == "2"
    assert run.data.tags["precondlab.ray_address"] == address
    exp = client.get_experiment_by_name("sweeps-test")
    parent = client.search_runs([exp.experiment_id], "tags.`precondlab.role` = 'sweep'")[0]
    assert parent.data.tags["precondlab.ray_address"] == address and parent.info.status == "FINISHED"
    cluster_nodes = parent.data.tags["precondlab.ray_nodes"].split(",")
    assert len(set(cluster_nodes)) == 2 and all(len(n) == 56 for n in cluster_nodes)   # both nodes, as Ray names them
    _, runs = children(uri, parent.info.run_id)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert r.data.tags["precondlab.world_size"] == "2" and r.data.tags["precondlab.ray_workers"] == "2"
        assert r.data.tags["precondlab.ray_node"] in cluster_nodes
        steps = [m.step for m in client.get_metric_history(r.info.run_id, METRIC)]
        assert steps == sorted(set(steps)) and steps[-1] == 20
    # Tune ran them at once: each one's MLflow run started before the other ended
    (a, b) = sorted(runs, key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time


def test_an_address_with_nothing_listening_fails_at_once_naming_it(tmp_path):
    port = _free_port()                     # bound and released: nothing listens there now
    path = write_sweep(tmp_path / "nowhere.toml", "nowhere", 20, '"experiment.lr" = { grid = [1e-3] }')
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "precondlab", "sweep", str(path), "--address", f"127.0.0.1:{port}",
                          "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 30
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("precondlab: error:")]
    assert f"no Ray cluster at 127.0.0.1:{port}" in line
