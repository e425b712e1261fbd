"""Train a SongUNet teacher with EDM's loss, for datasets that have no public teacher.

    precondlab train-teacher gin/teachers/fashion_teacher.gin [--gin_bindings ...] [--output PATH]

EDM (Karras et al. 2022, section 5 and Table 1): per image ln(sigma) ~ N(P_mean, P_std^2),
x = y + sigma n, D(x; sigma) = c_skip x + c_out F(c_in x, c_noise = ln(sigma) / 4), and the loss
lambda(sigma) |D(x; sigma) - y|^2 with lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, which
makes the loss about 1 per pixel at initialisation whatever sigma. Adam; an EMA of the weights
is what gets saved (with a warm-up, (1 + step) / (10 + step), so short runs save a trained net).

Output, both written atomically (temp file + rename), the weights first:

* ``PATH`` (.pt, or .safetensors): the EMA network as a flat ``{name: tensor}`` state dict with
  SongUNet's (EDM's) names, what ``teacher.state_dict`` loads weights-only;
* ``PATH`` with suffix ``.json``: the sidecar ``{"format": "precondlab.songunet_teacher/1",
  "songunet": {constructor kwargs}, "precond": "edm", "sigma_data": ..., "weights_bytes": ...,
  "weights_sha256": ..., training summary}``, which ``teacher.state_dict`` reads by itself (and
  refuses when the weights' size or sha256 differ: a sidecar left from another checkpoint, or a
  run stopped between the two writes), so a config needs only::

      teacher.state_dict.path = 'checkpoints/fashion-teacher.pt'
      teacher.state_dict.dataset = @dataset.fashion_mnist()

A non-finite loss stops training and keeps the last checkpoint; the MLflow run (if tracking)
is then marked FAILED. Per-step losses are logged to MLflow in batches.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import gin
import torch

from precondlab.errors import NonFiniteLossError, UserInputError
from precondlab.fileio import atomic_write
from precondlab.nets.songunet import SongUNet
from precondlab.preconditioners.base import edm_scalings
from precondlab.teachers.state_dict import SIDECAR_FORMAT, file_sha256, sidecar_path


@gin.configurable("teacher_net")
def teacher_net(img_resolution: int,                       # from the dataset
                in_channels: int,                          # from the dataset
                model_channels: int = 32,                  # base channel count
                channel_mult: Sequence[int] = (1, 2, 2),   # channels per resolution / model_channels
                num_blocks: int = 1,                       # residual blocks per resolution
                attn_resolutions: Sequence[int] = (),      # resolutions with self-attention
                dropout: float = 0.0,                      # EDM: 0.13 on CIFAR-10
                channel_mult_emb: int = 4,                 # embedding width / model_channels
                channel_mult_noise: int = 1,               # noise embedding width / model_channels
                embedding_type: str = "positional",        # 'positional' (DDPM++) or 'fourier' (NCSN++)
                encoder_type: str = "standard",            # 'standard', 'skip' or 'residual'
                decoder_type: str = "standard",            # 'standard' or 'skip'
                resample_filter: Sequence[int] = (1, 1)) -> SongUNet:  # FIR taps of up/down sampling
    """An unconditional SongUNet (DDPM++ by default) sized for the dataset; its kwargs are kept
    on it as ``songunet_kwargs`` (what the sidecar records)."""
    levels = len(channel_mult)
    if img_resolution % (1 << (levels - 1)):
        raise ValueError(f"teacher_net: img_resolution {img_resolution} is not divisible by 2^{levels - 1} "
                         f"(channel_mult {list(channel_mult)} has {levels} resolutions)")
    kwargs = dict(img_resolution=int(img_resolution), in_channels=int(in_channels), out_channels=int(in_channels),
                  label_dim=0, augment_dim=0, model_channels=int(model_channels),
                  channel_mult=[int(m) for m in channel_mult], channel_mult_emb=int(channel_mult_emb),
                  num_blocks=int(num_blocks), attn_resolutions=[int(r) for r in attn_resolutions],
                  dropout=float(dropout), embedding_type=embedding_type,
                  channel_mult_noise=int(channel_mult_noise), encoder_type=encoder_type,
                  decoder_type=decoder_type, resample_filter=[int(f) for f in resample_filter])
    net = SongUNet(**kwargs)
    net.songunet_kwargs = kwargs
    return net


def edm_denoise(net: SongUNet, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """D(x; sigma) = c_skip x + c_out F(c_in x, ln(sigma) / 4) (EDM's preconditioning, as EDMNetTeacher)."""
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, sigma_data)
    b = (-1,) + (1,) * (x.ndim - 1)
    return c_skip.reshape(b) * x + c_out.reshape(b) * net(c_in.reshape(b) * x, c_noise)


