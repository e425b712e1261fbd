"""Wall time of the main job, `precondlab run gin/toy_analytic.gin`, as a user runs it.

Target (issue 2): <= 90 s on 2 CPU cores, the statistics estimation included. Prints the wall
time of the whole command (imports and MLflow included) and the run's own breakdown.

    .venv/bin/python benchmarks/toy_run_time.py [--config gin/toy_analytic.gin] [--repeat 1]
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
ap.add_argument("--binding", action="append", default=[], help="a gin binding, repeatable")
args = ap.parse_args()

exe = Path(sys.executable).with_name("precondlab")
for i in range(args.repeat):
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = subprocess.run([str(exe), "run", str(REPO / args.config), "--no-progress", "--json",
                              *[arg for b in args.binding for arg in ("--gin_bindings", b)]],
                             cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode:
            sys.exit(out.stderr)
        final = json.loads(out.stdout.strip().splitlines()[-1])["final"]
        print(f"{args.config}{''.join(f' [{b}]' for b in args.binding)}: wall {wall:.1f} s on {os.cpu_count()} cores | run {final['summary/seconds']:.1f} s, "
              f"training {final['summary/train_seconds']:.1f} s, statistics share {100 * final['summary/stats_share']:.1f}% | "
              f"traj_mse/nfe1 {final['traj_mse/nfe1']:.4g}, traj_mse/nfe2 {final['traj_mse/nfe2']:.4g}")
