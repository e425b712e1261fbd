"""Peak memory of loading an EDM teacher pickle, against the file's size (issue 11: <= 2x).

Writes an EDM-format snapshot (EDMPrecond around the DDPM++ SongUNet at CIFAR-10's size, ~56M
parameters, pickled the way EDM's torch_utils.persistence does, by the test suite's writer),
then in a fresh process loads it with ``teacher.edm_pkl`` and prints the file's size, the
process's RSS before loading (after imports), its peak RSS (VmHWM) and the ratio of the extra
peak to the file size.

    .venv/bin/python benchmarks/teacher_load_memory.py [--dir /tmp] [--model-channels 128]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import sys
from pathlib import Path
def kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
from precondlab.teachers.edm_pkl import edm_pkl
Path("/proc/self/clear_refs").write_text("5")
before = kib("VmRSS")
teacher = edm_pkl(sys.argv[1])
print(before, kib("VmHWM"), kib("VmRSS"), sum(p.numel() for p in teacher.net.parameters()))
"""

ap = argparse.ArgumentParser()
ap.add_argument("--dir", default=None, help="where to write the snapshot (default: a temporary folder)")
ap.add_argument("--model-channels", type=int, default=128, help="DDPM++ width (CIFAR-10: 128)")
args = ap.parse_args()

sys.path.insert(0, str(REPO / "tests"))
import torch  # noqa: E402

from precondlab.nets.songunet import SongUNet  # noqa: E402
from test_edm_pkl import write_edm_pickle  # noqa: E402  (the suite's EDM-format writer)

kwargs = dict(img_resolution=32, in_channels=3, out_channels=3, label_dim=0, augment_dim=9,
              model_channels=args.model_channels, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16],
              dropout=0.13, embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
              decoder_type="standard", resample_filter=[1, 1])
folder = Path(args.dir or tempfile.mkdtemp())
path = folder / "edm-bench-cifar10-32x32-uncond-vp.pkl"
net = SongUNet(**kwargs).eval().requires_grad_(False)
write_edm_pickle(path, net, folder / "marker", "EDMPrecond", record_kwargs=kwargs)
del net
size_mib = path.stat().st_size / 2 ** 20
out = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True)
before, peak, after, params = (int(v) for v in out.stdout.split())
extra = (peak - before) / 1024
print(f"EDM pickle {path.name}: {size_mib:.0f} MiB on disk, {params / 1e6:.1f}M parameters")
print(f"  RSS before loading {before / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, after {after / 1024:.0f} MiB")
print(f"  extra peak while loading: {extra:.0f} MiB = {extra / size_mib:.2f}x the file (target <= 2x)")
path.unlink()