def edm_loss(net: SongUNet, y: torch.Tensor, sigma_data: float = 0.5, P_mean: float = -1.2, P_std: float = 1.2,
             generator: torch.Generator | None = None, sigma: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
    """EDM's weighted denoising loss, averaged over batch and pixels (about 1 for an untrained net)."""
    if sigma is None:
        rnd = torch.randn(y.shape[0], generator=generator, device=y.device, dtype=y.dtype)
        sigma = (rnd * P_std + P_mean).exp()
    if noise is None:
        noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    b = (-1,) + (1,) * (y.ndim - 1)
    D = edm_denoise(net, y + sigma.reshape(b) * noise, sigma, sigma_data)
    return (weight.reshape(b) * (D - y) ** 2).mean()


def save_teacher(path: str | Path, net: torch.nn.Module, songunet_kwargs: dict, meta: dict | None = None,
                 sigma_data: float = 0.5) -> tuple[Path, Path]:
    """Write the weights (.pt flat state dict or .safetensors), then the sidecar JSON recording
    their size and sha256, each atomically: the sidecar on disk always describes the weights
    beside it, or (a run stopped between the two writes) the loader sees that it does not."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    side = sidecar_path(path)
    if side == path:
        raise ValueError(f"the teacher checkpoint must not be a .json file: {path}")
    with atomic_write(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file(tensors, str(tmp))
        else:
            torch.save(tensors, tmp)
    sidecar = {"format": SIDECAR_FORMAT, "weights": path.name, "weights_bytes": path.stat().st_size,
               "weights_sha256": file_sha256(path), "songunet": songunet_kwargs,
               "precond": "edm", "sigma_data": float(sigma_data), **(meta or {})}
    text = json.dumps(sidecar, indent=1, default=str)
    with atomic_write(side) as tmp:
        tmp.write_text(text)
    return path, side


@dataclass
class TeacherTrainingResult:
    checkpoint: str | None          # the last checkpoint written (None if none was)
    sidecar: str | None
    steps: int                      # optimiser steps done
    losses: list                    # training loss per step
    eval_losses: list               # [(step, EMA net's loss on a fixed batch, fixed sigmas and noise)]
    seconds: float
    parameters: int
    run_id: str | None = None       # MLflow run (None without tracking)

    def summary(self) -> dict:
        k = max(1, min(50, len(self.losses) // 4))
        return {"checkpoint": self.checkpoint, "sidecar": self.sidecar, "steps": self.steps,
                "loss_first": sum(self.losses[:k]) / k if self.losses else None,
                "loss_last": sum(self.losses[-k:]) / k if self.losses else None,
                "eval_loss_first": self.eval_losses[0][1] if self.eval_losses else None,
                "eval_loss_last": self.eval_losses[-1][1] if self.eval_losses else None,
                "seconds": self.seconds, "parameters": self.parameters, "run_id": self.run_id}


@gin.configurable("teacher_training")
@dataclass
class TeacherTraining:
    """EDM-loss training of a SongUNet teacher on a dataset; ``run()`` trains and saves it."""

    dataset: Any = gin.REQUIRED                # @dataset.fashion_mnist() ...: anything with sample_x0 (n, C, H, W)
    net: Callable = teacher_net                # called with img_resolution=, in_channels=; returns a SongUNet
    steps: int = 2000                          # optimiser steps
    batch_size: int = 64
    lr: float = 1e-3                           # Adam (EDM: 1e-3 on CIFAR-10 at batch 512, 2e-4 on larger sets)
    lr_warmup: int = 0                         # linear learning-rate ramp over this many steps (EDM: ~20k)
    ema_decay: float = 0.999                   # EMA of the weights (the saved network)
    ema_warmup: bool = True                    # decay min(ema_decay, (1 + step)/(10 + step))
    grad_clip: float = 0.0                     # max gradient norm (0: off)
    P_mean: float = -1.2                       # ln(sigma) ~ N(P_mean, P_std^2) (EDM)
    P_std: float = 1.2
    sigma_data: float = 0.5                    # EDM preconditioning (images in [-1, 1])
    seed: int = 0
    device: str = "cpu"                        # 'cpu' or 'cuda'
    output: str = "checkpoints/teacher.pt"     # .pt or .safetensors; the sidecar is <output>.json
    checkpoint_every: int = 500                # steps between checkpoints (and at the end)
    log_every: int = 50                        # steps between progress lines / MLflow flushes
    eval_batch: int = 64                       # fixed images x sigmas for eval_loss (0: off)
    tracking: bool = True                      # log to MLflow
    name: str = ""                             # MLflow run name (default: teacher-<dataset>)

    # -- helpers ---------------------------------------------------------------------------------
    def _dataset_shape(self) -> tuple[int, int, int]:
        if not hasattr(self.dataset, "sample_x0"):
            raise ValueError(f"teacher_training.dataset must have sample_x0(n, generator) returning images "
                             f"(n, C, H, W); got {type(self.dataset).__name__}")
        shape = tuple(getattr(self.dataset, "shape", ()) or ())
        if len(shape) != 3:
            shape = tuple(self.dataset.sample_x0(1, torch.Generator().manual_seed(0)).shape[1:])
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"teacher_training needs square images (C, H, W), the dataset gives {shape}")
        return shape

    def _dataset_name(self) -> str:
        return str(getattr(self.dataset, "name", type(self.dataset).__name__))

    def _eval_fn(self, device: torch.device, shape) -> Callable[[torch.nn.Module], float] | None:
        """Loss of a net on a fixed batch: fixed images, sigmas at lognormal quantiles, fixed noise."""
        n = int(self.eval_batch)
        if n <= 0:
            return None
        gen = torch.Generator().manual_seed(self.seed + 12345)
        y = self.dataset.sample_x0(n, gen).to(device=device, dtype=torch.float32).reshape(n, *shape)
        q = (torch.arange(n, dtype=torch.float64) % 8 + 0.5) / 8
        sigma = (self.P_mean + self.P_std * torch.special.ndtri(q)).exp().to(device, torch.float32)
        noise = torch.randn(y.shape, generator=gen).to(device)

        def evaluate(net) -> float:
            with torch.no_grad():
                return float(edm_loss(net, y, self.sigma_data, sigma=sigma, noise=noise))
        return evaluate

    # -- the run ---------------------------------------------------------------------------------
    def run(self, output: str | None = None, tracking: bool | None = None, tracking_uri: str | None = None,
            experiment_name: str = "precondlab", progress: bool = False, config_text: str | None = None,
            stream=None) -> TeacherTrainingResult:
        from precondlab import tracking as tracking_mod

        stream = stream or sys.stderr
        out = Path(output or self.output).expanduser()
        if out.suffix == ".json":
            raise ValueError(f"the teacher checkpoint must be a .pt or .safetensors file, not {out}")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("teacher_training: steps, batch_size and checkpoint_every must be positive")
        shape = self._dataset_shape()
        device = torch.device(self.device)
        torch.manual_seed(self.seed)  # the network's initialisation
        net = self.net(img_resolution=shape[1], in_channels=shape[0])
        kwargs = getattr(net, "songunet_kwargs", None)
        if not isinstance(net, SongUNet) or net.s_conditioning or kwargs is None:
            raise ValueError("teacher_training.net must build an unconditional SongUNet without "
                             "s-conditioning that records its songunet_kwargs: bind @teacher_net")
        use_tracking = self.tracking if tracking is None else tracking
        log = None
        if use_tracking:
            client, _, exp_id = tracking_mod.connect(tracking_uri, experiment_name)
            log = tracking_mod.RunLogger(client, exp_id, run_name=self.name or f"teacher-{self._dataset_name()}",
                                         tags={"precondlab.kind": "teacher_training"})
        result = TeacherTrainingResult(None, None, 0, [], [], 0.0, sum(p.numel() for p in net.parameters()),
                                       log.run_id if log else None)
        try:
            self._train(net, kwargs, shape, device, out, result, log, progress, config_text, stream)
        except BaseException as exc:
            if log is not None:
                if result.checkpoint:
                    log.artifact(result.checkpoint, "checkpoints")
                    log.artifact(result.sidecar, "checkpoints")
                log.tag("error", f"{type(exc).__name__}: {exc}"[:5000])
                log.end("FAILED" if not isinstance(exc, KeyboardInterrupt) else "KILLED")
            if isinstance(exc, NonFiniteLossError):
                where = f"; MLflow run {log.run_id} marked FAILED" if log is not None else ""
                raise NonFiniteLossError(f"{exc}{where}; last good checkpoint: "
                                         f"{result.checkpoint or 'none yet'}") from None
            raise
        finally:
            if log is not None:
                log.cleanup()  # its files are artifacts by now
        if log is not None:
            log.end("FINISHED")
        return result

    def _train(self, net, kwargs, shape, device, out, result, log, progress, config_text, stream) -> None:
        start = time.perf_counter()
        net = net.to(device).train()
        ema = copy.deepcopy(net).eval().requires_grad_(False)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.lr, betas=(0.9, 0.999), eps=1e-8)
        data_gen = torch.Generator().manual_seed(self.seed)
        noise_gen = torch.Generator(device=device).manual_seed(self.seed + 1)
        evaluate = self._eval_fn(device, shape)
        training = {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "lr_warmup": self.lr_warmup,
                    "ema_decay": self.ema_decay, "ema_warmup": self.ema_warmup, "grad_clip": self.grad_clip,
                    "P_mean": self.P_mean, "P_std": self.P_std, "seed": self.seed, "device": str(device)}
        describe = getattr(self.dataset, "describe", None)
        dataset_info = describe() if callable(describe) else {"dataset": self._dataset_name()}
        pending: list = []

        def flush() -> None:
            if log is None or not pending:
                return
            from mlflow.entities import Metric
            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, s) for s, k, v in pending]
            for i in range(0, len(items), 1000):
                log.client.log_batch(log.run_id, metrics=items[i:i + 1000])
            pending.clear()

        if log is not None:
            if config_text:
                log.text(config_text, "config.gin")
            log.params({"dataset": self._dataset_name(), "parameters": result.parameters, "output": str(out),
                        **{f"net.{k}": v for k, v in kwargs.items()}, **{f"train.{k}": v for k, v in training.items()},
                        "sigma_data": self.sigma_data})
        if evaluate is not None:
            result.eval_losses.append((0, evaluate(ema)))
            pending.append((0, "eval_loss", result.eval_losses[-1][1]))

        def checkpoint(step: int) -> None:
            meta = {"step": step, "dataset": dataset_info, "training": training,
                    "loss": sum(result.losses[-50:]) / len(result.losses[-50:]),
                    "eval_loss": result.eval_losses[-1][1] if result.eval_losses else None,
                    "parameters": result.parameters}
            path, side = save_teacher(out, ema, kwargs, meta, self.sigma_data)
            result.checkpoint, result.sidecar = str(path), str(side)

        tick = time.perf_counter()
        for step in range(1, self.steps + 1):
            if self.lr_warmup > 0:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr * min(1.0, step / self.lr_warmup)
            y = self.dataset.sample_x0(self.batch_size, data_gen).to(device=device, dtype=torch.float32)
            loss = edm_loss(net, y.reshape(-1, *shape), self.sigma_data, self.P_mean, self.P_std, noise_gen)
            value = float(loss.detach())
            if not math.isfinite(value):
                flush()
                raise NonFiniteLossError(f"non-finite loss {value} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            optimizer.step()
            decay = min(self.ema_decay, (1 + step) / (10 + step)) if self.ema_warmup else self.ema_decay
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), net.parameters()):
                    p_ema.lerp_(p, 1 - decay)
            result.losses.append(value)
            result.steps = step
            pending.append((step, "loss", value))
            if step % self.checkpoint_every == 0 or step == self.steps:
                if evaluate is not None:
                    result.eval_losses.append((step, evaluate(ema)))
                    pending.append((step, "eval_loss", result.eval_losses[-1][1]))
                checkpoint(step)
            if step % self.log_every == 0 or step == self.steps:
                flush()
                if progress:
                    recent = result.losses[-self.log_every:]
                    rate = len(recent) / max(time.perf_counter() - tick, 1e-9)
                    ev = ""  # the last evaluation, with its step: it runs at checkpoints only
                    if result.eval_losses:
                        ev = f"  eval_loss {result.eval_losses[-1][1]:.4f} (step {result.eval_losses[-1][0]})"
                    print(f"step {step}/{self.steps}  loss {sum(recent) / len(recent):.4f}{ev}  "
                          f"{rate:.2f} it/s", file=stream, flush=True)
                    tick = time.perf_counter()
        result.seconds = time.perf_counter() - start
        if log is not None:
            pending.append((self.steps, "seconds", result.seconds))
            flush()
            log.artifact(result.checkpoint, "checkpoints")
            log.artifact(result.sidecar, "checkpoints")
            log.text(gin.operative_config_str(), "operative_config.gin")


def train_teacher(config=None, **run_kwargs) -> TeacherTrainingResult:
    """Build ``teacher_training`` from the parsed gin config and run it (``run_kwargs`` go to run())."""
    from precondlab.config import ConfigError
    try:
        job = TeacherTraining()
    except UserInputError:  # a missing dataset or checkpoint: its own message says what to do
        raise
    except Exception as exc:  # noqa: BLE001 - gin wraps missing bindings and constructor errors
        origin = ", ".join(config.files) if config is not None and config.files else "config"
        raise ConfigError(f"{origin}: {str(exc).strip()}") from None
    if config is not None:
        run_kwargs.setdefault("config_text", config.text)
    return job.run(**run_kwargs)


def main_args(args) -> int:
    """`precondlab train-teacher`: parse gin, train, print where the checkpoint is and how to use it."""
    from precondlab import config
    from precondlab.errors import user_message

    files = list(args.config) + list(getattr(args, "gin_file", []) or [])
    if not files and not args.gin_bindings:
        raise config.ConfigError("no gin file given: e.g. precondlab train-teacher gin/teachers/fashion_teacher.gin")
    cfg = config.load(files, args.gin_bindings, getattr(args, "gin_search_paths", None))
    try:
        result = train_teacher(cfg, output=args.output, tracking=False if args.no_tracking else None,
                               tracking_uri=args.tracking_uri, experiment_name=args.experiment,
                               progress=not args.no_progress)
    except UserInputError as exc:  # also raised inside the run (e.g. the data): its MLflow run is FAILED
        print(f"precondlab: error: {user_message(exc)}", file=sys.stderr)
        return 2
    s = result.summary()
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = [(k, fmt(v)) for k, v in s.items() if v is not None]
    width = max(len(k) for k, _ in rows)
    print("\nsummary (loss: EDM-weighted, about 1 per pixel untrained; eval_loss: EMA net, fixed batch):")
    print("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    print(f"\nuse it as a teacher:\n  teacher.state_dict.path = {s['checkpoint']!r}\n"
          f"  teacher.state_dict.dataset = <the dataset it was trained on>")
    if args.json:
        print(json.dumps({**s, "losses": result.losses, "eval_losses": result.eval_losses}))
    return 0


__all__ = ["TeacherTraining", "TeacherTrainingResult", "NonFiniteLossError", "edm_denoise", "edm_loss",
           "main_args", "save_teacher", "teacher_net", "train_teacher"]
