"""Training checkpoints: atomic, checksummed, rotated; random streams restored exactly; files that
are truncated, corrupt or carry code are refused by name, without advice to disable weights_only."""

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from precondlab.errors import CheckpointError, ResumeError
from precondlab.training import checkpoint
from precondlab.training.loop import StepSettings, TrainState, check_ema, check_finite, train_step


def _state(step):
    return {"step": step, "weights": torch.full((3,), float(step)), "history": [[step, {"m": 1.0}]]}


def test_save_load_roundtrip_with_manifest(tmp_path):
    path, side = checkpoint.save(tmp_path, _state(7))
    assert path.name == "step-00000007.pt" and side.name == "step-00000007.pt.json"
    manifest = json.loads(side.read_text())
    assert manifest["step"] == 7 and manifest["size"] == path.stat().st_size and len(manifest["sha256"]) == 64
    loaded = checkpoint.load(path)
    assert loaded["step"] == 7 and torch.equal(loaded["weights"], torch.full((3,), 7.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, side.name]   # no temporary files


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest"])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(tmp_path, tracking_uri, damage):
    """Through the run's artifact store, as `--resume` reads it."""
    from precondlab import tracking
    from precondlab.training.resume import fetch_checkpoint
    client, _, exp_id = tracking.connect(tracking_uri)
    log = tracking.RunLogger(client, exp_id)
    saver = checkpoint.Checkpointer(tmp_path / "scratch", log, every=5)
    for step in (5, 10):
        saver.save(_state(step))
    newest = Path(log.artifact_location("checkpoints", "step-00000010.pt"))
    data = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        newest.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        newest.with_name(newest.name + ".json").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, name, names = fetch_checkpoint(client, log.run_id)
    assert state["step"] == 5 and name == "step-00000005.pt" and names == ["step-00000010.pt", "step-00000005.pt"]
    (message,) = [str(w.message) for w in caught]
    assert "step-00000010.pt" in message
    assert {"truncate": "truncated", "flip": "corrupt", "no_manifest": "manifest"}[damage] in message
    # with nothing usable left: one error naming what was wrong with each
    Path(log.artifact_location("checkpoints", "step-00000005.pt")).write_bytes(b"junk")
    with pytest.raises(ResumeError, match="no usable training checkpoint.*step-00000005.pt.*truncated"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fetch_checkpoint(client, log.run_id)


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    path = tmp_path / "step-00000003.pt"
    torch.save({"format": checkpoint.FORMAT, "step": 3, "payload": Evil()}, path)
    # a manifest that matches, so that only the content is wrong
    from precondlab.hashing import file_digest
    path.with_name(path.name + ".json").write_text(json.dumps({"size": path.stat().st_size, "sha256": file_digest(path)}))
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert str(path) in message and "refused" in message and "\n" not in message
    assert "weights_only" not in message and not (tmp_path / "ran").exists()


def test_rotation_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        checkpoint.save(tmp_path, _state(step))
    gone = checkpoint.rotate(tmp_path, keep=2)
    assert sorted(p.name for p in gone) == ["step-00000001.pt", "step-00000001.pt.json",
                                             "step-00000002.pt", "step-00000002.pt.json"]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step-00000003.pt", "step-00000004.pt"]


def test_every_random_stream_is_restored_exactly(tmp_path):
    gens = {"noise": torch.Generator().manual_seed(1), "data": torch.Generator().manual_seed(2)}
    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    torch.rand(3), np.random.rand(2), random.random(), np.random.randn()   # move every stream
    checkpoint.save(tmp_path, {"step": 1, "rng": checkpoint.capture_rng(gens)})

    def draw():
        return (torch.rand(4).tolist(), torch.rand(2, generator=gens["noise"]).tolist(),
                torch.rand(2, generator=gens["data"]).tolist(), np.random.rand(3).tolist(), np.random.randn(),
                random.random())

    first = draw()
    restored = checkpoint.load(tmp_path / "step-00000001.pt")["rng"]   # through the file, weights_only
    gens = {"noise": torch.Generator().manual_seed(99), "data": torch.Generator().manual_seed(98)}
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    checkpoint.restore_rng(restored, gens)
    assert draw() == first


# -- numerical faults in a step ---------------------------------------------------------------
class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class _Objective:
    """loss = mean((net(x) - 1)^2), with a NaN gradient (finite loss) on the calls listed."""

    def __init__(self, nan_grad_on=()):
        self.calls, self.nan_grad_on = 0, set(nan_grad_on)

    def __call__(self, student, target, precond, teacher, x0, generator):
        self.calls += 1
        out = student(x0)
        if self.calls in self.nan_grad_on:
            out = _NaNGrad.apply(out)
        return ((out - 1) ** 2).mean(), {}


class _Data:
    def sample_x0(self, n, generator=None):
        return torch.randn(n, 2, generator=generator, dtype=torch.float64)


def _train_state():
    torch.manual_seed(0)
    student = torch.nn.Linear(2, 2)
    target = torch.nn.Linear(2, 2).requires_grad_(False)
    target.load_state_dict(student.state_dict())
    return TrainState(student, target, torch.optim.Adam(student.parameters(), lr=0.1),
                      torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))


def test_a_non_finite_gradient_stops_the_step_on_the_cpu():
    state = _train_state()
    settings = StepSettings(_Data(), None, _Objective(nan_grad_on={3}), 8, torch.device("cpu"), ema_decay=0.9)
    train_step(state, settings), train_step(state, settings)
    before = [p.clone() for p in (*state.student.parameters(), *state.target.parameters())]
    with pytest.raises(FloatingPointError, match="non-finite gradient at step 3"):
        train_step(state, settings)
    after = [*state.student.parameters(), *state.target.parameters()]
    assert state.step == 2 and all(torch.equal(a, b) for a, b in zip(before, after))


def test_deferred_checks_take_no_update_from_a_non_finite_step_and_name_it():
    """The CUDA path (no host sync per step), run on the CPU: the bad step changes neither the
    student's weights (zeroed gradients: only Adam's moments decay) nor the EMA target, and the
    next check names it."""
    state = _train_state()
    settings = StepSettings(_Data(), None, _Objective(nan_grad_on={2}), 8, torch.device("cpu"), ema_decay=0.9,
                            defer_checks=True)
    train_step(state, settings)
    check_finite(state)                                         # step 1 was fine
    target_before = [p.clone() for p in state.target.parameters()]
    train_step(state, settings)                                 # step 2: NaN gradient, no exception yet
    assert all(torch.equal(a, b) for a, b in zip(target_before, state.target.parameters()))
    assert all(bool(torch.isfinite(p).all()) for p in state.student.parameters())
    train_step(state, settings)                                 # step 3 fine again
    with pytest.raises(FloatingPointError, match="at step 2 .found at step 3"):
        check_finite(state)


def test_non_finite_ema_weights_are_caught():
    state = _train_state()
    with torch.no_grad():
        next(state.target.parameters())[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite EMA weights"):
        check_ema(state)
