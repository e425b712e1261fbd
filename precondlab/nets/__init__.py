"""Image network architectures: EDM's SongUNet (DDPM++/NCSN++), used by teachers and students."""

from precondlab.nets.songunet import SongUNet

__all__ = ["SongUNet"]
