"""Bad values are caught when the experiment is built, before statistics, data or an MLflow run:
one message naming the setting and the value."""

import subprocess
import sys
import time

import pytest

from conftest import GIN
from precondlab import config, experiment
from precondlab.config import ConfigError

BAD = [
    ("STEPS = -5", "experiment.steps = -5: must be a positive integer"),
    ("STEPS = 'many'", "experiment.steps = 'many': must be a positive integer"),
    ("experiment.batch_size = 0", "experiment.batch_size = 0: must be a positive integer"),
    ("experiment.lr = -0.001", "experiment.lr = -0.001: must be a positive number"),
    ("experiment.ema_decay = 1.0", "experiment.ema_decay = 1.0: must be a number in [0.0, 1.0)"),
    ("experiment.amp = 'fp8'", "experiment.amp = 'fp8': must be one of 'auto', 'bf16', 'off'"),
    ("experiment.device = 'gpu0'", "experiment.device = 'gpu0': must be a torch device"),
    ("ode.analytic.num_samples = 0", "ode.analytic.num_samples = 0: must be a positive integer"),
    ("ode.analytic.num_points = 1", "ode.analytic.num_points = 1: must be at least 2"),
    ("schedule.edm.sigma_min = 80.0", "sigma_min must be below sigma_max"),
    ("schedule.edm.sigma_data = 0", "schedule.edm.sigma_data = 0: must be a positive number"),
    ("evaluator.nfes = (1, 0)", "evaluator.nfes = (1, 0): must be a non-empty list of positive integers"),
    ("evaluator.nfes = ()", "evaluator.nfes = (): must be a non-empty list of positive integers"),
    ("evaluator.nfe_times = {2: (80.0, 0.002)}", "nfe_times[2] must list 3 times"),
    ("objective.ctm.num_timesteps = 1", "objective.ctm.num_timesteps = 1: a Karras grid needs at least 2"),
    ("objective.ctm.max_jump = 0", "objective.ctm.max_jump = 0: must be a positive integer"),
]


@pytest.mark.parametrize("binding,message", BAD, ids=[b for b, _ in BAD])
def test_a_bad_value_names_the_setting_when_the_experiment_is_built(binding, message):
    with pytest.raises(ConfigError) as err:
        experiment.build(config.load([str(GIN / "toy_analytic.gin")], [binding]))
    text = str(err.value)
    assert message in text and "toy_analytic.gin" in text
    assert "In call to configurable" not in text and len(text.splitlines()) <= 3


def test_through_the_cli_exit_2_one_message_no_mlflow_run(tmp_path):
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "precondlab", "run", str(GIN / "toy_analytic.gin"),
                          "--gin_bindings", "STEPS = -5"], capture_output=True, text=True, cwd=tmp_path)
    assert time.monotonic() - start < 30
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "experiment.steps = -5: must be a positive integer" in lines[0]
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "mlartifacts").exists()
