"""Per-trial overhead of `precondlab sweep` against the same run in-process, and the toy sweep's wall time.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 3] [--steps 100] [--skip-toy]

1. direct: ``experiment.run`` in this process (the `precondlab run` path), torch on 1 thread,
   after one warm-up run (imports, first-call costs) that is not counted;
2. sweep: the same config as a FIFO sweep of ``--trials`` trials (SEED = 0, 1, ...), one at a
   time on a local Ray with 1 CPU. Per-trial overhead = (sweep wall - Ray start/stop) / trials
   - the direct run's wall; also shown: the part of it spent inside experiment.run
   (summary/seconds of the child runs against the direct run's);
3. the toy sweep ``sweeps/toy_precond.toml`` as is (6 trials, ASHA, 2 at a time).

Everything is logged to a temporary SQLite store. Figures depend on the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["experiment.eval_every = 50", "evaluator.num_samples = 512", "evaluator.num_jump_pairs = 128",
        "evaluator.reference_steps = 64", "experiment.gap_pairs = ()"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--skip-toy", action="store_true", help="do not run sweeps/toy_precond.toml")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    bindings = [f"STEPS = {args.steps}"] + TINY

    import torch
    from mlflow.tracking import MlflowClient

    from precondlab import config, experiment, tracking
    from precondlab.tuning import runner as sweep
    tracking.connect(uri, "bench")
    torch.set_num_threads(1)  # as a trial with cpu = 1 runs

    # 1. direct
    direct, inner = [], []
    for i in range(args.trials + 1):
        cfg = config.load([str(REPO / "gin" / "toy_ctm.gin")], bindings + [f"SEED = {i}"])
        t0 = time.perf_counter()
        res = experiment.run(cfg, tracking_uri=uri, experiment_name="bench", progress=False)
        if i:  # the first run warms up
            direct.append(time.perf_counter() - t0)
            inner.append(res.final["summary/seconds"])
    d_wall, d_inner = statistics.median(direct), statistics.median(inner)

    # Ray start + stop alone
    import ray
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.shutdown()
    ray_start = time.perf_counter() - t0

    # 2. the same runs as a sweep
    path = tmp / "overhead.toml"
    seeds = ", ".join(str(i) for i in range(1, args.trials + 1))
    path.write_text(f'name = "overhead"\nbase = "{REPO / "gin" / "toy_ctm.gin"}"\nexperiment = "bench"\n'
                    f'bindings = [{", ".join(repr(b).replace(chr(39), chr(34)) for b in bindings)}]\n'
                    f'max_concurrent = 1\n[scheduler]\ntype = "fifo"\n[space]\nSEED = {{ grid = [{seeds}] }}\n')
    t0 = time.perf_counter()
    result = sweep.run(path, tracking_uri=uri, output=tmp / "overhead", num_cpus=1, verbose=False)
    s_wall = time.perf_counter() - t0
    client = MlflowClient(uri)
    kids = [client.get_run(r.run_id) for r in result.rows if r.run_id]
    s_inner = statistics.median(k.data.metrics["summary/seconds"] for k in kids)
    s_run = statistics.median((k.info.end_time - k.info.start_time) / 1000 for k in kids)
    per_trial = (s_wall - ray_start) / args.trials
    bad = [r.status for r in result.rows if r.status != "COMPLETED"]

    print(f"sweep overhead ({args.trials} trials of {args.steps} steps, toy CTM, 1 CPU, torch 1 thread)")
    print(f"  direct experiment.run (median)          {d_wall:7.2f} s   (inside experiment.run: {d_inner:.2f} s)")
    print(f"  Ray local start + shutdown               {ray_start:7.2f} s   (once per sweep)")
    print(f"  sweep wall                               {s_wall:7.2f} s   (load/parse, MLflow parent, Ray, Tune, summary)")
    print(f"  sweep per trial, Ray start excluded      {per_trial:7.2f} s")
    print(f"  -> overhead per trial                    {per_trial - d_wall:7.2f} s   "
          f"({(per_trial / d_wall - 1) * 100:.0f}% of a direct run)")
    print(f"  trial's MLflow run (start to end)        {s_run:7.2f} s   (inside experiment.run: {s_inner:.2f} s)")
    print(f"  -> outside the MLflow run, per trial     {per_trial - s_run:7.2f} s   "
          f"(worker process start, imports, Tune scheduling)")
    if bad:
        print(f"  WARNING: trials not completed: {bad}")

    # 3. the toy sweep as shipped
    if not args.skip_toy:
        t0 = time.perf_counter()
        toy = sweep.run(REPO / "sweeps" / "toy_precond.toml", tracking_uri=uri, output=tmp / "toy",
                        verbose=False)
        wall = time.perf_counter() - t0
        counts = {s: sum(r.status == s for r in toy.rows) for s in ("COMPLETED", "STOPPED", "ERROR")}
        print(f"\ntoy sweep sweeps/toy_precond.toml: {wall:.1f} s wall for {len(toy.rows)} trials "
              f"({counts['COMPLETED']} completed, {counts['STOPPED']} stopped by ASHA, {counts['ERROR']} errors), "
              f"{os.cpu_count()} CPUs; best traj_mse/nfe2 = {toy.best.metric:.4g} ({', '.join(f'{k}={v}' for k, v in toy.best.params.items())})")
    print(f"\n(store: {uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
