"""Every gin file runs through the CLI; bad input gets one clear message and no RUNNING run."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import GIN
from tiny import TINY, TINY_ANALYTIC

TOP_LEVEL = sorted(p for p in GIN.glob("*.gin"))


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "precondlab.cli", *args], capture_output=True, text=True, cwd=cwd)


def bindings(extra=()):
    out = []
    for b in TINY + TINY_ANALYTIC + list(extra):
        out += ["--gin_bindings", b]
    return out


def runs_in(db: Path):
    client = MlflowClient(f"sqlite:///{db}")
    exps = client.search_experiments()
    return [r for e in exps for r in client.search_runs([e.experiment_id])]


def test_every_gin_file_is_exercised():
    """Top-level files run below; base/ files are included by them; teachers/ files are
    train-teacher configs run by tests/test_teacher_training.py."""
    text = "".join(p.read_text() for p in TOP_LEVEL)
    trainer_tests = (Path(__file__).parent / "test_teacher_training.py").read_text()
    for path in GIN.rglob("*.gin"):
        rel = path.relative_to(GIN)
        if rel.parent == Path("."):
            continue
        if rel.parts[0] == "base":
            assert f"base/{path.name}" in text, path
        elif rel.parts[0] == "teachers":
            assert f'"teachers" / "{path.name}"' in trainer_tests, path
        else:
            raise AssertionError(f"{path}: not exercised by any test")


def setup_bindings(gin_file: Path, tmp_path: Path) -> tuple[str, list[str], str]:
    """(command, extra bindings, a metric the summary must show) shrinking gin_file to seconds."""
    name = gin_file.name
    if name.startswith("toy_"):
        return "run", bindings(), "traj_mse/nfe2"
    import image_fixtures as fx
    if name.startswith("cifar_"):
        pkl, data = (fx.write_cifar_cond_fixture if name.startswith("cifar_cond_") else fx.write_cifar_fixture)(tmp_path)
        files = [f"TEACHER_PKL = '{pkl}'", f"DATA_DIR = '{data}'"]
    elif name.startswith("ffhq64_"):
        pkl, data = fx.write_ffhq64_fixture(tmp_path)
        files = [f"TEACHER_PKL = '{pkl}'", f"FFHQ_ZIP = '{data}'", f"CHANNEL_MULT = {tuple(fx.FFHQ64_CHANNEL_MULT)}"]
    elif name.startswith("imagenet64_"):
        pkl, data = fx.write_imagenet64_fixture(tmp_path)
        files = [f"TEACHER_PKL = '{pkl}'", f"IMAGENET_ZIP = '{data}'", f"LABEL_DIM = {fx.IMAGENET64_LABEL_DIM}"]
    elif name.startswith("fashion_"):
        ckpt, data = fx.write_fashion_fixture(tmp_path)
        files = [f"TEACHER_CKPT = '{ckpt}'", f"dataset.fashion_mnist.data_dir = '{data}'",
                 "dataset.fashion_mnist.system_dir = None"]
    else:
        raise AssertionError(f"{name}: add its tiny setup here, so every gin file is exercised")
    extra = fx.tiny_image_bindings(tmp_path / "fid-cache") + files + [f"ode.analytic.cache_dir = '{tmp_path / 'stats'}'"]
    return "run", [a for b in extra for a in ("--gin_bindings", b)], "fd_classifier/nfe2"


@pytest.mark.parametrize("gin_file", TOP_LEVEL, ids=lambda p: p.name)
def test_every_gin_file_runs(gin_file, tmp_path):
    command, extra, metric = setup_bindings(gin_file, tmp_path)
    out = cli(command, str(gin_file), *extra, "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "summary" in out.stdout and metric in out.stdout
    runs = runs_in(tmp_path / "mlruns.db")           # the default store: ./mlruns.db
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert (tmp_path / "mlartifacts").is_dir()
    if not gin_file.name.startswith("toy_"):  # the tiny student has the fixture teacher's architecture:
        # all of the teacher is copied but for EDM's augmentation-label embedding, which the FFHQ
        # teacher has (as edm-ffhq-64x64-uncond-vp.pkl does) and which no student is given labels for
        if gin_file.name.startswith(("cifar_cond_", "imagenet64_")):   # labels in (the run fails without), uniform out
            classes = 10 if gin_file.name.startswith("cifar") else 3
            assert runs[0].data.params["eval.class_labels"] == f"uniform over {classes} classes (EDM's generate.py)"
            assert re.search(rf"class_labels +uniform over {classes} classes", out.stdout)   # and in the summary
        fraction = float(runs[0].data.params["student_init_copied_fraction"])
        assert fraction == 1.0 if not gin_file.name.startswith("ffhq64_") else 0.99 < fraction < 1.0, fraction


@pytest.mark.parametrize("name", ["fashion_ctm.gin", "fashion_analytic.gin"])
def test_fashion_students_have_the_fashion_teachers_architecture(name):
    """CTM initialises the student from the teacher: the fashion files' student must have
    gin/teachers/fashion_teacher.gin's network sizes (else only FIR buffers are copied), and they
    run on this CPU-only machine by default."""
    import gin

    from precondlab import config, experiment  # noqa: F401 (their configurables)
    from precondlab.training import teacher as teacher_training  # noqa: F401
    keys = ("model_channels", "channel_mult", "num_blocks", "attn_resolutions", "dropout")
    config.load([str(GIN / "teachers/fashion_teacher.gin")])
    teacher = {k: gin.get_bindings("teacher_net")[k] for k in keys}
    gin.clear_config()
    config.load([str(GIN / name)])
    student = {k: gin.get_bindings("student.songunet")[k] for k in keys}
    device = gin.query_parameter("%DEVICE")
    gin.clear_config()
    assert student == teacher
    assert device == "cpu"


def test_unknown_name_in_a_gin_file(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text(f"include '{GIN / 'toy_analytic.gin'}'\n\nexperiment.preconditioner = @preconditioner.analytc()\n")
    out = cli("run", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert f"{bad}, line 3" in out.stderr and "@preconditioner.analytic" in out.stderr
    assert not (tmp_path / "mlruns.db").exists()


def test_malformed_gin_file_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.gin"
    bad.write_text(f"include '{GIN / 'toy_ctm.gin'}'\nexperiment.steps = 10\nexperiment.lr = (1e-3\n")
    out = cli("run", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and "broken.gin, line" in out.stderr, out.stderr
    typo = tmp_path / "typo.gin"
    typo.write_text(f"include '{GIN / 'toy_ctm.gin'}'\nexperimnt.steps = 10\n")
    out = cli("run", str(typo), cwd=tmp_path)
    assert out.returncode == 2 and "typo.gin, line 2" in out.stderr and "experiment" in out.stderr, out.stderr


def test_missing_required_binding(tmp_path):
    partial = tmp_path / "partial.gin"
    partial.write_text(f"include '{GIN / 'base' / 'toy_teacher.gin'}'\ninclude '{GIN / 'base' / 'toy_training.gin'}'\n")
    out = cli("run", str(partial), cwd=tmp_path)
    assert out.returncode == 2 and "preconditioner" in out.stderr, out.stderr
    assert not (tmp_path / "mlruns.db").exists()


def test_unreachable_tracking_uri(tmp_path):
    out = cli("run", str(GIN / "toy_ctm.gin"), *bindings(), "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path)
    assert out.returncode == 2 and "http://127.0.0.1:9" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "a_file").write_text("not a folder")
    out = cli("run", str(GIN / "toy_ctm.gin"), *bindings(), "--tracking-uri", f"sqlite:///{tmp_path}/a_file/x.db",
              cwd=tmp_path)
    assert out.returncode == 2 and "a_file/x.db" in out.stderr and "Traceback" not in out.stderr


def test_tracking_uri_from_the_environment(tmp_path):
    db = tmp_path / "elsewhere.db"
    env_run = subprocess.run([sys.executable, "-m", "precondlab.cli", "run", str(GIN / "toy_ctm.gin"), *bindings(),
                              "--no-progress"], capture_output=True, text=True, cwd=tmp_path,
                             env={**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    assert env_run.returncode == 0, env_run.stderr[-2000:]
    assert [r.info.status for r in runs_in(db)] == ["FINISHED"]


# --- a missing dataset, checkpoint or FID weights file: one message, exit 2, no traceback --------


def test_user_input_errors_share_one_base_and_keep_theirs():
    from precondlab.config import ConfigError
    from precondlab.data.images import DatasetError
    from precondlab.errors import UserInputError, user_message
    from precondlab.evaluation.features import FeatureExtractorError
    from precondlab.teachers.edm_pkl import CheckpointError
    for cls in (ConfigError, DatasetError, CheckpointError, FeatureExtractorError):
        assert issubclass(cls, UserInputError), cls
    assert issubclass(CheckpointError, RuntimeError) and issubclass(ConfigError, ValueError)
    gin_wrapped = CheckpointError("x.pkl not found; download it.\n  In call to configurable 'edm_pkl' (<function f>)")
    assert user_message(gin_wrapped) == "x.pkl not found; download it."


def _image_args(tmp_path, gin_name, extra):
    from image_fixtures import tiny_image_bindings, write_cifar_fixture
    pkl, data = write_cifar_fixture(tmp_path)
    bindings = tiny_image_bindings(tmp_path / "fid-cache") + [
        f"TEACHER_PKL = '{pkl}'", f"DATA_DIR = '{data}'", f"ode.analytic.cache_dir = '{tmp_path / 'stats'}'", *extra]
    return [str(GIN / gin_name)] + [a for b in bindings for a in ("--gin_bindings", b)]


def test_missing_inception_weights_fail_before_the_statistics_and_the_run_is_failed(tmp_path):
    args = _image_args(tmp_path, "cifar_analytic.gin", ["fid.feature_extractor = 'inception'",
                                                       f"fid.inception_path = '{tmp_path / 'weights'}'"])
    out = cli("run", *args, "--no-progress", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "In call to configurable" not in out.stderr
    assert "Inception weights for FID not found" in out.stderr
    assert str(tmp_path / "weights" / "inception-2015-12-05.pt") in out.stderr
    (run,) = runs_in(tmp_path / "mlruns.db")
    assert run.info.status == "FAILED" and "FeatureExtractorError" in run.data.tags["error"]
    # The evaluator is set up before the Analytic statistics: none were computed.
    assert "stats/seconds" not in run.data.metrics
    assert not (tmp_path / "stats").exists() or not any((tmp_path / "stats").iterdir())


def test_gap_with_a_missing_checkpoint_or_dataset(tmp_path):
    args = _image_args(tmp_path, "cifar_ctm.gin", [f"TEACHER_PKL = '{tmp_path / 'absent.pkl'}'"])
    out = cli("gap", *args, "--samples", "4", "--preconditioners", "ctm", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and f"EDM checkpoint not found: {tmp_path / 'absent.pkl'}" in out.stderr
    args = _image_args(tmp_path, "cifar_ctm.gin", [f"DATA_DIR = '{tmp_path / 'no-data'}'", "dataset.cifar10.download = False"])
    out = cli("gap", *args, "--samples", "4", "--preconditioners", "ctm", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and str(tmp_path / "no-data") in out.stderr


def test_a_dataset_of_another_shape_than_the_teacher_is_one_message(tmp_path):
    from test_datasets import write_fmnist
    write_fmnist(tmp_path / "fmnist")
    args = _image_args(tmp_path, "cifar_ctm.gin", ["teacher.edm_pkl.dataset = @dataset.fashion_mnist()",
                                                  f"dataset.fashion_mnist.data_dir = '{tmp_path / 'fmnist'}'",
                                                  "dataset.fashion_mnist.system_dir = None"])
    out = cli("run", *args, "--no-progress", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "(3, 32, 32)" in out.stderr and "dataset.fashion_mnist" in out.stderr and "(1, 32, 32)" in out.stderr
    assert "edm-tiny-cifar10-32x32-uncond-vp.pkl" in out.stderr
    assert not (tmp_path / "mlruns.db").exists()   # refused while building the experiment: no run


def test_ffhq64_files_hold_the_64x64_recipe_and_a_missing_zip_says_how_to_make_it(tmp_path):
    """gin/ffhq64_*.gin: EDM's FFHQ-64 teacher and data, CTM's 64x64 grid (N = 40, K = 39) and a
    student of the teacher's architecture; the two files differ in the preconditioning only."""
    import gin

    from precondlab import config, experiment  # noqa: F401 (their configurables)
    settings = {}
    for name in ("ffhq64_ctm.gin", "ffhq64_analytic.gin"):
        config.load([str(GIN / name)])
        settings[name] = {"N": gin.query_parameter("objective.ctm.num_timesteps"),
                          "K": gin.query_parameter("objective.ctm.max_jump"),
                          "student": {k: gin.query_parameter(f"student.songunet.{k}")
                                      for k in ("img_resolution", "channel_mult", "model_channels", "num_blocks",
                                                "attn_resolutions")},
                          "teacher": gin.query_parameter("teacher.edm_pkl.path"),
                          "data": gin.query_parameter("dataset.image_folder.path"),
                          "fid_reference": gin.query_parameter("fid.reference")}
        gin.clear_config()
    assert settings["ffhq64_ctm.gin"] == settings["ffhq64_analytic.gin"]
    got = settings["ffhq64_ctm.gin"]
    assert str(got["N"]) == "%NUM_TIMESTEPS" and got["K"] == 39
    assert str(got["teacher"]) == "%TEACHER_PKL" and str(got["data"]) == "%FFHQ_ZIP"
    assert got["fid_reference"] == "dataset"            # clean-fid has no 64x64 FFHQ statistics
    config.load([str(GIN / "ffhq64_ctm.gin")])
    values = {name: gin.query_parameter(f"%{name}") for name in
              ("NUM_TIMESTEPS", "CHANNEL_MULT", "MODEL_CHANNELS", "NUM_BLOCKS", "ATTN_RESOLUTIONS", "IMG_RESOLUTION",
               "TEACHER_PKL")}
    gin.clear_config()
    assert values == {"NUM_TIMESTEPS": 40, "CHANNEL_MULT": (1, 2, 2, 2), "MODEL_CHANNELS": 128, "NUM_BLOCKS": 4,
                      "ATTN_RESOLUTIONS": (16,), "IMG_RESOLUTION": 64,
                      "TEACHER_PKL": "checkpoints/edm-ffhq-64x64-uncond-vp.pkl"}   # EDM's FFHQ-64 DDPM++

    from image_fixtures import tiny_image_bindings, write_ffhq64_fixture
    pkl, _ = write_ffhq64_fixture(tmp_path)
    missing = tmp_path / "datasets" / "ffhq-64x64.zip"
    extra = tiny_image_bindings(tmp_path / "fid-cache") + [f"TEACHER_PKL = '{pkl}'", f"FFHQ_ZIP = '{missing}'"]
    out = cli("run", str(GIN / "ffhq64_analytic.gin"), *[a for b in extra for a in ("--gin_bindings", b)],
              "--no-progress", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and f"{missing} does not exist" in out.stderr
    assert "dataset_tool.py --source=downloads/ffhq/images1024x1024 --dest=datasets/ffhq-64x64.zip" in out.stderr


def test_a_conditional_teacher_with_an_unconditional_student_is_one_message(tmp_path):
    from image_fixtures import tiny_image_bindings, write_cifar_cond_fixture
    pkl, data = write_cifar_cond_fixture(tmp_path)
    extra = tiny_image_bindings(tmp_path / "fid-cache") + [f"TEACHER_PKL = '{pkl}'", f"DATA_DIR = '{data}'"]
    out = cli("run", str(GIN / "cifar_ctm.gin"), *[a for b in extra for a in ("--gin_bindings", b)], "--no-progress",
              cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "the teacher has 10 classes, the student 0" in out.stderr and "student.songunet.label_dim = 10" in out.stderr


def test_imagenet64_files_hold_the_adm_recipe_and_a_missing_zip_says_how_to_make_it(tmp_path):
    """gin/imagenet64_*.gin: EDM's class-conditional ADM teacher, an ADM student of its sizes and
    1000 classes, CTM's ImageNet-64 grid (N = 40, K = 39), batch 1440 and learning rate 4e-4."""
    import gin

    from precondlab import config, experiment  # noqa: F401 (their configurables)
    config.load([str(GIN / "imagenet64_analytic.gin")])
    got = {name: gin.query_parameter(f"%{name}") for name in
           ("NUM_TIMESTEPS", "BATCH", "LABEL_DIM", "MODEL_CHANNELS", "CHANNEL_MULT", "NUM_BLOCKS", "ATTN_RESOLUTIONS",
            "IMG_RESOLUTION", "TEACHER_PKL")}
    student, max_jump = gin.query_parameter("experiment.student"), gin.query_parameter("objective.ctm.max_jump")
    lr = gin.query_parameter("experiment.lr")
    gin.clear_config()
    assert got == {"NUM_TIMESTEPS": 40, "BATCH": 1440, "LABEL_DIM": 1000, "MODEL_CHANNELS": 192,
                   "CHANNEL_MULT": (1, 2, 3, 4), "NUM_BLOCKS": 3, "ATTN_RESOLUTIONS": (32, 16, 8), "IMG_RESOLUTION": 64,
                   "TEACHER_PKL": "checkpoints/edm-imagenet-64x64-cond-adm.pkl"}
    assert str(student) == "@student.dhariwalunet" and max_jump == 39 and lr == 4e-4

    from image_fixtures import IMAGENET64_LABEL_DIM, tiny_image_bindings, write_imagenet64_fixture
    pkl, _ = write_imagenet64_fixture(tmp_path)
    missing = tmp_path / "datasets" / "imagenet-64x64.zip"
    extra = tiny_image_bindings(tmp_path / "fid-cache") + [f"TEACHER_PKL = '{pkl}'", f"IMAGENET_ZIP = '{missing}'",
                                                           f"LABEL_DIM = {IMAGENET64_LABEL_DIM}"]
    out = cli("run", str(GIN / "imagenet64_ctm.gin"), *[a for b in extra for a in ("--gin_bindings", b)],
              "--no-progress", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and f"{missing} does not exist" in out.stderr
    assert "dataset_tool.py --source=downloads/imagenet/ILSVRC/Data/CLS-LOC/train" in out.stderr
