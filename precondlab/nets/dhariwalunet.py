"""EDM's ADM U-Net ("DhariwalUNet", Dhariwal & Nichol's architecture), with CTM's second time input s.

The network of EDM's ImageNet-64 checkpoints (``edm-imagenet-64x64-cond-adm.pkl``: 192 channels,
channel_mult (1, 2, 3, 4), 3 blocks, attention at 32, 16 and 8, 1000 classes). Parameter and
buffer names follow EDM's ``training/networks.py`` state dict one for one (``map_layer0.weight``,
``enc.64x64_block0.affine.weight``, ``out_conv.bias``, ...), so its weights load by name with
``load_state_dict(strict=True)``; the module code is our own, built from SongUNet's layers.

How it differs from DDPM++ (nets/songunet.py): the noise embedding is [cos, sin] without the
endpoint frequency; the class embedding (no bias, no sqrt(label_dim) factor) is added after the
two mapping layers; blocks scale and shift by the embedding, sum unscaled, resample the skip
without a projection and have one attention head per 64 channels; GroupNorm's epsilon is 1e-5;
the output is out_conv(silu(out_norm(x))). The s-path (``map_noise_s``, ``map_layer0_s``,
``map_layer1_s``; our names) adds a second embedding before the last SiLU and starts at zero.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from precondlab.nets.songunet import (Conv, PositionalEmbedding, UNetBlock, embedded_labels, group_norm, linear,
                                      s_embedding)

ADM_EPS = 1e-5   # EDM's GroupNorm default, which its DhariwalUNet keeps


class DhariwalUNet(nn.Module):
    """EDM's DhariwalUNet, optionally s-conditioned (CTM). EDM's argument order and defaults."""

    def __init__(self,
                 img_resolution: int,                          # image side at input and output
                 in_channels: int,                             # image channels in
                 out_channels: int,                            # image channels out
                 label_dim: int = 0,                           # classes; 0 = unconditional
                 augment_dim: int = 0,                         # EDM's augmentation labels
                 model_channels: int = 192,                    # base channel count
                 channel_mult: Sequence[int] = (1, 2, 3, 4),   # channels per resolution / model_channels
                 channel_mult_emb: int = 4,                    # embedding width / model_channels
                 num_blocks: int = 3,                          # residual blocks per resolution
                 attn_resolutions: Sequence[int] = (32, 16, 8),  # resolutions with self-attention
                 dropout: float = 0.10,                        # dropout inside the residual blocks
                 label_dropout: float = 0.0,                   # class-label dropout (guidance training)
                 s_conditioning: bool = False):                # CTM: add an embedding of c_noise_s
        super().__init__()
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.label_dropout, self.s_conditioning = label_dim, label_dropout, s_conditioning
        emb_channels = model_channels * channel_mult_emb
        block = functools.partial(UNetBlock, emb_channels=emb_channels, dropout=dropout, eps=ADM_EPS,
                                  adaptive_scale=True, skip_scale=1.0, resample_proj=False, channels_per_head=64)

        # Mapping network: noise level -> embedding, plus the class embedding, fed to every block.
        self.map_noise = PositionalEmbedding(model_channels, endpoint=False, cos_first=True)
        self.map_augment = linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = linear(model_channels, emb_channels)
        self.map_layer1 = linear(emb_channels, emb_channels)
        self.map_label = linear(label_dim, emb_channels, bias=False) if label_dim else None
        if s_conditioning:
            self.map_noise_s = PositionalEmbedding(model_channels, endpoint=False, cos_first=True)
            self.map_layer0_s = linear(model_channels, emb_channels)
            self.map_layer1_s = linear(emb_channels, emb_channels, gain=0.0)  # s-path starts at zero

        # Encoder: every entry's output is a skip for the decoder.
        self.enc = nn.ModuleDict()
        c = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv(c, model_channels * mult, 3)
                c = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = block(c, c, down=True)
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = block(c, model_channels * mult, attention=res in attn_resolutions)
                c = model_channels * mult
        skips = [m.out_channels for m in self.enc.values()]

        # Decoder: a block whose input width is not the running width takes the next skip.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = block(c, c, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(c, c)
            else:
                self.dec[f"{res}x{res}_up"] = block(c, c, up=True)
            for i in range(num_blocks + 1):
                c_in, c = c + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{i}"] = block(c_in, c, attention=res in attn_resolutions)
        self.out_norm = group_norm(c, ADM_EPS)
        self.out_conv = Conv(c, out_channels, 3, gain=1e-5)

    def embed(self, noise_labels, noise_labels_s=None, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:   # after the mapping layers, and without SongUNet's sqrt(label_dim)
            emb = emb + self.map_label(embedded_labels(self, class_labels, emb))
        if self.s_conditioning:
            emb = emb + s_embedding(self, noise_labels_s)
        return F.silu(emb)

    def forward(self,
                x: torch.Tensor,                            # (B, C, H, W), already scaled by c_in
                noise_labels: torch.Tensor,                 # (B,) c_noise of t
                noise_labels_s: torch.Tensor | None = None, # (B,) c_noise of s (s-conditioned nets)
                class_labels: torch.Tensor | None = None,   # (B, label_dim) one-hot
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(noise_labels, noise_labels_s, class_labels, augment_labels)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
