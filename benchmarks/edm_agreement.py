"""precondlab's EDM teachers against EDM's own code: for each kind of EDM checkpoint (wrapper and
network), a small network built by EDM's training/networks.py, randomised and pickled by EDM's own
persistence (the format of its .pkl files, embedded source included), is read by precondlab's
restricted unpickler (which never runs that source); teacher.denoise is compared with EDM's
net(x, sigma, class_labels) in float32. Needs a clone of EDM, which this script imports from:

    git clone https://github.com/NVlabs/edm /tmp/edm
    .venv/bin/python benchmarks/edm_agreement.py /tmp/edm

Prints the largest |ours - EDM| relative to the largest |EDM| for each kind. With ``--device cuda``
the ADM snapshot's use_fp16 is in force on both sides (EDM's float16 network, our float16
autocast): then expect float16's round-off, not float32's.
"""
import argparse
import pickle
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ap = argparse.ArgumentParser()
ap.add_argument("edm", help="a clone of github.com/NVlabs/edm")
ap.add_argument("--device", default="cpu", help="where both networks run (cuda: use_fp16 takes effect)")
args = ap.parse_args()
sys.path.insert(0, str(Path(args.edm).resolve()))
from training import networks as edm  # noqa: E402  (EDM's own code, from the clone)

from precondlab.teachers.edm_pkl import edm_pkl  # noqa: E402

torch.manual_seed(0)
cases = {
    "edm-cifar10-32x32-uncond-vp (EDMPrecond, DDPM++)": (edm.EDMPrecond, dict(img_resolution=16, img_channels=3, label_dim=0, model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1], model_channels=32, channel_mult=[1, 2], augment_dim=9, dropout=0.13)),
    "edm-cifar10-32x32-cond-vp (EDMPrecond, DDPM++, 10 classes)": (edm.EDMPrecond, dict(img_resolution=16, img_channels=3, label_dim=10, model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1], model_channels=32, channel_mult=[1, 2], augment_dim=9, dropout=0.13)),
    "edm-*-uncond-ve (EDMPrecond, NCSN++)": (edm.EDMPrecond, dict(img_resolution=16, img_channels=3, label_dim=0, model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=32, channel_mult=[1, 2], augment_dim=9)),
    "baseline-*-uncond-vp (VPPrecond, DDPM++)": (edm.VPPrecond, dict(img_resolution=16, img_channels=3, label_dim=0, model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1], model_channels=32, channel_mult=[1, 2])),
    "baseline-*-uncond-ve (VEPrecond, NCSN++)": (edm.VEPrecond, dict(img_resolution=16, img_channels=3, label_dim=0, model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=32, channel_mult=[1, 2])),
    "edm-imagenet-64x64-cond-adm (EDMPrecond, DhariwalUNet, fp16)": (edm.EDMPrecond, dict(img_resolution=16, img_channels=3, label_dim=7, use_fp16=True, model_type="DhariwalUNet", model_channels=64, channel_mult=[1, 2], num_blocks=2, attn_resolutions=[8])),
}
for name, (cls, kw) in cases.items():
    net = cls(**kw).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # EDM zero-inits output layers: randomise every tensor so that all matter
        for k, v in net.state_dict().items():
            if "resample_filter" not in k and "freqs" not in k:
                v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    path = Path(tempfile.mkdtemp()) / "snapshot.pkl"
    with open(path, "wb") as f:
        pickle.dump(dict(ema=net), f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = edm_pkl(str(path), device=args.device)
    net = net.to(args.device)
    x = torch.randn(4, 3, 16, 16, generator=g).to(args.device)
    sigma = torch.tensor([0.002, 0.3, 5.0, 80.0], device=args.device)
    x_t = x * (1 + sigma[:, None, None, None])
    labels = None
    if kw["label_dim"]:
        labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 5, 1]) % kw["label_dim"], kw["label_dim"]).float()
        labels = labels.to(args.device)
    with torch.no_grad():
        want = net(x_t, sigma, labels).float()
        got = teacher.denoise(x_t, sigma, **({} if labels is None else {"class_labels": labels}))
    rel = float((got - want).abs().max() / want.abs().max())
    line = f"{name}: max |ours - EDM| / max |EDM| = {rel:.2e}"
    if labels is not None:   # what a disagreement looks like: the same inputs with other labels
        with torch.no_grad():
            other = teacher.denoise(x_t, sigma, class_labels=labels.roll(1, dims=1))
        line += f" (with other labels: {float((other - want).abs().max() / want.abs().max()):.2e})"
    print(line)
