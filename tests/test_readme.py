"""Every command in the README is executed by a test, and none has drifted from the CLI.

The README's bash blocks are read as a user copies them. Each command matches exactly one row of
WHERE, which says where it runs: here (as written, in a folder holding the repository's gin/),
or the test that runs it at test size (that test must exist). Commands that need what this
machine lacks (GPUs, SLURM, the internet) are still parsed by the real parsers (precondlab's and
torchrun's), their files must exist, and the download URL must be the one precondlab's own
error message gives.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import wait_until_healthy
from precondlab.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^\s*```(\w*)\s*$")

# command pattern -> where it runs ("here": in this file, as written)
WHERE = [
    (r"make test", "CI: .ci/run runs it on a clean clone"),
    (r"make run", "tests/test_cli.py::test_every_gin_file_runs"),     # the Makefile's recipe, checked below
    (r"\.venv/bin/mlflow ui --backend-store-uri sqlite:///mlruns\.db", "here"),
    (r"precondlab run gin/toy_ctm\.gin --gin_bindings 'SEED = 1' --gin_bindings 'STEPS = 500'", "here"),
    (r"precondlab run gin/toy_ctm\.gin --resume latest", "here"),
    (r"precondlab run gin/toy_analytic\.gin --resume RUN_ID( --gin_bindings 'STEPS = \d+')?",
     "tests/test_distributed.py::test_a_two_rank_run_and_its_resume_on_one_and_four_ranks"),
    (r"precondlab list .*", "tests/test_registry.py::test_cli_list_prints_every_entry"),
    (r"precondlab gap gin/toy_analytic\.gin .*", "tests/test_gap.py::test_gap_cli_json"),
    (r"precondlab sweep sweeps/toy_precond\.toml",
     "tests/test_sweep.py::test_asha_sweep_logs_child_runs_stops_bad_arms_and_writes_best_gin"),
    (r"precondlab sweep sweeps/toy_precond\.toml --address HOST:6379",
     "tests/test_cluster.py::test_a_two_node_cluster_with_token_auth_runs_a_multi_worker_run_and_sweep"),
    (r"precondlab sweep sweeps/toy_precond\.toml --resume",
     "tests/test_sweep.py::test_resume_continues_an_interrupted_sweep_without_redoing_finished_trials"),
    (r"torchrun --standalone --nproc_per_node \d+ -m precondlab run .*",
     "tests/test_distributed.py::test_a_two_rank_run_and_its_resume_on_one_and_four_ranks"),
    (r"srun .* torchrun .* -m precondlab run .*", "not here (no SLURM): its torchrun runs in "
     "tests/test_distributed.py::test_a_two_rank_run_and_its_resume_on_one_and_four_ranks"),
    (r"precondlab run gin/\w+\.gin --workers \d+( --gpus-per-worker \d+)?( --address HEAD:6379)?",
     "tests/test_cluster.py::test_a_two_node_cluster_with_token_auth_runs_a_multi_worker_run_and_sweep"),
    (r"wget -P checkpoints https://\S+", "not here (needs the internet): the URL is the one precondlab's "
     "missing-checkpoint message gives, checked below"),
    (r"precondlab run gin/(cifar|cifar_cond|fashion|ffhq64|imagenet64)_analytic\.gin",
     "tests/test_cli.py::test_every_gin_file_runs"),
    (r"precondlab train-teacher gin/teachers/fashion_teacher\.gin --output \S+",
     "tests/test_teacher_training.py::test_train_teacher_cli_then_load_as_state_dict_teacher"),
    (r"precondlab check preconditioner variance", "here"),
]


def readme_commands() -> list[list[str]]:
    """The commands of the README's bash blocks (continuation lines joined, comments dropped)."""
    commands, lang, pending = [], None, ""
    for line in (REPO / "README.md").read_text().splitlines():
        fence = FENCE.match(line)
        if fence:
            lang = None if lang is not None else (fence.group(1) or "text")
            continue
        if lang != "bash":
            continue
        text = f"{pending} {line.strip()}".strip()
        pending = ""
        if text.endswith("\\"):
            pending = text[:-1]
            continue
        words = shlex.split(text, comments=True)
        if words:
            commands.append(words)
    return commands


def places(words: list[str]) -> list[str]:
    """The rows of WHERE that a command matches (exactly one, the test below asserts)."""
    return [w for pattern, w in WHERE if re.fullmatch(pattern, shlex.join(words))]


