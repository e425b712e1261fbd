"""Issue 3's GPU benchmark: CTM training throughput at the CIFAR network size, the cost of
Analytic-Precond's statistics for a network teacher, and a short CTM vs Analytic comparison on
Fashion-MNIST. One H100/H200 in <= 8 minutes; ``--smoke`` runs the same code on the CPU with
tiny shapes in about a minute (run it before spending GPU time).

    .venv/bin/python benchmarks/gpu_image.py --smoke                 # CPU, tiny shapes: proves the code path
    python3 benchmarks/gpu_image.py --out $OUT/gpu_image.json         # one GPU, the defaults below
    python3 benchmarks/gpu_image.py --parts network                   # parts 1-2 only (no dataset, no MLflow)

What it prints (and writes as JSON to ``--out``, after every part, so a run cut short keeps
what it finished):

1. **Training throughput** of the CTM step (gin/base/image_training.gin's recipe: N=18, K=17,
   Heun teacher, pseudo-Huber, DSM term, Adam, EMA, bf16 autocast on CUDA as ``Experiment``'s
   ``amp='auto'``) at the CIFAR config's network size (SongUNet DDPM++ 32x32x3, 128 channels,
   channel_mult (2,2,2), 4 blocks, attention at 16x16; batch 128), for the CTM and the
   Analytic (backward) preconditioners. The teacher is a *randomly initialised* network of the
   same architecture under EDM preconditioning, on random images (no checkpoint, no dataset):
   the cost is the architecture's, not the weights'. The loop body is ``Experiment._train``'s,
   without its MLflow logging; objects are built directly in Python (no gin). Warm-up steps,
   then timed steps between ``torch.cuda.synchronize()`` calls: images/s and ms/step.
2. **Analytic statistics time** for that teacher at the paper's setting (120 lambda points x 4096
   samples, Hutchinson, batch 256), NOT run in full: ``AnalyticODE.fit`` is timed at 6 and at 12
   points with 512 samples, extrapolated linearly in points (the slope between the two runs) and
   in samples (x 4096/512). Its share of a full configured run is
   stats / (stats + STEPS x analytic step time), STEPS read from gin/base/image_training.gin.
3. **CTM vs Analytic on Fashion-MNIST** (32x32, padded): a small EDM teacher trained here
   (gin/teachers/fashion_teacher.gin through ``train_teacher``), then gin/fashion_ctm.gin and
   gin/fashion_analytic.gin through ``config.load`` + ``experiment.run`` (the student has the
   teacher's architecture, as CTM initialises it from the teacher), tracked to a temporary SQLite
   MLflow store. EMA decay 0.99 (``--distill-ema``), not the configs' 0.999: the EMA is both the
   CTM target and the evaluated network, and 0.999 moves it only 22% of the way in 250 steps. The metric is ``fd_classifier``: the Frechet distance in the features of a
   small classifier trained in-project on the same data, NOT Inception FID. Data:
   /usr/share/datasets/fashion-mnist/ (Debian's dataset-fashion-mnist) or ``--data-dir`` (only
   the train split is read: train-{images-idx3,labels-idx1}-ubyte[.gz], 26 MB gzipped; the device
   machine has neither, so carry them); the smoke run writes a tiny idx fixture (random pixels).
4. **torch.compile** (``--compile 0`` skips it; last, so a cut-short run keeps parts 1-3): part 1's
   Analytic CTM step with student, EMA target and teacher network compiled in place, as
   ``experiment.compile = True`` does: ms/step, images/s, the first step's seconds (tracing and
   code generation) and the steps after which the compile time is repaid. ``experiment.compile``
   stays off by default until this shows it pays on a GPU. Smoke uses the ``aot_eager`` backend
   (same tracing, no code generation; inductor's C++ build takes minutes on a CPU).

Sizing for one H100 (bf16 ~ 300-400 TFLOP/s achieved on these convolutions, fp32/TF32 ~150-200):
the CIFAR DDPM++ forward is 42.4 GFLOP per image (torch's FLOP counter). A CTM step runs the
teacher for max(k) = 17 Heun steps over the whole batch (34 forwards) plus ~10 forward-equivalents
of student work: ~44 x 128 x 42.4 GFLOP ~ 240 TFLOP, ~0.6-0.8 s per step, so part 1 (2 x 13 steps)
~ 25 s. Part 2 measures ~2.5 PFLOP of fp32 JVPs (~15-25 s); the full statistics it extrapolates to
are ~105 PFLOP (~9-12 min, not run). Part 3's nets (32 channels, 0.6 GFLOP/image) are bound by
kernel launches, not FLOPs (counted on the CPU: ~400 kernels a teacher forward, ~4600 a JVP,
~12000 a CTM step; at ~10-15 us each): teacher 1500 steps x ~20 ms ~ 30 s; two distillations of
250 steps x ~0.2 s ~ 100 s; Fashion statistics (124 + 120 points x 2 batches of 2048) ~ 25 s;
classifier, reference statistics, 6 evaluations a run, MLflow ~ 50 s. Total ~ 5 min of the 8,
so ~2x slower kernels than assumed still fit. Part 4's inductor compile of a SongUNet forward +
backward is typically 1-2 min on 16 cores (unmeasured here): ``--compile 0`` if time is short. Every size is a flag (``--help``); ``--smoke`` changes the defaults only.

Dependencies on the device machine (torch 2.11, Python 3.12; it has numpy, einops, matplotlib,
torchvision, tqdm, scipy, pillow, safetensors, pandas, pyarrow, pyyaml, requests): it lacks
gin-config, MLflow and clean-fid, which must be carried as wheels (see the device README). Parts
1-2 (``--parts network``) need only gin-config, because ``precondlab.registry`` imports gin.
Part 3 also needs clean-fid (the FID code imports it where it computes) and MLflow with
its SQLite store; what part 3 imported here that the device image lacks: gin-config, clean-fid,
mlflow, mlflow-skinny, mlflow-tracing, SQLAlchemy, alembic, Mako, sqlparse, cachetools,
databricks-sdk, google-auth, cryptography, cffi, fastapi, starlette, pydantic, pydantic-core,
annotated-types, typing-inspection, importlib-metadata, opentelemetry-api, opentelemetry-sdk,
opentelemetry-proto, opentelemetry-semantic-conventions. Imports happen where they are needed,
and a missing top-level one is named before any GPU time is spent. The script puts the
repository on ``sys.path`` itself (no install needed).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib.util
import json
import platform
import re
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the device machine runs a plain checkout, not an installed package

EXPERIMENT = "bench-gpu-image"

# Defaults per mode; every one is a flag of the same name (dashes for underscores).
GPU = dict(
    device="cuda", amp="auto", threads=0,  # threads: torch's CPU threads (0: torch's default)
    # part 1: the CIFAR config's student / teacher network and CTM objective
    batch=128, num_timesteps=18, warmup=3, steps=10,
    model_channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn=(16,),
    # part 2: statistics measured at stats_points (and half as many) x stats_samples
    stats_points=12, stats_samples=512, stats_batch=256, full_points=120, full_samples=4096,
    # part 3: Fashion-MNIST teacher, distillation, fd_classifier
    teacher_steps=1500, teacher_batch=128, teacher_channels=32, teacher_mult=(1, 2, 2), teacher_blocks=1,
    distill_steps=250, distill_batch=128, eval_every=50,
    distill_ema=0.99,  # the EMA is the CTM target and the evaluated net: 0.999 barely moves in 250 steps
    fid_samples=5000, fid_reference=10000, classifier_steps=2000,
    fashion_stats_batch=2048, fashion_stats_points=120, fashion_stats_samples=4096,  # the paper's setting
    # part 4 (last, so a run cut short keeps parts 1-3): part 1's CTM step under torch.compile
    compile=1, compile_backend="inductor",
)
SMOKE = dict(
    GPU, device="cpu", threads=1,  # one thread: OpenMP spinning on a shared 2-core CPU cost 10x here
    # (1, 1), not (1,): the bottleneck always has attention, over 1024 tokens at 32x32 (3x slower)
    batch=4, warmup=1, steps=2, model_channels=8, channel_mult=(1, 1), num_blocks=1, attn=(),
    stats_points=4, stats_samples=16, stats_batch=8,
    teacher_steps=20, teacher_batch=8, teacher_channels=8, teacher_mult=(1, 1), teacher_blocks=1,
    distill_steps=4, distill_batch=4, eval_every=2,
    fid_samples=16, fid_reference=64, classifier_steps=5,
    fashion_stats_batch=8, fashion_stats_points=6, fashion_stats_samples=16,
    compile_backend="aot_eager",  # traces the same code; inductor's C++ build takes minutes on a CPU
)
SMOKE_FASHION_BINDINGS = [  # tiny evaluator sizes (as tests/image_fixtures.py)
    "image_evaluator.num_align = 4", "image_evaluator.grid_images = 4", "image_evaluator.batch_size = 4",
    "fid.batch_size = 8", "teacher_training.eval_batch = 8", "teacher_training.lr_warmup = 5",
]

START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {msg}", flush=True)


def ints(text: str) -> tuple:
    """'2,2,2' -> (2, 2, 2); '' -> ()."""
    return tuple(int(v) for v in text.replace(" ", "").split(",") if v)


def gin_tuple(values) -> str:
    values = tuple(values)
    return "(" + ", ".join(map(str, values)) + ("," if len(values) == 1 else "") + ")"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def config_steps() -> int:
    """STEPS of the image configs (gin/base/image_training.gin), read as text: no gin needed."""
    text = (REPO / "gin/base/image_training.gin").read_text()
    return int(re.search(r"^STEPS\s*=\s*(\d+)", text, re.M).group(1))


def check_modules(parts: set) -> None:
    """Name every missing third-party module before any device time is spent."""
    need = {"gin": "gin-config", "einops": "einops"}
    if "fashion" in parts:
        need.update(mlflow="mlflow", cleanfid="clean-fid", matplotlib="matplotlib", torchvision="torchvision",
                    safetensors="safetensors", PIL="pillow")
    missing = [pip for mod, pip in need.items() if importlib.util.find_spec(mod) is None]
    if missing:
        sys.exit(f"gpu_image.py: missing Python packages {missing} (carry them as wheels; see the docstring). "
                 f"`--parts network` needs only gin-config and einops.")


class RandomImages:
    """The network teacher's data stand-in: uniform pixels in [-1, 1] (only sample_x0 is used)."""

    name = "random-images"

    def __init__(self, shape):
        self.shape = tuple(shape)

    def sample_x0(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(n, *self.shape, generator=generator) * 2 - 1


# -- parts 1 and 2: the CIFAR-size network teacher -----------------------------------------------
def ctm_step_timing(a, teacher, precond, device, compile: bool = False) -> dict:
    """Experiment._train's loop body at the CIFAR sizes: warm-up, then timed steps. With
    ``compile``, student, EMA target and teacher network go through torch.compile as
    ``experiment.compile = True`` does (the teacher's network stays compiled afterwards)."""
    from precondlab.experiment import compile_in_place
    from precondlab.students.songunet import SongUNetStudent, init_from_teacher
    from precondlab.training.losses import pseudo_huber
    from precondlab.training.objectives import CTMObjective

    objective = CTMObjective(num_timesteps=a.num_timesteps, max_jump=a.num_timesteps - 1, teacher_solver="heun",
                             distance=pseudo_huber, dsm_weight=1.0, dsm_adaptive=True)
    precond.tabulate(objective.grid(teacher.schedule, "cpu", torch.float64))
    torch.manual_seed(0)
    student = SongUNetStudent(dim=teacher.dim, img_resolution=32, in_channels=3, model_channels=a.model_channels,
                              channel_mult=a.channel_mult, num_blocks=a.num_blocks, attn_resolutions=a.attn,
                              dropout=0.0)
    copied, _ = init_from_teacher(student, teacher.net)
    student = student.to(device)
    if device.type == "cuda":
        student = student.to(memory_format=torch.channels_last)
    target = copy.deepcopy(student).requires_grad_(False)
    if compile:
        compile_in_place((student, target, teacher.net), a.compile_backend)
    optimizer = torch.optim.Adam(student.parameters(), lr=4e-4)
    use_bf16 = a.amp == "bf16" or (a.amp == "auto" and device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    data_gen = torch.Generator().manual_seed(1)
    bad = None

    def step():
        nonlocal bad
        x0 = teacher.sample_x0(a.batch, data_gen).to(torch.float32)
        if device.type == "cuda":  # as Experiment._train: a queued copy from pinned memory
            x0 = x0.pin_memory().to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, _ = objective(student, target, precond, teacher, x0, gen)
        bad = ~torch.isfinite(loss.detach()) if bad is None else bad | ~torch.isfinite(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            for p_t, p in zip(target.parameters(), student.parameters()):
                p_t.lerp_(p, 1 - 0.999)

    t0 = time.perf_counter()
    step()  # with compile: tracing and code generation happen here
    sync(device)
    first_step = time.perf_counter() - t0
    for _ in range(a.warmup - 1):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - t0) / a.steps
    out = {"ms_per_step": 1000 * seconds, "images_per_s": a.batch / seconds, "batch": a.batch,
           "timed_steps": a.steps, "warmup_steps": a.warmup, "first_step_seconds": first_step,
           "compiled": compile, "bf16_autocast": use_bf16,
           "loss_finite": not bool(bad), "student_parameters": sum(p.numel() for p in student.parameters()),
           "tensors_copied_from_teacher": len(copied)}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return out


def bench_network(a, device, report, save):
    """Parts 1 and 2; returns the teacher and the fitted Analytic preconditioner for part 4."""
    from precondlab.nets.songunet import SongUNet
    from precondlab.odes.analytic import AnalyticODE
    from precondlab.preconditioners.analytic import AnalyticPrecond
    from precondlab.preconditioners.ctm import CTMPrecond
    from precondlab.teachers.edm_pkl import EDMNetTeacher

    torch.manual_seed(0)
    net = SongUNet(img_resolution=32, in_channels=3, out_channels=3, model_channels=a.model_channels,
                   channel_mult=list(a.channel_mult), num_blocks=a.num_blocks, attn_resolutions=list(a.attn),
                   dropout=0.0)
    teacher = EDMNetTeacher(net, precond="edm", dataset=RandomImages((3, 32, 32)), device=device)
    arch = (f"SongUNet DDPM++ 32x32x3, model_channels {a.model_channels}, channel_mult {a.channel_mult}, "
            f"num_blocks {a.num_blocks}, attn {a.attn}; {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M "
            f"parameters, randomly initialised, EDM preconditioning")
    log(f"network teacher: {arch}")

    # Part 2 first: its 12-point fit is also the Analytic preconditioner part 1 trains with.
    def fit(points: int, samples: int):
        ode = AnalyticODE(num_points=points, num_samples=samples, trace="hutchinson", batch_size=a.stats_batch,
                          device=str(device))
        precond = AnalyticPrecond(ode=ode, form="backward")
        sync(device)
        t0 = time.perf_counter()
        precond.fit(teacher)
        sync(device)
        return time.perf_counter() - t0, precond

    P, S = a.stats_points, a.stats_samples
    P_half = max(2, P // 2)
    t_warm, _ = fit(2, a.stats_batch)  # cuDNN, the allocator and torch.func warm up here
    t_half, _ = fit(P_half, S)
    t_P, analytic = fit(P, S)
    per_point = (t_P - t_half) / (P - P_half)
    how = f"linear in points (slope between {P_half} and {P} points), x {a.full_samples}/{S} in samples"
    if per_point <= 0:  # timing noise (tiny smoke sizes): fall back to proportional scaling
        per_point, how = t_P / P, f"proportional to points ({a.full_points}/{P}), x {a.full_samples}/{S} in samples"
    t_full = (t_P + (a.full_points - P) * per_point) * a.full_samples / S
    stats = {"measured": {f"{P_half}x{S}": t_half, f"{P}x{S}": t_P, "warmup_2x" + str(a.stats_batch): t_warm},
             "batch": a.stats_batch, "trace": "hutchinson",
             "denoiser_evals_measured": analytic.coeffs.info["denoiser_evals"],
             "full_setting": f"{a.full_points} points x {a.full_samples} samples",
             "extrapolated_seconds": t_full, "extrapolation": how}
    log(f"statistics: {P_half}x{S} in {t_half:.2f} s, {P}x{S} in {t_P:.2f} s -> "
        f"{a.full_points}x{a.full_samples} ~ {t_full:.1f} s (extrapolated)")

    steps = {}
    for name, precond in (("ctm", CTMPrecond()), ("analytic", analytic)):
        steps[name] = ctm_step_timing(a, teacher, precond, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the student, its EMA and Adam are gone with the call
        log(f"CTM step, {name} preconditioner: {steps[name]['ms_per_step']:.1f} ms/step, "
            f"{steps[name]['images_per_s']:.1f} images/s")
    report["part1_training_throughput"] = {"network": arch, "objective": f"CTM, N={a.num_timesteps}, "
                                           f"K={a.num_timesteps - 1}, Heun teacher, pseudo-Huber, DSM",
                                           **steps}
    total_steps = config_steps()
    train_s = total_steps * steps["analytic"]["ms_per_step"] / 1000
    stats["config_steps"] = total_steps
    stats["config_training_seconds"] = train_s
    stats["share_of_run"] = t_full / (t_full + train_s)
    report["part2_analytic_statistics"] = stats
    save()

    print(f"\n== 1. CTM training throughput ({arch})")
    print(f"   batch {a.batch}, N={a.num_timesteps}, bf16 autocast {steps['ctm']['bf16_autocast']}, "
          f"{a.warmup} warm-up + {a.steps} timed steps")
    for name in ("ctm", "analytic"):
        r = steps[name]
        mem = f", peak {r['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in r else ""
        print(f"   {name:<9} {r['images_per_s']:9.1f} images/s  {r['ms_per_step']:9.1f} ms/step{mem}")
    print(f"\n== 2. Analytic statistics of this network teacher ({stats['full_setting']}, Hutchinson, "
          f"batch {a.stats_batch})")
    print(f"   measured: {P_half} x {S} in {t_half:.2f} s, {P} x {S} in {t_P:.2f} s")
    print(f"   EXTRAPOLATED ({how}): {t_full:.1f} s = {t_full / 60:.1f} min")
    print(f"   share of a full configured run: {t_full:.0f} s / ({t_full:.0f} s + {total_steps} steps x "
          f"{steps['analytic']['ms_per_step']:.0f} ms = {train_s / 3600:.2f} h) = {100 * stats['share_of_run']:.2f}%")
    return teacher, analytic


def bench_compile(a, teacher, analytic, device, report, save) -> None:
    """Part 4: part 1's Analytic CTM step with student, EMA target and teacher compiled."""
    eager = report["part1_training_throughput"]["analytic"]
    log(f"torch.compile ({a.compile_backend}) of student, EMA target and teacher network ...")
    compiled = ctm_step_timing(a, teacher, analytic, device, compile=True)
    speedup = eager["ms_per_step"] / compiled["ms_per_step"]
    breakeven = (compiled["first_step_seconds"] - eager["first_step_seconds"]) / max(
        1e-9, (eager["ms_per_step"] - compiled["ms_per_step"]) / 1000)
    report["part4_torch_compile"] = {"backend": a.compile_backend, "eager": eager, "compiled": compiled,
                                     "speedup": speedup, "breakeven_steps": breakeven if speedup > 1 else None}
    save()
    print(f"\n== 4. torch.compile (backend {a.compile_backend}) of the Analytic CTM step of part 1")
    for name, r in (("eager", eager), ("compiled", compiled)):
        print(f"   {name:<9} {r['images_per_s']:9.1f} images/s  {r['ms_per_step']:9.1f} ms/step, "
              f"first step {r['first_step_seconds']:.1f} s")
    print(f"   speed-up {speedup:.2f}x" + (f"; compile time repaid after {breakeven:.0f} steps" if speedup > 1
                                         else "; does not pay at these sizes"))


# -- part 3: Fashion-MNIST ---------------------------------------------------------------------
def write_fashion_fixture(folder: Path, n: int = 64, seed: int = 1) -> Path:
    """Tiny train split in the true idx format (gzipped): random pixels and labels."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8).numpy()
    labels = torch.randint(0, 10, (n,), generator=gen, dtype=torch.uint8).numpy()
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("train-images-idx3-ubyte.gz", images), ("train-labels-idx1-ubyte.gz", labels)):
        header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        with gzip.open(folder / name, "wb") as f:
            f.write(header + array.tobytes())
    return folder


def bench_fashion(a, tmp: Path, report, save) -> None:
    from precondlab import config, experiment
    from precondlab.training.teacher import train_teacher

    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    data = [f"dataset.fashion_mnist.data_dir = {str(a.data_dir)!r}"] if a.data_dir else []
    smoke = SMOKE_FASHION_BINDINGS if a.smoke else []

    log(f"Fashion-MNIST teacher: {a.teacher_steps} steps, batch {a.teacher_batch}, {a.teacher_channels} channels, "
        f"channel_mult {a.teacher_mult}, {a.teacher_blocks} block(s), on {a.device}")
    teacher_bindings = [f"STEPS = {a.teacher_steps}", f"BATCH = {a.teacher_batch}",
                        f"MODEL_CHANNELS = {a.teacher_channels}",
                        f"teacher_net.channel_mult = {gin_tuple(a.teacher_mult)}",
                        f"teacher_net.num_blocks = {a.teacher_blocks}", f"teacher_training.device = {a.device!r}",
                        f"teacher_training.checkpoint_every = {a.teacher_steps}",
                        f"teacher_training.log_every = {max(1, a.teacher_steps // 5)}"]
    cfg = config.load([str(REPO / "gin/teachers/fashion_teacher.gin")],
                      teacher_bindings + data + [b for b in smoke if b.startswith("teacher_training.")])
    trained = train_teacher(cfg, output=str(tmp / "fashion-teacher.pt"), tracking_uri=uri,
                            experiment_name=EXPERIMENT, progress=True, stream=sys.stdout)
    teacher_summary = trained.summary()
    part3 = report["part3_fashion"] = {"metric": "fd_classifier, NOT Inception FID", "teacher": teacher_summary,
                                       "tracking_uri": uri}
    save()
    log(f"teacher trained in {trained.seconds:.1f} s ({1000 * trained.seconds / trained.steps:.1f} ms/step), "
        f"EDM loss {teacher_summary['loss_first']:.3f} -> {teacher_summary['loss_last']:.3f}")

    common = [f"TEACHER_CKPT = {trained.checkpoint!r}", f"DEVICE = {a.device!r}", f"STEPS = {a.distill_steps}",
              f"BATCH = {a.distill_batch}", f"NUM_TIMESTEPS = {a.num_timesteps}",
              # the student has the teacher's architecture: CTM initialises it from the teacher
              f"MODEL_CHANNELS = {a.teacher_channels}", f"CHANNEL_MULT = {gin_tuple(a.teacher_mult)}",
              f"NUM_BLOCKS = {a.teacher_blocks}", "ATTN_RESOLUTIONS = ()",
              f"experiment.eval_every = {a.eval_every}", f"experiment.checkpoint_every = {a.distill_steps}",
              f"experiment.ema_decay = {a.distill_ema}",
              "fid.feature_extractor = 'classifier'", f"fid.num_samples = {a.fid_samples}",
              f"fid.classifier_steps = {a.classifier_steps}", f"fid.device = {a.device!r}",
              f"fid.cache_dir = {str(tmp / 'fid')!r}",  # shared: the classifier is trained once
              *([f"fid.reference_num_images = {a.fid_reference}"] if a.fid_reference else []),
              *data, *[b for b in smoke if not b.startswith("teacher_training.")]]
    analytic = [f"ode.analytic.batch_size = {a.fashion_stats_batch}",
                f"ode.analytic.cache_dir = {str(tmp / 'statistics')!r}",
                *([f"ode.analytic.num_points = {a.fashion_stats_points}"] if a.fashion_stats_points else []),
                *([f"ode.analytic.num_samples = {a.fashion_stats_samples}"] if a.fashion_stats_samples else [])]
    runs = {}
    for name, gin_file, extra in (("ctm", "gin/fashion_ctm.gin", []),
                                  ("analytic", "gin/fashion_analytic.gin", analytic)):
        cfg = config.load([str(REPO / gin_file)], common + extra + [f"experiment.name = 'bench-fashion-{name}'"])
        log(f"distilling with {gin_file}: {a.distill_steps} steps, batch {a.distill_batch}")
        result = experiment.run(cfg, tracking_uri=uri, experiment_name=EXPERIMENT, progress=False)
        runs[name] = part3[name] = {
            "gin": gin_file, "seconds": result.seconds, "stats_seconds": result.stats_seconds,
            "train_seconds": result.final.get("summary/train_seconds"), "run_id": result.run_id,
            "history": [(step, dict(metrics)) for step, metrics in result.history]}
        part3.update(bindings=common, analytic_bindings=analytic)
        save()
        log(f"{name}: {result.seconds:.1f} s (statistics {result.stats_seconds:.1f} s, training incl. "
            f"evaluations {result.final.get('summary/train_seconds', float('nan')):.1f} s)")

    print(f"\n== 3. CTM vs Analytic-Precond (backward) on Fashion-MNIST 32x32"
          f"{' (SMOKE: random-pixel fixture, numbers meaningless)' if a.smoke else ''}")
    print(f"   teacher: {teacher_summary['parameters'] / 1e6:.2f} M parameters, {a.teacher_steps} steps, "
          f"{trained.seconds:.0f} s; distillation: {a.distill_steps} steps, batch {a.distill_batch}, "
          f"N={a.num_timesteps}")
    print(f"   metric: fd_classifier, NOT Inception FID (Frechet distance in an in-project classifier's "
          f"features, {a.fid_samples} samples; lower is better)")
    print(f"   {'step':>6} | {'CTM nfe1':>10} {'CTM nfe2':>10} | {'Analytic nfe1':>13} {'Analytic nfe2':>13}")
    by_step = {name: dict(runs[name]["history"]) for name in runs}
    for step in sorted(set(by_step["ctm"]) | set(by_step["analytic"])):
        cells = []
        for name, width in (("ctm", 10), ("analytic", 13)):
            m = by_step[name].get(step, {})
            cells.append(" ".join(f"{m.get(f'fd_classifier/nfe{k}', float('nan')):>{width}.4g}" for k in (1, 2)))
        print(f"   {step:>6} | {cells[0]} | {cells[1]}")
    for name in ("ctm", "analytic"):
        r = runs[name]
        print(f"   {name:<9} run {r['seconds']:.0f} s, statistics {r['stats_seconds']:.1f} s")


# -- main ----------------------------------------------------------------------------------------
def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (changes the defaults only)")
    ap.add_argument("--parts", choices=("all", "network", "fashion"), default="all",
                    help="network: parts 1-2 (no dataset, no MLflow); fashion: part 3")
    ap.add_argument("--out", help="also write the results as JSON here (after every part)")
    ap.add_argument("--data-dir", help="folder with the Fashion-MNIST idx files (default: Debian's "
                                       "/usr/share/datasets/fashion-mnist/; --smoke writes a fixture)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary folder (MLflow store, teacher)")
    def show(v):
        return "the gin file's" if v is None else (",".join(map(str, v)) or "''") if isinstance(v, tuple) else str(v)

    for key, value in GPU.items():
        kind = ints if isinstance(value, tuple) else type(value) if isinstance(value, (str, float)) else int
        ap.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                        help=f"default {show(value)} (smoke: {show(SMOKE[key])})")
    a = ap.parse_args()
    for key, value in (SMOKE if a.smoke else GPU).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    return a


def main() -> None:
    a = parse_args()
    parts = {"network", "fashion"} if a.parts == "all" else {a.parts}
    check_modules(parts)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_image.py: no CUDA device; use --smoke (CPU, tiny shapes) or --device cpu")
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU ({platform.processor() or platform.machine()})")
    report = {"device": where, "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": platform.python_version(),
              "mode": "smoke" if a.smoke else "full", "sizes": {k: getattr(a, k) for k in GPU}, "parts": sorted(parts)}

    def save():
        report["wall_seconds"] = time.perf_counter() - START
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(report, indent=1, default=str))

    log(f"{'SMOKE (tiny shapes) ' if a.smoke else ''}on {where}, torch {torch.__version__}, parts {sorted(parts)}")
    tmp = Path(tempfile.mkdtemp(prefix="precondlab-gpu-image-"))
    try:
        if "fashion" in parts:  # fail now, not after parts 1-2, if the data is missing
            if a.smoke and not a.data_dir:
                a.data_dir = str(write_fashion_fixture(tmp / "fashion-mnist"))
            from precondlab.data import DatasetError, FashionMNIST
            try:
                FashionMNIST(data_dir=a.data_dir, limit=1)
            except DatasetError as exc:
                sys.exit(f"gpu_image.py: {exc} (or pass --data-dir; --parts network needs no data)")
        if "network" in parts:
            teacher, analytic = bench_network(a, device, report, save)
        if "fashion" in parts:
            bench_fashion(a, tmp, report, save)
        if "network" in parts and a.compile:
            bench_compile(a, teacher, analytic, device, report, save)
    finally:
        save()
        if a.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal wall time {time.perf_counter() - START:.1f} s on {where}"
          + (f"; JSON in {a.out}" if a.out else ""))


if __name__ == "__main__":
    main()
