"""Wall time of the main job, `precondlab run gin/toy_analytic.gin` (what `make run` runs), as a
user runs it, with each phase's seconds.

Target (issue 15): <= 45 s on 2 quiet CPU cores. Each repeat runs in a fresh folder (a new
MLflow store); ``--same-folder`` reuses one, so the second run finds the statistics cached.
Prints the wall time of the whole command (Python start-up and imports included), the phases
the run reports (time/<phase>), what is left (start-up: imports before the run begins, exit),
and the final metrics.

    .venv/bin/python benchmarks/toy_run_time.py [--config gin/toy_analytic.gin] [--repeat 2] [--same-folder]
    .venv/bin/python benchmarks/toy_run_time.py --binding "experiment.compile = True"   # does torch.compile pay?
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ap = argparse.ArgumentParser()
ap.add_argument("--config", default="gin/toy_analytic.gin")
ap.add_argument("--repeat", type=int, default=1)
ap.add_argument("--same-folder", action="store_true", help="all repeats in one folder (one MLflow store)")
ap.add_argument("--binding", action="append", default=[], help="a gin binding, repeatable")
args = ap.parse_args()

exe = Path(sys.executable).with_name("precondlab")
shared = tempfile.mkdtemp()
for i in range(args.repeat):
    folder = shared if args.same_folder else tempfile.mkdtemp()
    start = time.perf_counter()
    out = subprocess.run([str(exe), "run", str(REPO / args.config), "--json",
                          *[arg for b in args.binding for arg in ("--gin_bindings", b)]],
                         cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(out.stderr)
    final = json.loads(out.stdout)["final"]
    phases = {k[len("time/"):]: v for k, v in final.items() if k.startswith("time/")}
    cached = "statistics loaded from the cache" if "loaded from the cache" in out.stderr else "statistics estimated"
    print(f"{args.config}{''.join(f' [{b}]' for b in args.binding)} (run {i + 1}, {cached}): "
          f"wall {wall:.1f} s on {os.cpu_count()} cores")
    print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
          + f", start-up and exit {wall - sum(phases.values()):.1f} s")
    print(f"  traj_mse/nfe1 {final['traj_mse/nfe1']:.4g}, traj_mse/nfe2 {final['traj_mse/nfe2']:.4g}, "
          f"swd/nfe1 {final['swd/nfe1']:.4g}, swd/nfe2 {final['swd/nfe2']:.4g}")