def as_filled_in(words: list[str]) -> list[str]:
    """Placeholders a user replaces ([OPTIONAL], RUN_ID, HOST), replaced by something valid."""
    out = []
    for w in words:
        w = w.strip("[]").replace("RUN_ID", "0" * 32).replace("$HEAD", "127.0.0.1").replace("HEAD:", "127.0.0.1:")
        out.append(w.replace("HOST:", "127.0.0.1:"))
    return out


def test_every_readme_command_has_one_place_where_it_runs_and_parses():
    commands = readme_commands()
    assert len(commands) >= 15, commands
    for words in commands:
        text = shlex.join(words)
        matches = places(words)
        assert len(matches) == 1, f"README command {text!r} matches {len(matches)} rows of WHERE"
        test = re.search(r"(tests/\w+\.py)::(\w+)", matches[0])
        if test:   # the test named exists
            assert f"def {test.group(2)}(" in (REPO / test.group(1)).read_text(), matches[0]
        words = as_filled_in(words)
        if "precondlab" in words:   # the precondlab part parses with the real parser ...
            args = words[words.index("precondlab") + 1:]
            parsed = build_parser().parse_args(args)
            for path in [getattr(parsed, "config", None) or [], [getattr(parsed, "sweep", None)]]:
                for p in path:   # ... and the files it names exist
                    assert p is None or (REPO / p).is_file(), f"{text}: {p} does not exist"
        if "torchrun" in words:     # torchrun's own parser accepts its part
            from torch.distributed.run import get_args_parser
            get_args_parser().parse_args(words[words.index("torchrun") + 1:])
        if words[0] == "wget":
            from precondlab.teachers.edm_pkl import missing_file_message
            assert words[-1] in missing_file_message(Path("checkpoints") / Path(words[-1]).name)
    makefile = (REPO / "Makefile").read_text()   # what `make run` is
    assert re.search(r"^run: .*\n\t\$\(VENV\)/bin/precondlab run gin/toy_analytic\.gin\n", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def _readme(pattern: str) -> list[str]:
    (words,) = [w for w in readme_commands() if re.fullmatch(pattern, shlex.join(w))]
    assert places(words) == ["here"]
    exe = words[0].replace(".venv/bin/", "")
    return [str(BIN / exe), *words[1:]]


@pytest.mark.slow
def test_readme_run_interrupt_resume_latest_then_the_mlflow_ui_shows_it(tmp_path):
    """The README's first run, interrupted with Ctrl-C; its `--resume latest` (with the run's own
    bindings, as the README's "Long runs" says a resume must); then `mlflow ui` as written, which
    must show the finished run."""
    (tmp_path / "gin").symlink_to(REPO / "gin")
    run = _readme(r"precondlab run gin/toy_ctm\.gin --gin_bindings 'SEED = 1' .*")
    log = tmp_path / "first.log"
    first = subprocess.Popen(run, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    deadline = time.monotonic() + 120
    while first.poll() is None:   # Ctrl-C once it has trained a while (a loss is logged at step 250 of 500)
        assert time.monotonic() < deadline, log.read_text()
        try:
            if any("loss" in r.data.metrics for r in store.search_runs(["0", "1"])):
                break
        except Exception:  # noqa: BLE001 - the store is not made yet
            pass
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130, log.read_text()[-2000:]
    assert "--resume" in log.read_text()

    resume = _readme(r"precondlab run gin/toy_ctm\.gin --resume latest") + run[3:]
    done = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ui = subprocess.Popen(_readme(r"\.venv/bin/mlflow ui .*"), cwd=tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_healthy("http://127.0.0.1:5000", ui, "mlflow ui")   # its default address, as the README says
        client = MlflowClient("http://127.0.0.1:5000")
        (found,) = client.search_runs([client.get_experiment_by_name("precondlab").experiment_id])
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait(timeout=30)
    assert found.info.status == "FINISHED" and found.data.params["experiment.seed"] == "1"
    assert "precondlab.resumed_from_step" in found.data.tags
    history = [m.step for m in store.get_metric_history(found.info.run_id, "traj_mse/nfe2")]
    assert history == sorted(set(history)) and history[-1] == 500     # one history, no step twice


def test_readme_check_of_the_example_plugin(tmp_path):
    out = subprocess.run(_readme(r"precondlab check preconditioner variance"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "variance" in out.stdout and "boundary" in out.stdout
