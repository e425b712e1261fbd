"""CTM's image student: EDM's DDPM++ U-Net conditioned on (t, s), and its initialisation from a teacher."""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from precondlab.nets.songunet import SongUNet
from precondlab.registry import register


class ImageStudent:
    """What a U-Net student adds to its network (mixed in before it): images flat or (C, H, W),
    the network's own dtype inside and the caller's outside, and class labels exactly when the
    student is class-conditional."""

    def forward(self, x: torch.Tensor, c_noise_t: torch.Tensor, c_noise_s: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        n, res = x.shape[0], self.img_resolution
        kind = type(self).__name__
        if (class_labels is None) != (self.label_dim == 0):   # EDM's net would take zeros for a missing label
            raise ValueError(f"{kind} with label_dim = {self.label_dim} got "
                             f"{'no class_labels' if class_labels is None else 'class_labels'}: a class-conditional "
                             f"student takes the teacher's one-hot labels, an unconditional one none")
        per_example = math.prod(x.shape[1:])
        if per_example != self.in_channels * res * res:
            raise ValueError(
                f"{kind} takes {self.in_channels}x{res}x{res} images ({self.in_channels * res * res} "
                f"values each, flat or (C, H, W)), got x of shape {tuple(x.shape)} ({per_example} per example): "
                f"set the student's in_channels / img_resolution (IMG_CHANNELS / IMG_RESOLUTION) to the "
                f"teacher's and dataset's image shape.")
        dtype = self.map_layer0.weight.dtype
        img = x.reshape(n, self.in_channels, res, res).to(dtype)
        t = torch.as_tensor(c_noise_t, device=x.device).to(dtype).reshape(-1).expand(n)
        s = torch.as_tensor(c_noise_s, device=x.device).to(dtype).reshape(-1).expand(n)
        labels = class_labels.to(device=x.device, dtype=dtype) if class_labels is not None else None
        out = super().forward(img, t, s, class_labels=labels).to(x.dtype)
        return out.reshape(n, -1) if x.ndim == 2 else out


def check_dim(kind: str, dim: int | None, in_channels: int, img_resolution: int) -> None:
    expected = in_channels * img_resolution ** 2
    if dim is not None and dim != expected:
        raise ValueError(f"student.{kind}: dim={dim} but in_channels * img_resolution^2 = "
                         f"{in_channels} * {img_resolution}^2 = {expected}")


@register("student", "songunet")
class SongUNetStudent(ImageStudent, SongUNet):
    """CTM student F(c_in x, c_noise_t, c_noise_s[, class_labels]) on EDM's DDPM++ U-Net (EDM-compatible names).

    Accepts images (B, C, H, W) or flat vectors (B, C*H*W); runs in its own parameter dtype and
    returns the caller's dtype and layout.
    """

    def __init__(self,
                 dim: int | None = None,                     # C*H*W from the trainer; checked
                 img_resolution: int = 32,                   # image side
                 in_channels: int = 3,                       # image channels
                 out_channels: int | None = None,            # default: in_channels
                 label_dim: int = 0,                         # classes (the teacher's); 0: unconditional
                 model_channels: int = 128,                  # base channel count
                 channel_mult: Sequence[int] = (2, 2, 2),    # EDM's CIFAR-10 DDPM++
                 num_blocks: int = 4,                        # residual blocks per resolution
                 attn_resolutions: Sequence[int] = (16,),    # resolutions with self-attention
                 dropout: float = 0.0,                       # EDM trained CIFAR-10 with 0.13
                 channel_mult_noise: int = 1,                # noise embedding width / model_channels
                 channel_mult_emb: int = 4,                  # embedding width / model_channels
                 resample_filter: Sequence[int] = (1, 1),    # FIR taps of up/down sampling
                 embedding_type: str = "positional",         # 'positional' or 'fourier'
                 encoder_type: str = "standard",             # 'standard', 'skip' or 'residual'
                 decoder_type: str = "standard"):            # 'standard' or 'skip'
        check_dim("songunet", dim, in_channels, img_resolution)
        super().__init__(img_resolution=img_resolution, in_channels=in_channels,
                         out_channels=in_channels if out_channels is None else out_channels, label_dim=label_dim,
                         model_channels=model_channels, channel_mult=list(channel_mult),
                         channel_mult_emb=channel_mult_emb, num_blocks=num_blocks,
                         attn_resolutions=list(attn_resolutions), dropout=dropout,
                         embedding_type=embedding_type, channel_mult_noise=channel_mult_noise,
                         encoder_type=encoder_type, decoder_type=decoder_type,
                         resample_filter=list(resample_filter), s_conditioning=True)

    def last_layer(self) -> nn.Parameter:
        """The output convolution's weight: its gradient norms set CTM's adaptive DSM weight."""
        return self.dec[f"{self.img_resolution}x{self.img_resolution}_aux_conv"].weight


def init_from_teacher(student: nn.Module,
                      teacher_state_dict: Mapping[str, torch.Tensor] | nn.Module,
                      ) -> tuple[list[str], dict[str, str]]:
    """Copy every teacher tensor whose name and shape match a student tensor (CTM's init).

    Returns (copied names, skipped) where skipped maps each name left alone on either side to
    the reason: 'not in student', 'not in teacher' (e.g. the s-path) or the two shapes. A
    leading 'model.' (an EDM Precond's state dict) is stripped from the teacher's names.
    """
    source = teacher_state_dict.state_dict() if isinstance(teacher_state_dict, nn.Module) else teacher_state_dict
    if source and all(k.startswith("model.") for k in source):
        source = {k[len("model."):]: v for k, v in source.items()}
    target = student.state_dict()
    copied, skipped = [], {}
    with torch.no_grad():
        for name, value in source.items():
            if name not in target:
                skipped[name] = "not in student"
            elif tuple(target[name].shape) != tuple(value.shape):
                skipped[name] = f"shape {tuple(value.shape)} in teacher, {tuple(target[name].shape)} in student"
            else:
                target[name].copy_(value)  # state_dict() tensors share storage with the student
                copied.append(name)
    for name in target:
        if name not in source:
            skipped[name] = "not in teacher"
    return copied, skipped
