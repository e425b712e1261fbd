"""Bindings that shrink any toy config to a few seconds (tests only)."""

TINY = [
    "STEPS = 20",
    "experiment.batch_size = 64",
    "experiment.eval_every = 10",
    "experiment.checkpoint_every = 10",
    "experiment.gap_pairs = ((10.0, 1.0),)",
    "student.mlp.hidden = 32",
    "student.mlp.depth = 2",
    "evaluator.num_samples = 128",
    "evaluator.num_jump_pairs = 32",
    "evaluator.reference_steps = 32",
]
TINY_ANALYTIC = ["ode.analytic.num_points = 16", "ode.analytic.num_samples = 128"]
