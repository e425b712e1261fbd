"""`precondlab train-teacher`: EDM-loss training of a tiny SongUNet on a tiny Fashion-MNIST fixture
(idx files in the real format), its checkpoint loaded back through teacher.state_dict."""

from __future__ import annotations

import functools
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import GIN

TEACHER_GIN = GIN / "teachers" / "fashion_teacher.gin"
TINY_NET = {"model_channels": 8, "channel_mult": [1], "num_blocks": 1, "attn_resolutions": []}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file as Fashion-MNIST ships it: magic 0x08 0x0<ndim>, big-endian dims, raw bytes."""
    path.write_bytes(struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.tobytes())


def write_fashion(folder: Path, n: int = 16, side: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    # Smooth-ish blobs so there is structure to learn: a random bright rectangle per image.
    x = np.zeros((n, side, side), np.uint8)
    for i in range(n):
        r0, c0 = rng.integers(0, side // 2, 2)
        x[i, r0:r0 + side // 2, c0:c0 + side // 2] = rng.integers(128, 256)
    write_idx(folder / "train-images-idx3-ubyte", x)
    write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return folder


def cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors: one thread is faster on busy cores
    return subprocess.run([sys.executable, "-m", "precondlab.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env)


def tiny_bindings(data_dir: Path, steps: int = 8) -> list[str]:
    bindings = [f"dataset.fashion_mnist.data_dir = '{data_dir}'",
                "dataset.fashion_mnist.system_dir = None",
                "dataset.fashion_mnist.resolution = 8",
                f"STEPS = {steps}", "BATCH = 8",
                "MODEL_CHANNELS = 8", "teacher_net.channel_mult = [1]", "teacher_net.num_blocks = 1",
                "teacher_net.attn_resolutions = []",
                "teacher_training.lr_warmup = 0", "teacher_training.checkpoint_every = 4",
                "teacher_training.log_every = 4", "teacher_training.eval_batch = 16"]
    return [arg for b in bindings for arg in ("--gin_bindings", b)]


def test_train_teacher_cli_then_load_as_state_dict_teacher(tmp_path):
    from mlflow.tracking import MlflowClient

    from precondlab import registry
    from precondlab.data import FashionMNIST

    data = write_fashion(tmp_path / "data")
    out = tmp_path / "ckpt" / "fashion_teacher.pt"
    db = tmp_path / "mlruns.db"
    res = cli("train-teacher", str(TEACHER_GIN), *tiny_bindings(data), "--output", str(out),
              "--tracking-uri", f"sqlite:///{db}", "--no-progress", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 8 and len(summary["losses"]) == 8
    assert all(np.isfinite(summary["losses"]))
    # eval_loss: the EMA net on a fixed batch with fixed sigmas and noise, so the comparison is fair.
    assert [s for s, _ in summary["eval_losses"]] == [0, 4, 8]
    assert summary["eval_loss_last"] < summary["eval_loss_first"]
    assert "teacher.state_dict.path" in res.stdout

    # The checkpoint is a flat weights-only state dict with its sidecar; no temp files left behind.
    assert sorted(p.name for p in out.parent.iterdir()) == ["fashion_teacher.json", "fashion_teacher.pt"]
    tensors = torch.load(out, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values()) and "map_layer0.weight" in tensors
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["precond"] == "edm" and side["sigma_data"] == 0.5 and side["step"] == 8
    assert side["songunet"]["model_channels"] == 8 and side["songunet"]["img_resolution"] == 8

    # teacher.state_dict reads the architecture from the sidecar: only path and dataset are given.
    dataset = FashionMNIST(data_dir=data, resolution=8, system_dir=None)
    teacher = registry.create("teacher", "state_dict", path=str(out), dataset=dataset)
    assert teacher.precond == "edm" and teacher.shape == (1, 8, 8) and teacher.dtype == torch.float32
    x = teacher.sample_x0(4, torch.Generator().manual_seed(0))
    x = x + 0.5 * torch.randn_like(x)
    D = teacher.denoise(x, torch.tensor([0.1, 0.5, 2.0, 10.0], dtype=torch.float64))
    assert D.shape == (4, 1, 8, 8) and bool(torch.isfinite(D).all())
    fp = teacher.fingerprint()
    assert fp == registry.create("teacher", "state_dict", path=str(out), dataset=dataset).fingerprint()

    # MLflow: one finished run with per-step losses and the checkpoint as an artifact.
    client = MlflowClient(f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert len(client.get_metric_history(runs[0].info.run_id, "loss")) == 8
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "checkpoints")} == {
        "checkpoints/fashion_teacher.pt", "checkpoints/fashion_teacher.json"}


def test_missing_dataset_is_a_clear_error_and_writes_nothing(tmp_path):
    out = tmp_path / "ckpt" / "teacher.pt"
    res = cli("train-teacher", str(TEACHER_GIN), *tiny_bindings(tmp_path / "nowhere"), "--output", str(out),
              "--no-tracking", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Fashion-MNIST train files not found" in res.stderr and "Traceback" not in res.stderr
    assert not out.parent.exists()


def _tiny_job(data: Path, **kw):
    from precondlab.data import FashionMNIST
    from precondlab.training.teacher import TeacherTraining, teacher_net
    dataset = kw.pop("dataset", None) or FashionMNIST(data_dir=data, resolution=8, system_dir=None)
    return TeacherTraining(dataset=dataset, net=functools.partial(teacher_net, **TINY_NET), batch_size=4,
                           lr=2e-3, tracking=False, eval_batch=8, **kw)


class _NaNAfter:
    """A dataset whose batches turn NaN after `good` calls."""

    def __init__(self, inner, good: int):
        self.inner, self.good, self.calls, self.shape = inner, good, 0, inner.shape

    def sample_x0(self, n, generator=None):
        self.calls += 1
        x = self.inner.sample_x0(n, generator)
        return x if self.calls <= self.good + 1 else x * float("nan")  # +1: the eval batch


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    from precondlab.data import FashionMNIST
    from precondlab.training.teacher import NonFiniteLossError

    data = write_fashion(tmp_path / "data")
    dataset = _NaNAfter(FashionMNIST(data_dir=data, resolution=8, system_dir=None), good=3)
    job = _tiny_job(data, dataset=dataset, steps=10, checkpoint_every=2)
    out = tmp_path / "ckpt" / "t.pt"
    db = tmp_path / "mlruns.db"
    with pytest.raises(NonFiniteLossError, match=r"at step 4; MLflow run \w+ marked FAILED; last good checkpoint: .*t\.pt"):
        job.run(output=str(out), tracking=True, tracking_uri=f"sqlite:///{db}")
    assert json.loads(out.with_suffix(".json").read_text())["step"] == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["t.json", "t.pt"]

    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["error"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3      # the good steps were logged
    assert "checkpoints/t.pt" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}


def test_safetensors_output_and_preconditioning_match_the_teacher(tmp_path):
    from precondlab.training.teacher import edm_denoise
    from precondlab.teachers.state_dict import state_dict_teacher

    data = write_fashion(tmp_path / "data")
    out = tmp_path / "t.safetensors"
    result = _tiny_job(data, steps=2, checkpoint_every=2).run(output=str(out))
    assert result.checkpoint == str(out) and out.with_suffix(".json").is_file()
    teacher = state_dict_teacher(str(out))
    x = torch.randn(3, 1, 8, 8)
    sigma = torch.tensor([0.05, 1.0, 40.0])
    # What training optimised is exactly what the teacher computes.
    torch.testing.assert_close(teacher.denoise(x, sigma), edm_denoise(teacher.net, x, sigma, 0.5))
    # sidecar=None: the gin arguments describe the architecture (here they do not fit the weights).
    from precondlab.teachers.edm_pkl import CheckpointError
    with pytest.raises(CheckpointError, match="do not fit"):
        state_dict_teacher(str(out), sidecar=None)


def test_weights_are_written_before_their_sidecar_which_is_checked_on_load(tmp_path, monkeypatch):
    from precondlab.training.teacher import save_teacher, teacher_net
    from precondlab.teachers.edm_pkl import CheckpointError
    from precondlab.teachers.state_dict import state_dict_teacher

    torch.manual_seed(0)
    net_a = teacher_net(img_resolution=8, in_channels=1, **TINY_NET)
    out = tmp_path / "ckpt" / "t.pt"

    def half_written(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK half a checkpoint")
        raise OSError("No space left on device")

    # A failure while the weights are written leaves nothing: no weights, no sidecar, no temp file.
    with monkeypatch.context() as m:
        m.setattr(torch, "save", half_written)
        with pytest.raises(OSError, match="No space left"):
            save_teacher(out, net_a, net_a.songunet_kwargs)
    assert list(out.parent.iterdir()) == []

    # The sidecar records the size and sha256 of the weights it describes.
    save_teacher(out, net_a, net_a.songunet_kwargs)
    side_a = out.with_suffix(".json").read_text()
    meta = json.loads(side_a)
    assert meta["weights_bytes"] == out.stat().st_size and len(meta["weights_sha256"]) == 64
    assert state_dict_teacher(str(out)).shape == (1, 8, 8)

    # New weights with the old sidecar (a run stopped between the two writes) are refused, clearly.
    torch.manual_seed(1)
    net_b = teacher_net(img_resolution=8, in_channels=1, **TINY_NET)
    save_teacher(out, net_b, net_b.songunet_kwargs)
    out.with_suffix(".json").write_text(side_a)
    with pytest.raises(CheckpointError, match=r"t\.json does not describe the weights beside it: .*t\.pt has "
                                              r"(sha256|\d+ bytes).*train-teacher --output"):
        state_dict_teacher(str(out))
    with pytest.raises(CheckpointError, match="does not describe"):
        state_dict_teacher(str(out), sidecar=str(out.with_suffix(".json")))
    assert sorted(p.name for p in out.parent.iterdir()) == ["t.json", "t.pt"]
