"""One run on several processes: torchrun / SLURM (``srun torchrun ...``) or Ray Train.

The process reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment (what torchrun
and ``srun`` set) and joins the process group (NCCL on GPUs, gloo on CPUs); under Ray Train the
group already exists. ``Dist`` is what the run needs to know: its rank, the world size, and the
collectives it uses (all on the default group):

* the config's batch is the global batch, split across ranks; each rank draws its own data and
  noise (rank 0's streams are a single process's);
* gradients are averaged by DistributedDataParallel; the EMA and target networks are updated
  identically on every rank, which ``check_identical`` verifies at each checkpoint;
* rank 0 alone talks to MLflow and writes checkpoints; evaluations are sharded and gathered;
* statistics are computed on rank 0 and broadcast: once per run, never once per rank.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def broadcast(self, obj):
        """rank 0's ``obj`` on every rank (pickled)."""
        if not self.active:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn):
        """fn() on rank 0, its result (or its exception, raised) on every rank."""
        if not self.active:
            return fn()
        result = error = None
        if self.main:
            try:
                result = fn()
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
                error = exc
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag True on every rank if it is True on any (a signal that reached one rank, a
        wall-clock checkpoint one rank thinks due): one all-reduce for all of them."""
        if not self.active:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v > 0) for v in t.tolist())

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's share of the rows of ``x`` (contiguous, in rank order)."""
        return x.tensor_split(self.world)[self.rank] if self.active else x

    def gather_rows(self, x: torch.Tensor, total: int) -> torch.Tensor:
        """The ranks' ``rows`` shares of a ``total``-row tensor put back together (on the CPU)."""
        if not self.active:
            return x
        sizes = [len(r) for r in torch.empty(total).tensor_split(self.world)]
        width = max(sizes)
        device = self._device()
        padded = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=device)
        padded[: x.shape[0]] = x.to(device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)]).cpu()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


_CURRENT = Dist()


def current() -> Dist:
    """The process group this process is in (a single process: rank 0 of 1)."""
    return _CURRENT


def setup(device: str = "cpu") -> Dist:
    """Join the process group torchrun, srun or Ray Train set up; a single process otherwise."""
    global _CURRENT
    if dist.is_available() and dist.is_initialized():
        _CURRENT = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                        dist.get_backend())
        return _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CURRENT = Dist()
        return _CURRENT
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    _CURRENT = Dist(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())
    return _CURRENT


def device_of(device: str, d: Dist) -> torch.device:
    """'cuda' on a multi-process run is this rank's GPU (cuda:LOCAL_RANK)."""
    dev = torch.device(device)
    if dev.type == "cuda" and d.active and dev.index is None:
        # torchrun: all GPUs visible, one per local rank; Ray Train: each worker sees its own only
        return torch.device("cuda", d.local_rank % max(1, torch.cuda.device_count()))
    return dev


def stream_seed(seed: int, rank: int) -> int:
    """Seed of a rank's own random stream; rank 0's is the single-process one."""
    return seed + 1_000_003 * rank


def checksum(*modules: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for module in modules:
        for name, t in module.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_identical(d: Dist, *modules: torch.nn.Module) -> None:
    """Every rank must hold the same weights (student, EMA target): a divergence is a bug, said loudly."""
    if not d.active:
        return
    sums = d.gather(checksum(*modules))
    if len(set(sums)) != 1:
        raise RuntimeError(f"the ranks' networks differ ({len(set(sums))} distinct weight checksums over "
                           f"{d.world} ranks): the run is no longer one run")


__all__ = ["Dist", "check_identical", "checksum", "current", "device_of", "setup", "stream_seed"]
