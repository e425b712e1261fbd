"""Teacher from a bare SongUNet state dict (.pt read weights-only, or .safetensors).

The architecture comes from gin, the weights from the file; names are SongUNet's (EDM's), with
a leading 'model.' or 'module.' (an EDM Precond's or DDP's state dict) stripped.

A checkpoint written by ``precondlab train-teacher`` has a sidecar ``<name>.json`` beside it
(``{"format": "precondlab.songunet_teacher/1", "songunet": {...}, "precond": "edm",
"sigma_data": ..., "weights_bytes": ..., "weights_sha256": ...}``); with ``sidecar='auto'`` (the
default) it is read and its architecture, preconditioning and sigma_data replace the gin
arguments, so only ``path`` (and a dataset) need binding. ``sidecar=None`` ignores it. A sidecar
whose recorded size or sha256 is not that of the weights file is refused (CheckpointError).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from precondlab.hashing import file_digest
from precondlab.registry import register
from precondlab.schedules import Schedule
from precondlab import safe_load
from precondlab.teachers.edm_pkl import CheckpointError, EDMNetTeacher, build_songunet


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """name -> tensor from a .safetensors file or a .pt/.pth state dict (no code runs either way)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"state-dict checkpoint not found: {path}. Write one with "
                              f"torch.save(net.state_dict(), path) or safetensors.torch.save_file, "
                              f"or set teacher.state_dict.path.")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
            tensors = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"teacher checkpoint {path}: not a readable safetensors file ({first})") from None
    else:
        tensors = safe_load.load_tensors(path, "teacher checkpoint")
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{path}: expected a flat dict of tensors, got {type(tensors).__name__}")
    for prefix in ("module.", "model."):
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


SIDECAR_FORMAT = "precondlab.songunet_teacher/1"


def sidecar_path(path: str | Path) -> Path:
    """Where the sidecar of a weights file lies: the same name with the suffix .json."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | Path) -> dict:
    """A train-teacher sidecar: {'format', 'songunet': SongUNet kwargs, 'precond', 'sigma_data', ...}."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable teacher sidecar ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT or not isinstance(meta.get("songunet"), dict):
        raise CheckpointError(f"{path}: not a teacher sidecar (expected a JSON object with "
                              f"format={SIDECAR_FORMAT!r} and a 'songunet' object)")
    return meta


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    return file_digest(path, "sha256")


def check_sidecar(meta: dict, weights: str | Path, side: str | Path) -> None:
    """Raise CheckpointError when the sidecar ``meta`` (read from ``side``) records another
    weights file than ``weights`` (size, then sha256). Sidecars that record neither pass."""
    weights = Path(weights)
    size, digest = meta.get("weights_bytes"), meta.get("weights_sha256")
    if (size is None and digest is None) or not weights.is_file():
        return  # an older sidecar; a missing weights file is reported by load_tensors
    actual_size = weights.stat().st_size
    actual = None
    if size is not None and int(size) != actual_size:
        found = f"{actual_size} bytes, not the {size} it records"
    else:
        actual = file_sha256(weights) if digest is not None else None
        if actual is None or actual == digest:
            return
        found = f"sha256 {actual[:16]}..., not the {str(digest)[:16]}... it records"
    raise CheckpointError(
        f"{side} does not describe the weights beside it: {weights} has {found}. The two files come "
        f"from different checkpoints (a train-teacher run stopped between writing them, or one was "
        f"replaced). Write both again (precondlab train-teacher --output {weights}), put back the "
        f"matching {Path(side).name}, or delete it and bind the architecture in gin "
        f"(teacher.state_dict.img_resolution, in_channels, model_channels, ...).")


def _auto_sidecar(path: Path) -> dict | None:
    candidate = sidecar_path(path)
    if candidate == path or not candidate.is_file():
        return None
    try:
        meta = json.loads(candidate.read_text())
    except (OSError, ValueError):
        return None  # some other JSON beside the weights: not ours
    return read_sidecar(candidate) if isinstance(meta, dict) and meta.get("format") == SIDECAR_FORMAT else None


@register("teacher", "state_dict")
def state_dict_teacher(path: str | None = None,                     # .pt / .pth / .safetensors
                       precond: str = "edm",                        # 'edm', 'vp' or 've'
                       img_resolution: int = 32,                    # image side
                       in_channels: int = 3,                        # image channels
                       model_channels: int = 128,                   # base channel count
                       channel_mult: Sequence[int] = (2, 2, 2),     # EDM's CIFAR-10 DDPM++
                       num_blocks: int = 4,                         # residual blocks per resolution
                       attn_resolutions: Sequence[int] = (16,),     # resolutions with self-attention
                       channel_mult_noise: int = 1,                 # noise embedding width / model_channels
                       channel_mult_emb: int = 4,                   # embedding width / model_channels
                       resample_filter: Sequence[int] = (1, 1),     # FIR taps of up/down sampling
                       embedding_type: str = "positional",          # 'positional' or 'fourier'
                       encoder_type: str = "standard",              # 'standard', 'skip' or 'residual'
                       decoder_type: str = "standard",              # 'standard' or 'skip'
                       augment_dim: int = 0,                        # 9 for EDM's CIFAR-10 weights
                       label_dim: int = 0,                          # classes (labels from the data); 0: none
                       sigma_data: float = 0.5,                     # EDM preconditioning
                       beta_d: float = 19.9,                        # VP preconditioning
                       beta_min: float = 0.1,                       # VP preconditioning
                       M: int = 1000,                               # VP preconditioning
                       schedule: Schedule | None = None,            # time grid for students
                       dataset: Any = None,                         # data sampler (sample_x0)
                       device: str = "cpu",                         # where the network runs
                       sidecar: str | None = "auto") -> EDMNetTeacher:  # 'auto': <path>.json if train-teacher wrote one
    """A SongUNet teacher whose weights are a state dict file; the architecture is set in gin
    or read from a train-teacher sidecar JSON."""
    if path is None:
        raise CheckpointError("teacher.state_dict needs `path` (a .pt or .safetensors SongUNet state dict)")
    meta = None
    if sidecar == "auto":
        meta = _auto_sidecar(Path(path))
        side = sidecar_path(path)
    elif sidecar:
        meta, side = read_sidecar(sidecar), sidecar
    if meta is not None:  # the sidecar describes how the weights were trained: it wins over gin
        check_sidecar(meta, path, side)
        kwargs = dict(meta["songunet"])
        precond = meta.get("precond", precond)
        sigma_data = float(meta.get("sigma_data", sigma_data))
    else:
        kwargs = dict(img_resolution=img_resolution, in_channels=in_channels, out_channels=in_channels,
                      label_dim=label_dim, augment_dim=augment_dim, model_channels=model_channels,
                      channel_mult=list(channel_mult), channel_mult_emb=channel_mult_emb, num_blocks=num_blocks,
                      attn_resolutions=list(attn_resolutions), embedding_type=embedding_type,
                      channel_mult_noise=channel_mult_noise, encoder_type=encoder_type,
                      decoder_type=decoder_type, resample_filter=list(resample_filter))
    net = build_songunet(kwargs, load_tensors(path), str(path))
    teacher = EDMNetTeacher(net, precond, sigma_data=sigma_data, beta_d=beta_d, beta_min=beta_min, M=M,
                            schedule=schedule, dataset=dataset, device=device, source=str(path))
    teacher.sidecar = meta
    return teacher
