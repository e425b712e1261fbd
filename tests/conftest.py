import os
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# One intra-op thread per test process (and CLI subprocess): the tensors here are tiny, and on
# two cores a second thread mostly waits on the other test process or the CPU next door.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# precondlab's caches (the MLflow store template, Analytic-Precond statistics) in a folder of this
# test session's, shared by its CLI subprocesses, never the user's ~/.cache/precondlab.
os.environ["PRECONDLAB_CACHE"] = tempfile.mkdtemp(prefix="precondlab-test-cache-")
REPO = Path(__file__).resolve().parents[1]
GIN = REPO / "gin"


def wait_until_healthy(url: str, proc, what: str, timeout: float = 60) -> None:
    """Until the MLflow server (or UI) at ``url`` answers its /health endpoint, polled directly:
    MlflowClient would back off for seconds after each refused connection."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:  # not up yet
            pass
        assert proc.poll() is None and time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Each test runs in its own folder with its own MLflow store, and from a clean gin state."""
    import gin
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    gin.clear_config()
    torch.set_num_threads(1)
    yield
    gin.clear_config()


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


@pytest.fixture(scope="session")
def gmm8():
    from precondlab.teachers.gmm import GMMTeacher
    return GMMTeacher(dim=8, num_components=6, mean_spread=0.5, component_std=0.05, seed=0)


@pytest.fixture(scope="session")
def gmm8_coeffs(gmm8):
    from precondlab.odes.analytic import AnalyticODE
    return AnalyticODE(num_points=120, num_samples=4096).fit(gmm8)
