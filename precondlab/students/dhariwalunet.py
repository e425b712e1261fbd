"""CTM's student on EDM's ADM U-Net (DhariwalUNet), conditioned on (t, s): the architecture of
EDM's ImageNet-64 teacher, so that the student starts from its weights."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from precondlab.nets.dhariwalunet import DhariwalUNet
from precondlab.registry import register
from precondlab.students.songunet import ImageStudent, check_dim


@register("student", "dhariwalunet")
class DhariwalUNetStudent(ImageStudent, DhariwalUNet):
    """CTM student F(c_in x, c_noise_t, c_noise_s[, class_labels]) on EDM's DhariwalUNet (EDM's names)."""

    def __init__(self,
                 dim: int | None = None,                        # C*H*W from the trainer; checked
                 img_resolution: int = 64,                      # image side
                 in_channels: int = 3,                          # image channels
                 out_channels: int | None = None,               # default: in_channels
                 label_dim: int = 0,                            # classes (the teacher's); 0: unconditional
                 model_channels: int = 192,                     # EDM's ImageNet-64 ADM
                 channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4,
                 num_blocks: int = 3,
                 attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.0):                         # EDM trained ImageNet-64 with 0.10
        check_dim("dhariwalunet", dim, in_channels, img_resolution)
        super().__init__(img_resolution=img_resolution, in_channels=in_channels,
                         out_channels=in_channels if out_channels is None else out_channels, label_dim=label_dim,
                         model_channels=model_channels, channel_mult=list(channel_mult),
                         channel_mult_emb=channel_mult_emb, num_blocks=num_blocks,
                         attn_resolutions=list(attn_resolutions), dropout=dropout, s_conditioning=True)

    def last_layer(self) -> nn.Parameter:
        """The output convolution's weight: its gradient norms set CTM's adaptive DSM weight."""
        return self.out_conv.weight
