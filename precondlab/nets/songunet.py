"""EDM's DDPM++/NCSN++ U-Net ("SongUNet") with CTM's second time input s.

Parameter and buffer names follow the state dict of EDM's ``training/networks.py`` one for one
(``map_layer0.weight``, ``enc.32x32_block0.norm0.weight``, ``dec.32x32_aux_conv.bias``, ...), so
EDM weights load by name with ``load_state_dict(strict=True)``; the module code is our own.
Constructor defaults are EDM's too: its checkpoints record only the arguments that were passed
(``num_blocks``, ``attn_resolutions``, ``channel_mult_emb`` are usually left out).

CTM conditions the network on the jump target s as well as on t. The s-path (``map_noise_s``,
``map_layer0_s``, ``map_layer1_s``; our names, absent from EDM checkpoints) adds a second
embedding to the t-embedding before its last SiLU. ``map_layer1_s`` starts at exactly zero, so a
student initialised from a teacher computes the teacher's function until training moves it.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


SQRT_HALF = math.sqrt(0.5)  # residual branches are summed then scaled to keep unit variance


def _xavier_(weight: torch.Tensor, fan_in: int, fan_out: int, gain: float = 1.0) -> None:
    """EDM's 'xavier_uniform' init times ``gain`` (1e-5 for layers that should start near zero)."""
    bound = gain * math.sqrt(6 / (fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def linear(in_features: int, out_features: int, bias: bool = True, gain: float = 1.0) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    _xavier_(layer.weight, in_features, out_features, gain)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """EDM's group count: at most 32 groups, at least 4 channels per group."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=eps)


class Conv(nn.Module):
    """k x k convolution with optional 2x FIR resampling; ``kernel=0`` resamples only.

    The FIR filter is the outer product of ``resample_filter`` with itself, normalised to sum 1
    (a 2x2 box for DDPM++, [1,3,3,1] for NCSN++); it is a buffer because EDM's state dict has it.
    ``fused`` applies the filter on the cheaper side of the convolution (NCSN++'s residual path).
    """

    def __init__(self,
                 in_channels: int,                        # channels in
                 out_channels: int,                       # channels out
                 kernel: int,                             # kernel side; 0 = no weights, resampling only
                 bias: bool = True,                       # add a per-channel bias
                 up: bool = False,                        # 2x upsample before the convolution
                 down: bool = False,                      # 2x downsample before the convolution
                 resample_filter: Sequence[int] = (1, 1), # 1-D FIR taps of the resampler
                 fused: bool = False,                     # filter after a down-conv / before an up-conv
                 gain: float = 1.0):                      # init scale of the weights
        super().__init__()
        if up and down:
            raise ValueError("a convolution resamples up or down, not both")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused = up, down, fused
        if kernel:
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
            _xavier_(self.weight, in_channels * kernel ** 2, out_channels * kernel ** 2, gain)
            self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        else:
            self.weight = self.bias = None
        if up or down:
            taps = torch.as_tensor(resample_filter, dtype=torch.float32)
            self.register_buffer("resample_filter", torch.outer(taps, taps)[None, None] / taps.sum() ** 2)
        else:
            self.resample_filter = None

    def _upsample(self, x: torch.Tensor, padding: int) -> torch.Tensor:
        f = (4 * self.resample_filter).to(x.dtype).repeat(x.shape[1], 1, 1, 1)  # x4 keeps the mean
        return F.conv_transpose2d(x, f, groups=x.shape[1], stride=2, padding=padding)

    def _downsample(self, x: torch.Tensor, padding: int) -> torch.Tensor:
        f = self.resample_filter.to(x.dtype).repeat(x.shape[1], 1, 1, 1)
        return F.conv2d(x, f, groups=x.shape[1], stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        pad_w = w.shape[-1] // 2 if w is not None else 0
        pad_f = (self.resample_filter.shape[-1] - 1) // 2 if self.resample_filter is not None else 0
        if self.fused and w is not None and self.up:
            x = F.conv2d(self._upsample(x, max(pad_f - pad_w, 0)), w, padding=max(pad_w - pad_f, 0))
        elif self.fused and w is not None and self.down:
            x = self._downsample(F.conv2d(x, w, padding=pad_w + pad_f), 0)
        else:
            if self.up:
                x = self._upsample(x, pad_f)
            if self.down:
                x = self._downsample(x, pad_f)
            if w is not None:
                x = F.conv2d(x, w, padding=pad_w)
        if self.bias is not None:
            x = x + self.bias.reshape(1, -1, 1, 1)
        return x


class PositionalEmbedding(nn.Module):
    """Sinusoids of a scalar at geometrically spaced frequencies 1 .. 1/max_positions.

    Returned as [sin, cos]: EDM computes [cos, sin] and its SongUNet then swaps the halves; its
    DhariwalUNet keeps [cos, sin] (``cos_first``).
    """

    def __init__(self,
                 num_channels: int,            # output width (two per frequency)
                 max_positions: int = 10000,   # slowest frequency is 1/max_positions
                 endpoint: bool = True,        # DDPM++ includes the slowest frequency itself (ADM does not)
                 cos_first: bool = False):     # ADM's order
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint
        self.cos_first = cos_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        k = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        phase = torch.outer(x.to(torch.float32), (1 / self.max_positions) ** k)
        if self.cos_first:
            return torch.cat([phase.cos(), phase.sin()], dim=1)
        return torch.cat([phase.sin(), phase.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """NCSN++'s random Fourier features; the frequencies are a buffer of the checkpoint."""

    def __init__(self,
                 num_channels: int,   # output width (two per frequency)
                 scale: float = 16):  # std of the random frequencies
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phase = torch.outer(x.to(torch.float32), 2 * math.pi * self.freqs)
        return torch.cat([phase.sin(), phase.cos()], dim=1)  # EDM's swapped order, as above


def embedded_labels(net: nn.Module, class_labels: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The class labels a conditional EDM network embeds (SongUNet and DhariwalUNet alike): zeros
    when none are given, as EDM feeds them, and label dropout while training (guidance)."""
    labels = class_labels
    if labels is None:
        labels = torch.zeros(like.shape[0], net.label_dim, device=like.device)
    labels = labels.to(like.dtype)
    if net.training and net.label_dropout:
        labels = labels * (torch.rand(labels.shape[0], 1, device=like.device) >= net.label_dropout)
    return labels


def s_embedding(net: nn.Module, noise_labels_s: torch.Tensor | None) -> torch.Tensor:
    """CTM's embedding of c_noise_s (our s-path), added to the t-embedding before its last SiLU."""
    if noise_labels_s is None:
        raise ValueError(f"this {type(net).__name__} is s-conditioned (CTM): pass noise_labels_s")
    return net.map_layer1_s(F.silu(net.map_layer0_s(net.map_noise_s(noise_labels_s))))


def noise_embedding(kind: str, num_channels: int) -> nn.Module:
    if kind == "positional":
        return PositionalEmbedding(num_channels)
    if kind == "fourier":
        return FourierEmbedding(num_channels)
    raise ValueError(f"embedding_type must be 'positional' or 'fourier', got {kind!r}")


class UNetBlock(nn.Module):
    """EDM's residual block: GN-SiLU-conv, + embedding, GN-SiLU-dropout-conv, skip, then attention.

    DDPM++ (the defaults) adds the embedding and scales sums by sqrt(1/2); ADM (DhariwalUNet)
    scales and shifts by it (``adaptive_scale``), sums unscaled (``skip_scale = 1``), resamples
    its skip without a projection when the width stays (``resample_proj = False``) and has one
    attention head per 64 channels.
    """

    def __init__(self,
                 in_channels: int,                         # channels in
                 out_channels: int,                        # channels out
                 emb_channels: int,                        # width of the time embedding
                 up: bool = False,                         # 2x upsample (decoder)
                 down: bool = False,                       # 2x downsample (encoder)
                 attention: bool = False,                  # self-attention after the convolutions
                 num_heads: int = 1,                       # DDPM++ uses one head
                 dropout: float = 0.0,                     # dropout before the second convolution
                 resample_filter: Sequence[int] = (1, 1),  # FIR taps for up/down
                 eps: float = 1e-6,                        # GroupNorm epsilon (ADM: 1e-5)
                 adaptive_scale: bool = False,             # ADM: the embedding scales and shifts
                 skip_scale: float = SQRT_HALF,            # ADM: 1
                 resample_proj: bool = True,               # ADM: False (a 1x1 skip only where widths differ)
                 channels_per_head: int | None = None):    # ADM: 64 (then num_heads = out_channels / 64)
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = 0 if not attention else out_channels // channels_per_head if channels_per_head else num_heads
        self.dropout, self.adaptive_scale, self.skip_scale = dropout, adaptive_scale, skip_scale
        self.norm0 = group_norm(in_channels, eps)
        self.conv0 = Conv(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = group_norm(out_channels, eps)
        self.conv1 = Conv(out_channels, out_channels, 3, gain=1e-5)
        self.skip = None
        if in_channels != out_channels or up or down:  # DDPM++ projects the skip with a 1x1 conv
            kernel = 1 if resample_proj or in_channels != out_channels else 0
            self.skip = Conv(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = group_norm(out_channels, eps)
            self.qkv = Conv(out_channels, 3 * out_channels, 1, gain=math.sqrt(0.2))
            self.proj = Conv(out_channels, out_channels, 1, gain=1e-5)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attend(self.norm2(x))) + x) * self.skip_scale
        return x

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        # EDM's qkv conv lays its 3C output channels out as (head, channel, q|k|v): this split
        # must follow that order or EDM's weights would mean something else.
        q, k, v = rearrange(self.qkv(x), "b (h c three) y x -> three (b h) c (y x)",
                            h=self.num_heads, three=3)
        w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
        out = torch.einsum("nqk,nck->ncq", w, v)
        return rearrange(out, "(b h) c (y x) -> b (h c) y x", h=self.num_heads, y=x.shape[2])


class SongUNet(nn.Module):
    """EDM's DDPM++ (positional/standard) or NCSN++ (fourier/residual) U-Net, optionally s-conditioned.

    The argument order is EDM's, so positional init args recorded in a checkpoint map directly.
    """

    def __init__(self,
                 img_resolution: int,                        # image side at input and output
                 in_channels: int,                           # image channels in
                 out_channels: int,                          # image channels out
                 label_dim: int = 0,                         # class labels; 0 = unconditional
                 augment_dim: int = 0,                       # EDM's augmentation labels (9 on CIFAR-10)
                 model_channels: int = 128,                  # base channel count
                 channel_mult: Sequence[int] = (1, 2, 2, 2), # channels per resolution / model_channels
                 channel_mult_emb: int = 4,                  # embedding width / model_channels
                 num_blocks: int = 4,                        # residual blocks per resolution
                 attn_resolutions: Sequence[int] = (16,),    # resolutions with self-attention
                 dropout: float = 0.10,                      # dropout inside the residual blocks
                 label_dropout: float = 0.0,                 # class-label dropout (guidance training)
                 embedding_type: str = "positional",         # 'positional' (DDPM++) or 'fourier' (NCSN++)
                 channel_mult_noise: int = 1,                # noise embedding width / model_channels
                 encoder_type: str = "standard",             # 'standard', 'skip' or 'residual' (NCSN++)
                 decoder_type: str = "standard",             # 'standard' or 'skip'
                 resample_filter: Sequence[int] = (1, 1),    # FIR taps: [1,1] DDPM++, [1,3,3,1] NCSN++
                 s_conditioning: bool = False):              # CTM: add an embedding of c_noise_s
        super().__init__()
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be standard, skip or residual, got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be standard or skip, got {decoder_type!r}")
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.label_dropout, self.s_conditioning = label_dim, label_dropout, s_conditioning
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        block = functools.partial(UNetBlock, emb_channels=emb_channels, dropout=dropout,
                                  resample_filter=resample_filter)

        # Mapping network: noise level (+ labels) -> embedding fed to every block.
        self.map_noise = noise_embedding(embedding_type, noise_channels)
        self.map_label = linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = linear(noise_channels, emb_channels)
        self.map_layer1 = linear(emb_channels, emb_channels)
        if s_conditioning:
            self.map_noise_s = noise_embedding(embedding_type, noise_channels)
            self.map_layer0_s = linear(noise_channels, emb_channels)
            self.map_layer1_s = linear(emb_channels, emb_channels, gain=0.0)  # s-path starts at zero

        # Encoder: one entry per feature map that the decoder later takes as a skip.
        self.enc = nn.ModuleDict()
        c, c_aux = in_channels, in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == 0:
                self.enc[f"{tag}_conv"] = Conv(c, model_channels, 3)
                c = model_channels
            else:
                self.enc[f"{tag}_down"] = block(c, c, down=True)
                if encoder_type == "skip":
                    self.enc[f"{tag}_aux_down"] = Conv(c_aux, c_aux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{tag}_aux_skip"] = Conv(c_aux, c, 1)
                elif encoder_type == "residual":
                    self.enc[f"{tag}_aux_residual"] = Conv(c_aux, c, 3, down=True, fused=True,
                                                           resample_filter=resample_filter)
                    c_aux = c
            for i in range(num_blocks):
                self.enc[f"{tag}_block{i}"] = block(c, model_channels * mult, attention=res in attn_resolutions)
                c = model_channels * mult
        skips = [m.out_channels for name, m in self.enc.items() if "aux" not in name]

        # Decoder: every `_block` entry concatenates one encoder skip to its input.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            tag = f"{res}x{res}"
            if level == len(channel_mult) - 1:
                self.dec[f"{tag}_in0"] = block(c, c, attention=True)
                self.dec[f"{tag}_in1"] = block(c, c)
            else:
                self.dec[f"{tag}_up"] = block(c, c, up=True)
            for i in range(num_blocks + 1):
                c_in, c = c + skips.pop(), model_channels * mult
                self.dec[f"{tag}_block{i}"] = block(c_in, c, attention=i == num_blocks and res in attn_resolutions)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{tag}_aux_up"] = Conv(out_channels, out_channels, 0, up=True,
                                                     resample_filter=resample_filter)
                self.dec[f"{tag}_aux_norm"] = group_norm(c)
                self.dec[f"{tag}_aux_conv"] = Conv(c, out_channels, 3, gain=1e-5)

    def embed(self, noise_labels, noise_labels_s=None, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            emb = emb + self.map_label(embedded_labels(self, class_labels, emb) * math.sqrt(self.label_dim))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
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

        skips, aux = [], x
        for name, block in self.enc.items():
            if name.endswith("_aux_down"):
                aux = block(aux)
            elif name.endswith("_aux_skip"):
                x = skips[-1] = x + block(aux)
            elif name.endswith("_aux_residual"):
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        out = h = None
        for name, block in self.dec.items():
            if name.endswith("_aux_up"):
                out = block(out)
            elif name.endswith("_aux_norm"):
                h = block(x)
            elif name.endswith("_aux_conv"):
                h = block(F.silu(h))
                out = h if out is None else out + h
            else:
                if "_block" in name:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out
