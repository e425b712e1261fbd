"""Image networks: EDM's SongUNet (DDPM++/NCSN++) and its CTM student form."""

from precondlab.nets.songunet import SongUNet, SongUNetStudent, init_from_teacher

__all__ = ["SongUNet", "SongUNetStudent", "init_from_teacher"]
