"""What a training checkpoint costs: seconds per checkpoint and extra peak memory, on the CPU.

For the toy's MLP student and for the CIFAR-10 student (DDPM++ at the paper's size, EDM's
CIFAR-10 settings), builds the state a run checkpoints (student, EMA target, Adam state after
one step, RNG streams) and times ``checkpoint.save`` (torch.save to a temporary file, fsync,
rename, sha256 manifest) and ``checkpoint.load`` (checksum, weights-only unpickling), each the
median of ``--repeats``. Peak memory: the process's peak RSS (VmHWM, reset before each save)
minus its RSS before, against the state's size: a save that copied the model would add ~1x.

    .venv/bin/python benchmarks/checkpoint_cost.py [--models toy cifar] [--repeats 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from precondlab.training import checkpoint


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")   # resets VmHWM to the current RSS (Linux)


def student(name: str) -> torch.nn.Module:
    if name == "toy":
        from precondlab.students.mlp import MLPStudent
        return MLPStudent(dim=8)
    from precondlab.students.songunet import SongUNetStudent
    return SongUNetStudent(dim=3 * 32 * 32, img_resolution=32, in_channels=3, model_channels=128,
                           channel_mult=(2, 2, 2), num_blocks=4, attn_resolutions=(16,), dropout=0.13)


def state_of(name: str) -> dict:
    net = student(name)
    target = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    for p in net.parameters():   # one step, so that Adam's moments exist (2 more copies of the weights)
        p.grad = torch.zeros_like(p)
    optimizer.step()
    gens = {"noise": torch.Generator().manual_seed(0), "data": torch.Generator().manual_seed(1)}
    return {"step": 1000, "student": net.state_dict(), "target": target.state_dict(),
            "optimizer": optimizer.state_dict(), "rng": checkpoint.capture_rng(gens), "history": []}


def measure(name: str, repeats: int, folder: Path) -> dict:
    state = state_of(name)
    params = sum(v.numel() for v in state["student"].values())
    saves, loads, extra = [], [], []
    for i in range(repeats):
        state["step"] = 1000 + i
        before = _rss_kib("VmRSS")
        _reset_peak()
        start = time.perf_counter()
        path, _ = checkpoint.save(folder, state)
        saves.append(time.perf_counter() - start)
        extra.append((_rss_kib("VmHWM") - before) / 1024)
        start = time.perf_counter()
        checkpoint.load(path)
        loads.append(time.perf_counter() - start)
        checkpoint.rotate(folder, keep=1)
    size = path.stat().st_size / 2 ** 20
    return {"model": name, "parameters": params, "file_mib": size, "save_s": statistics.median(saves),
            "load_s": statistics.median(loads), "extra_peak_mib": max(extra)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["toy", "cifar"], choices=["toy", "cifar"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | parameters | checkpoint (MiB) | save (s) | load + verify (s) | extra peak RSS while saving (MiB) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name in args.models:
            r = measure(name, args.repeats, Path(tmp) / name)
            print(f"| {r['model']} | {r['parameters']:,} | {r['file_mib']:.1f} | {r['save_s']:.3f} | {r['load_s']:.3f} "
                  f"| {r['extra_peak_mib']:.1f} |")


if __name__ == "__main__":
    main()
