"""Tracking store problems: a store that cannot be used fails before any work with a few lines naming
it; a real `mlflow server` that goes away in the middle of a run loses nothing."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import GIN, wait_until_healthy
from tiny import TINY

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def cli(*args, cwd, env=None, user=None, timeout=120):
    command = [sys.executable, "-m", "precondlab", *args]
    if user is not None:  # as another user, the way a store owned by someone else is met
        command = ["setpriv", "--reuid", str(user), "--regid", str(user), "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


def gin_args(bindings):
    return [a for b in bindings for a in ("--gin_bindings", b)]


def test_a_read_only_store_fails_before_any_work_naming_it():
    """A SQLite store the user may read but not write (as root, the command runs as nobody)."""
    folder = Path(tempfile.mkdtemp(prefix="precondlab-ro-", dir="/tmp"))
    try:
        store = folder / "mlruns.db"
        MlflowClient(f"sqlite:///{store}").search_experiments()   # a real store, made by MLflow
        store.chmod(0o444)
        folder.chmod(0o555)
        user = 65534 if os.geteuid() == 0 else None
        if user is not None and shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a store read-only for this user")
        start = time.monotonic()
        out = cli("run", str(GIN / "toy_ctm.gin"), *gin_args(TINY), "--tracking-uri", f"sqlite:///{store}",
                  cwd="/tmp", user=user, env={"HOME": "/tmp", "PRECONDLAB_CACHE": str(folder / "cache")})
        assert time.monotonic() - start < 60
        assert out.returncode == 2, out.stderr[-2000:]
        lines = out.stderr.strip().splitlines()
        assert 1 <= len(lines) <= 3 and str(store) in lines[0] and "read-only" in lines[0], out.stderr
        assert "Traceback" not in out.stderr
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_store_whose_folder_cannot_be_created_fails_at_once(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = blocker / "runs" / "mlruns.db"
    start = time.monotonic()
    out = cli("run", str(GIN / "toy_ctm.gin"), *gin_args(TINY), "--tracking-uri", f"sqlite:///{store}", cwd=tmp_path)
    assert time.monotonic() - start < 60 and out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3 and "cannot be created" in lines[0] and str(store) in lines[0], out.stderr


# -- a server that goes away ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A stock `mlflow server` on 127.0.0.1 (its default SQLite store and artifact folder in cwd)."""

    def __init__(self, cwd: Path):
        self.cwd, self.port, self.proc = cwd, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen([MLFLOW, "server", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--workers", "1"], cwd=self.cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until_healthy(self.uri, self.proc, "mlflow server")
        return self

    def stop(self):
        """Gone at once, as when its machine or container dies (a graceful stop waits for clients)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def wait_for_metric(uri: str, key: str, proc, timeout=120, known=()):
    """The id of the new run (not in ``known``) once it has logged ``key``."""
    client = MlflowClient(uri)
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        try:
            runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                    if r.info.run_id not in known]
            if runs and key in runs[0].data.metrics:
                return runs[0].info.run_id
        except Exception:  # noqa: BLE001
            pass
        assert time.monotonic() < deadline
        time.sleep(0.2)


def wait_for_text(path: Path, text: str, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, path.read_text()[-2000:]
        assert time.monotonic() < deadline, f"{text!r} not printed within {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_server_that_goes_away_mid_run_loses_nothing(tmp_path):
    """Two runs on a stock `mlflow server` that is stopped and started again: the long one keeps
    training and sends what it kept when the server is back; the short one ends while it is away,
    leaves its logs in ./precondlab-unsynced/<run id>/, and `precondlab sync` sends them."""
    server = Server(tmp_path).start()
    env = {**os.environ, "PRECONDLAB_TRACKING_WAIT": "1", "PRECONDLAB_TRACKING_RETRY": "1"}
    long_out, short_out = tmp_path / "long.out", tmp_path / "short.out"

    def start(bindings, out):
        return subprocess.Popen([sys.executable, "-m", "precondlab", "run", str(GIN / "toy_ctm.gin"), *gin_args(bindings),
                                 "--tracking-uri", server.uri, "--no-progress"], cwd=tmp_path, env=env, text=True,
                                stdout=out.open("w"), stderr=subprocess.STDOUT)

    every = ["experiment.eval_every = 50", "experiment.checkpoint_every = 100", "experiment.batch_size = 128"]
    long = start(TINY + every + ["STEPS = 1000000"], long_out)
    long_id = wait_for_metric(server.uri, "loss", long)
    short = start(TINY + every + ["STEPS = 300"], short_out)
    short_id = wait_for_metric(server.uri, "loss", short, known={long_id})
    server.stop()
    short.wait(timeout=120)                        # ends while the server is away
    assert short.returncode == 0, short_out.read_text()[-3000:]
    assert long.poll() is None                     # and the long run trains on
    server.start()
    wait_for_text(long_out, "answers again", long)
    long.send_signal(signal.SIGTERM)
    long.wait(timeout=60)
    assert long.returncode == 143 and "not answering" in long_out.read_text()

    client = MlflowClient(server.uri)
    run = client.get_run(long_id)
    last = int(run.data.tags["precondlab.interrupted_at_step"])
    assert run.info.status == "KILLED" and last > 300
    assert [m.step for m in client.get_metric_history(long_id, "traj_mse/nfe2")] == list(range(0, last + 1, 50))
    assert [m.step for m in client.get_metric_history(long_id, "loss")] == list(range(50, last + 1, 50))
    assert f"checkpoints/step-{last:08d}.pt" in {f.path for f in client.list_artifacts(long_id, "checkpoints")}

    (folder,) = (tmp_path / "precondlab-unsynced").iterdir()
    assert folder.name == short_id and f"precondlab sync {folder}" in short_out.read_text()
    sync = cli("sync", str(folder), cwd=tmp_path)
    assert sync.returncode == 0, sync.stderr
    assert client.get_run(short_id).info.status == "FINISHED" and not folder.exists()
    assert [m.step for m in client.get_metric_history(short_id, "traj_mse/nfe2")] == list(range(0, 301, 50))
    assert {"checkpoints/step-00000300.pt", "plots/samples.png"} <= {
        f.path for d in ("checkpoints", "plots") for f in client.list_artifacts(short_id, d)}
    server.stop()
