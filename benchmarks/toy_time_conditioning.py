"""The toy's NFE-k errors and the student's time conditioning (issue 9), re-measurable.

Trains the default toy configs (CTM, Analytic backward, Analytic forward; 2000 steps) for each
seed and prints:

1. traj_mse at NFE 1 and 2 at steps 500, 750, 1000, 1500, 2000, mean over seeds, with the
   sampling times each NFE used;
2. for the first seed of each method, the 2-step error sigma_max -> tau -> sigma_min against the
   intermediate time tau over training (training-grid times marked *), and at the end the ratio
   of the error at t = 1 and at 2.515 to the grid times beside them.

``--old-embedding`` trains with the MLP's former Fourier frequencies (1..32 cycles per unit of
c_noise) to reproduce the defect; ``--steps``/``--seeds``/``--methods`` shrink the run.

    .venv/bin/python benchmarks/toy_time_conditioning.py [--seeds 0 1 2] [--old-embedding] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import gin
import torch

from precondlab import config, experiment
from precondlab.evaluation.analytic import Evaluator

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "ctm": ("gin/toy_ctm.gin", []),
    "analytic:backward": ("gin/toy_analytic.gin", ["preconditioner.analytic.form = 'backward'"]),
    "analytic:forward": ("gin/toy_analytic.gin", ["preconditioner.analytic.form = 'forward'"]),
}
OLD_EMBEDDING = ["student.mlp.max_freq = 32.0", "student.mlp.min_freq = 1.0"]
PROBE_TIMES = [0.2964, 0.5853, 0.8, 1.0, 1.0882, 1.5, 1.9233, 2.515, 2.9, 3.2568, 4.2, 5.3152]
TABLE_STEPS = [500, 750, 1000, 1500, 2000]


@gin.configurable("evaluator_with_probe")
class ProbingEvaluator(Evaluator):
    """The run's evaluator plus the 2-step error through each of PROBE_TIMES at every evaluation."""

    def __call__(self, precond, net, device="cpu", dtype=torch.float32):
        out = super().__call__(precond, net, device, dtype)
        out.update({f"probe/{tau}": err for tau, err in self.two_step_errors(precond, net, PROBE_TIMES, device).items()})
        return out


def train(method: str, seed: int, steps: int, extra: list[str], probe: bool):
    gin_file, bindings = METHODS[method]
    bindings = bindings + [f"SEED = {seed}", f"STEPS = {steps}"] + extra
    if probe:
        bindings += ["experiment.evaluator = @evaluator_with_probe()", "evaluator_with_probe.num_samples = 2048"]
    cfg = config.load([str(REPO / gin_file)], bindings)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = experiment.run(cfg, tracking_uri=f"sqlite:///{tmp}/mlruns.db", progress=False)
        seconds = time.perf_counter() - start
    return {"history": result.history, "times": {k: v for k, v in result.info.items() if "times" in k},
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--old-embedding", action="store_true", help="the MLP's former frequencies (1..32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the raw histories here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extra = OLD_EMBEDDING if args.old_embedding else []
    runs = {}
    for method in args.methods:
        for i, seed in enumerate(args.seeds):
            runs[(method, seed)] = train(method, seed, args.steps, extra, probe=(i == 0))
            print(f"# trained {method} seed {seed} in {runs[(method, seed)]['seconds']:.0f} s", flush=True)

    first = next(iter(runs.values()))
    times = ", ".join(f"{k.split('.')[-1]}: {v}" for k, v in first["times"].items())
    embedding = "old (1..32 cycles per unit c_noise)" if args.old_embedding else "default"
    print(f"\nembedding: {embedding}; sampling times: {times}")
    steps = [s for s in TABLE_STEPS if s <= args.steps]
    print(f"\ntraj_mse, mean over seeds {args.seeds}")
    print("| method, NFE | " + " | ".join(str(s) for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for method in args.methods:
        for nfe in (1, 2):
            cells = []
            for step in steps:
                values = [dict(run["history"])[step][f"traj_mse/nfe{nfe}"] for (m, _), run in runs.items()
                          if m == method and step in dict(run["history"])]
                cells.append(f"{statistics.mean(values):.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""))
            print(f"| {method}, NFE {nfe} | " + " | ".join(cells) + " |")

    for method in args.methods:
        run = runs[(method, args.seeds[0])]
        print(f"\n2-step error through tau over training ({method}, seed {args.seeds[0]}; * = training-grid time)")
        grid = {0.2964, 0.5853, 1.0882, 1.9233, 3.2568, 5.3152}
        print("| step | " + " | ".join(f"{t}{'*' if t in grid else ''}" for t in PROBE_TIMES) + " |")
        print("|---|" + "---|" * len(PROBE_TIMES))
        for step, metrics in run["history"]:
            if step in steps or step == 0:
                print(f"| {step} | " + " | ".join(f"{metrics[f'probe/{t}']:.4f}" for t in PROBE_TIMES) + " |")
        final = run["history"][-1][1]
        p = lambda t: final[f"probe/{t}"]  # noqa: E731
        print(f"final: tau = 1: {p(1.0):.4f} = {p(1.0) / p(1.0882):.2f}x tau = 1.0882, {p(1.0) / p(0.5853):.2f}x tau = 0.5853; "
              f"tau = 2.515: {p(2.515):.4f} = {p(2.515) / p(1.9233):.2f}x tau = 1.9233, {p(2.515) / p(3.2568):.2f}x tau = 3.2568")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{m}@{s}": r for (m, s), r in runs.items()}))


if __name__ == "__main__":
    main()
