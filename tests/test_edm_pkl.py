"""EDM checkpoints read without EDM's code: a fixture in the exact EDM pickle structure.

EDM writes ``pickle.dump(dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...))``
(protocol 4) where each network object reduces to ``torch_utils.persistence.
_reconstruct_persistent_obj(meta)``, meta = {type, version, module_src, class_name, state}, and
state is the object's ``__dict__`` (torch ``ModuleDict`` containers are pickled by class). The
writer below produces the same opcodes and globals with a fake ``torch_utils.persistence`` that
exists only while writing; its module_src would create a marker file if anyone executed it.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import pickletools
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from precondlab import registry
from precondlab.nets.songunet import Conv, SongUNet, UNetBlock
from precondlab.teachers.edm_pkl import EDM_URL, CheckpointError, EDMNetTeacher, edm_pkl
from precondlab.teachers.state_dict import state_dict_teacher

MODEL_KWARGS = dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=0, augment_dim=9,
                    model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                    dropout=0.13, embedding_type="positional", channel_mult_noise=1,
                    encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])
EDM_CLASS = {"Conv": "Conv2d", "Linear": "Linear", "GroupNorm": "GroupNorm", "UNetBlock": "UNetBlock",
             "PositionalEmbedding": "PositionalEmbedding", "SongUNet": "SongUNet", "DhariwalUNet": "DhariwalUNet"}
# The globals a real EDM snapshot names (checked against one written by EDM's own code).
EDM_GLOBALS = {("torch_utils.persistence", "_reconstruct_persistent_obj"),
               ("torch.nn.modules.container", "ModuleDict"), ("torch.storage", "_load_from_bytes"),
               ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
               ("collections", "OrderedDict"), ("numpy", "dtype")}


# -- the writer ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _fake_persistence():
    """``torch_utils.persistence`` in sys.modules only while pickling, so pickle can name it."""
    def reconstruct(meta):  # pragma: no cover - only a name for pickle; the loader must not use it
        raise AssertionError("the loader called torch_utils.persistence")
    reconstruct.__module__, reconstruct.__name__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
    reconstruct.__qualname__ = "_reconstruct_persistent_obj"
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    module._reconstruct_persistent_obj, package.persistence = reconstruct, module
    sys.modules["torch_utils"], sys.modules["torch_utils.persistence"] = package, module
    try:
        yield reconstruct
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


class _Persistent:
    """Pickles exactly as an EDM @persistent_class instance does."""

    def __init__(self, reconstruct, class_name: str, state: dict, src: str):
        self.reconstruct, self.class_name, self.state, self.src = reconstruct, class_name, state, src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.src, class_name=self.class_name, state=self.state)
        return self.reconstruct, (meta,)


def _as_edm(module: nn.Module, reconstruct, src: str, init_kwargs: dict | None = None):
    state = module.__getstate__()  # what object.__reduce__ hands to persistence: a copy of __dict__
    children = {name: _as_edm(child, reconstruct, src) for name, child in state["_modules"].items()}
    if isinstance(module, nn.ModuleDict):  # EDM's enc/dec: plain torch containers
        container = nn.ModuleDict()
        container.__dict__["_modules"] = children
        return container
    state["_modules"] = children
    if isinstance(module, Conv) and module.resample_filter is None:  # EDM registers a None buffer
        state.pop("resample_filter")
        state["_buffers"] = {**state["_buffers"], "resample_filter": None}
    if isinstance(module, UNetBlock):   # EDM keeps a numpy float64 here (DDPM++), or the int 1 (ADM)
        state["skip_scale"] = np.sqrt(0.5) if module.skip_scale != 1 else 1
    state.update(_init_args=(), _init_kwargs=dict(init_kwargs or {}))
    return _Persistent(reconstruct, EDM_CLASS[type(module).__name__], state, src)


def write_edm_pickle(path, net: SongUNet, marker, precond: str = "VPPrecond", model_class: str = "SongUNet",
                     record_kwargs: dict | None = None, extra_state: dict | None = None) -> None:
    src = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
    kwargs = {k: v for k, v in (record_kwargs or MODEL_KWARGS).items()}
    with _fake_persistence() as reconstruct:
        model = _as_edm(net, reconstruct, src, kwargs)
        model.class_name = model_class
        top = nn.Module().__getstate__()
        res, channels = kwargs.get("img_resolution", 8), kwargs.get("in_channels", 3)
        label_dim = kwargs.get("label_dim", 0)
        top.update(training=False, _modules={"model": model}, img_resolution=res, img_channels=channels,
                   label_dim=label_dim, use_fp16=False, _init_args=())
        top.update(extra_state or {})
        if precond == "VPPrecond":
            top.update(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5, sigma_min=0.001, sigma_max=152.0)
        else:
            top.update(sigma_min=0, sigma_max=float("inf"), sigma_data=0.5)
        top["_init_kwargs"] = dict(img_resolution=res, img_channels=channels, label_dim=label_dim, use_fp16=False,
                                   model_type=model_class, **{k: v for k, v in kwargs.items()
                                                              if k not in ("img_resolution", "in_channels",
                                                                           "out_channels", "label_dim")})
        data = dict(
            ema=_Persistent(reconstruct, precond, top, src),
            loss_fn=_Persistent(reconstruct, "VPLoss", dict(beta_d=19.9, beta_min=0.1, epsilon_t=1e-5,
                                                            _init_args=(), _init_kwargs={}), src),
            augment_pipe=_Persistent(reconstruct, "AugmentPipe", dict(p=0.12, xflip=1e8, yflip=1.0, _init_args=(),
                                                                      _init_kwargs=dict(p=0.12, xflip=1e8)), src),
            dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="cifar10-32x32.zip",
                                use_labels=False, xflip=False, cache=True, resolution=32, max_size=50000))
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=4)  # EDM: plain pickle.dump under Python 3.8 (protocol 4)


def _random_net(seed: int = 0, **changes) -> SongUNet:
    torch.manual_seed(seed)
    net = SongUNet(**{**MODEL_KWARGS, **changes})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in sorted(net.state_dict().items()):
            if not name.endswith("resample_filter"):
                value.copy_(torch.randn(value.shape, generator=g) * 0.2)
    return net.eval().requires_grad_(False)  # EDM saves its EMA as eval() with requires_grad False


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("edm")
    out = {"marker": root / "module_src_ran", "net": _random_net()}
    for precond in ("VPPrecond", "EDMPrecond", "VEPrecond"):
        out[precond] = root / f"edm-tiny-{precond}.pkl"
        write_edm_pickle(out[precond], out["net"], out["marker"], precond)
    return out


def _pickle_globals(path) -> set[tuple[str, str]]:
    """(module, name) of every STACK_GLOBAL/GLOBAL, following the memo for repeated strings."""
    memo, stack, found = {}, [], set()
    for op, arg, _ in pickletools.genops(open(path, "rb").read()):
        if op.name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif op.name in ("BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            found.add((stack[-2], stack[-1]))
            stack.append(None)
        elif op.name == "GLOBAL":
            found.add(tuple(arg.split(" ", 1)))
        elif op.name != "FRAME":
            stack.append(arg if isinstance(arg, str) else None)
    return found


# -- reading ------------------------------------------------------------------------------------
def test_fixture_has_the_edm_structure(written):
    names = _pickle_globals(written["VPPrecond"])
    scalar = {g for g in names if g[1] == "scalar"}
    assert names - scalar == EDM_GLOBALS and scalar <= {("numpy.core.multiarray", "scalar"),
                                                        ("numpy._core.multiarray", "scalar")} and scalar
    assert "torch_utils" not in sys.modules


def test_loads_every_tensor_and_runs_no_code(written):
    teacher = edm_pkl(str(written["VPPrecond"]))
    assert not written["marker"].exists(), "module_src was executed"
    assert "torch_utils" not in sys.modules and "torch_utils.persistence" not in sys.modules
    ours, ref = teacher.net.state_dict(), written["net"].state_dict()
    assert set(ours) == set(ref)
    for name, value in ref.items():
        assert torch.equal(ours[name], value), name
    assert teacher.precond == "vp" and teacher.shape == (3, 8, 8) and teacher.dim == 192


def test_vp_denoise_is_edm_vp_preconditioning(written):
    teacher, net = edm_pkl(str(written["VPPrecond"])), written["net"]
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    for sigma in (0.3, 4.0):
        t_vp = (math.sqrt(0.1 ** 2 + 2 * 19.9 * math.log(1 + sigma ** 2)) - 0.1) / 19.9
        assert math.sqrt(math.exp(0.5 * 19.9 * t_vp ** 2 + 0.1 * t_vp) - 1) == pytest.approx(sigma)
        F_x = net(x / math.sqrt(sigma ** 2 + 1), torch.full((2,), 999 * t_vp))
        expected = x - sigma * F_x  # c_skip = 1, c_out = -sigma
        torch.testing.assert_close(teacher.denoise(x, torch.tensor(sigma)), expected, rtol=1e-4, atol=1e-4)
        x64 = x.double()  # float64 callers get float64 back, same values
        assert teacher.denoise(x64, torch.full((2,), sigma, dtype=torch.float64)).dtype == torch.float64


def test_edm_denoise_is_edm_preconditioning(written):
    teacher, net = edm_pkl(str(written["EDMPrecond"])), written["net"]
    assert teacher.precond == "edm" and teacher.sigma_data == 0.5
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.05, 7.0])
    s = sigma[:, None, None, None]
    F_x = net(x / (s ** 2 + 0.25).sqrt(), sigma.log() / 4)
    expected = 0.25 / (s ** 2 + 0.25) * x + s * 0.5 / (s ** 2 + 0.25).sqrt() * F_x
    torch.testing.assert_close(teacher.denoise(x.reshape(2, -1), sigma), expected.reshape(2, -1))


def test_ve_denoise_is_edm_ve_preconditioning(written):
    teacher, net = edm_pkl(str(written["VEPrecond"])), written["net"]
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.05, 7.0])
    expected = x + sigma[:, None, None, None] * net(x, (0.5 * sigma).log())  # c_in = c_skip = 1, c_out = sigma
    assert teacher.precond == "ve"
    torch.testing.assert_close(teacher.denoise(x, sigma), expected)


def test_registered_and_sampler(written):
    teacher = registry.create("teacher", "edm_pkl", path=str(written["VPPrecond"]))
    assert isinstance(teacher, EDMNetTeacher)
    with pytest.raises(NotImplementedError, match="dataset"):
        teacher.sample_x0(2)

    class Points:
        def sample_x0(self, n, generator=None):
            return torch.zeros(n, 192)

    assert edm_pkl(str(written["VPPrecond"]), dataset=Points()).sample_x0(3).shape == (3, 3, 8, 8)


# -- refusing -----------------------------------------------------------------------------------
class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("make", [
    lambda m: _Evil(__import__("os").system, f"touch {m}"),
    lambda m: _Evil(eval, f"__import__('pathlib').Path({str(m)!r}).touch()"),
    lambda m: _Evil(subprocess.Popen, ["touch", str(m)]),
], ids=["os.system", "builtins.eval", "subprocess.Popen"])
def test_refuses_foreign_globals(tmp_path, make):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": make(marker)}, protocol=4))
    with pytest.raises(CheckpointError, match="refused") as info:
        edm_pkl(str(path))
    assert str(path) in str(info.value) and f".{make(marker).func.__name__}" in str(info.value)
    assert not marker.exists()


def test_refuses_protocol0_os_system_and_nested_calls(tmp_path, written):
    marker, path = tmp_path / "pwned", tmp_path / "evil0.pkl"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(CheckpointError, match=r"os\.system"):
        edm_pkl(str(path))
    nested = tmp_path / "nested.pkl"  # a call hidden inside an otherwise genuine network record
    write_edm_pickle(nested, written["net"], marker, extra_state={"payload": _Evil(eval, "1 + 1")})
    with pytest.raises(CheckpointError, match=r"builtins\.eval"):
        edm_pkl(str(nested))
    assert not marker.exists()


def test_missing_file_names_path_and_url(tmp_path):
    path = tmp_path / "nowhere" / "edm-cifar10-32x32-uncond-vp.pkl"
    with pytest.raises(CheckpointError) as info:
        edm_pkl(str(path))
    assert str(path) in str(info.value)
    assert f"{EDM_URL}edm-cifar10-32x32-uncond-vp.pkl" in str(info.value)
    assert EDM_URL == "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"


def _edm_wrapper_float32(net, precond: str, x: torch.Tensor, sigma: torch.Tensor, class_labels=None) -> torch.Tensor:
    """EDM's VPPrecond / VEPrecond / EDMPrecond.forward as training/networks.py writes them:
    x and sigma cast to float32, every scaling in float32, VP's label via log(1 + sigma^2), class
    labels (a conditional net) as float32 rows of label_dim."""
    x = x.to(torch.float32)
    sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
    if precond == "VPPrecond":
        c_skip, c_out, c_in = 1, -sigma, 1 / (sigma ** 2 + 1).sqrt()
        c_noise = 999 * (((0.1 ** 2 + 2 * 19.9 * (1 + sigma ** 2).log()).sqrt() - 0.1) / 19.9)   # (M - 1) * sigma_inv
    elif precond == "VEPrecond":
        c_skip, c_out, c_in, c_noise = 1, sigma, 1, (0.5 * sigma).log()
    else:
        c_skip = 0.25 / (sigma ** 2 + 0.25)
        c_out = sigma * 0.5 / (sigma ** 2 + 0.25).sqrt()
        c_in = 1 / (0.25 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
    labels = None if class_labels is None else class_labels.to(torch.float32).reshape(-1, net.label_dim)
    return c_skip * x + c_out * net(c_in * x, c_noise.flatten(), class_labels=labels).to(torch.float32)


@pytest.mark.parametrize("precond", ["VPPrecond", "EDMPrecond", "VEPrecond"])
def test_denoise_equals_edms_own_float32_wrapper(written, precond):
    """Relative error <= 1e-5 against EDM's wrapper, at sigma_min too (where VP's noise label in
    float32 is log(1 + sigma^2)'s, ~2% off log1p's), for float32 and float64 callers."""
    teacher, net = edm_pkl(str(written[precond])), written["net"]
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    x_t = x * (1 + sigma[:, None, None, None])
    want = _edm_wrapper_float32(net, precond, x_t, sigma)
    for dtype in (torch.float32, torch.float64):
        got = teacher.denoise(x_t.to(dtype), sigma.to(dtype))
        assert got.dtype == dtype
        rel = ((got.float() - want).abs().amax() / want.abs().amax()).item()
        assert rel <= 1e-5, (precond, dtype, rel)
    if precond == "VPPrecond":   # the noise label itself, bit for bit (a tiny random net hardly notices 2%)
        s32 = sigma.float()
        edm_label = 999 * (((0.1 ** 2 + 2 * 19.9 * (1 + s32 ** 2).log()).sqrt() - 0.1) / 19.9)
        assert torch.equal(teacher.scalings(s32)[3], edm_label)
        log1p_label = 999 * (((0.1 ** 2 + 2 * 19.9 * torch.log1p(s32 ** 2)).sqrt() - 0.1) / 19.9)
        assert (log1p_label[0] / edm_label[0] - 1).abs() > 1e-3      # why it matters at sigma_min


def test_unsupported_or_mismatched_networks(tmp_path, written):
    other = tmp_path / "other.pkl"
    write_edm_pickle(other, written["net"], written["marker"], model_class="MysteryUNet")
    with pytest.raises(CheckpointError, match=r"the network is MysteryUNet; supported: SongUNet .* DhariwalUNet"):
        edm_pkl(str(other))
    posing = tmp_path / "posing.pkl"   # a SongUNet's record and tensors under ADM's class name
    write_edm_pickle(posing, written["net"], written["marker"], model_class="DhariwalUNet")
    with pytest.raises(CheckpointError, match=r"DhariwalUNet arguments we do not implement: \['channel_mult_noise'"):
        edm_pkl(str(posing))
    iddpm = tmp_path / "baseline-imagenet.pkl"
    write_edm_pickle(iddpm, written["net"], written["marker"], precond="iDDPMPrecond")
    with pytest.raises(CheckpointError, match="iDDPMPrecond, not supported: its noise levels are rounded"):
        edm_pkl(str(iddpm))
    torn = tmp_path / "edm-torn.pkl"   # a wrapper and a network that disagree on the classes
    write_edm_pickle(torn, written["net"], written["marker"], precond="EDMPrecond", extra_state={"label_dim": 10})
    with pytest.raises(CheckpointError, match=r"the wrapper says label_dim = 10, its network 0"):
        edm_pkl(str(torn))
    fp16 = tmp_path / "edm-fp16.pkl"
    write_edm_pickle(fp16, written["net"], written["marker"], precond="EDMPrecond", extra_state={"use_fp16": True})
    with pytest.warns(UserWarning, match="honoured on CUDA only: on the cpu its network runs in float32"):
        assert edm_pkl(str(fp16)).precond == "edm"
    lying = tmp_path / "lying.pkl"  # recorded kwargs say no augment labels, the tensors have them
    write_edm_pickle(lying, written["net"], written["marker"], record_kwargs={**MODEL_KWARGS, "augment_dim": 0})
    with pytest.raises(CheckpointError, match=r"unexpected \['map_augment.weight'\]"):
        edm_pkl(str(lying))


# -- state-dict teacher -------------------------------------------------------------------------
def test_state_dict_teacher_pt_and_safetensors(tmp_path, written):
    from safetensors.torch import save_file

    net, kwargs = written["net"], {k: MODEL_KWARGS[k] for k in (
        "img_resolution", "in_channels", "model_channels", "channel_mult", "num_blocks",
        "attn_resolutions", "augment_dim")}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, tmp_path / "w.pt")
    reference = edm_pkl(str(written["VPPrecond"]))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    for name in ("w.safetensors", "w.pt"):
        teacher = state_dict_teacher(str(tmp_path / name), precond="vp", **kwargs)
        torch.testing.assert_close(teacher.denoise(x, t), reference.denoise(x, t), rtol=0, atol=0)

    torch.save({"w": torch.zeros(1), "obj": _Evil(eval, "1")}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt: refused: it holds a Python object \(eval\)") as err:
        state_dict_teacher(str(tmp_path / "evil.pt"), **kwargs)
    assert "weights_only" not in str(err.value)                 # torch's advice to run the file is never passed on
    with pytest.raises(CheckpointError, match="not found"):
        state_dict_teacher(str(tmp_path / "absent.pt"), **kwargs)


# -- a dataset whose images the network cannot take ----------------------------------------------
def test_a_dataset_of_another_shape_fails_at_construction(tmp_path, written):
    from test_datasets import write_fmnist

    from precondlab.config import ConfigError
    from precondlab.data import FashionMNIST
    from precondlab.data.images import ImageDataset

    write_fmnist(tmp_path / "fmnist")
    gray8 = FashionMNIST(data_dir=tmp_path / "fmnist", resolution=8, resize="bilinear", system_dir=None)
    path = written["VPPrecond"]
    with pytest.raises(ConfigError) as info:   # the network is 3x8x8 (a "CIFAR" teacher), the data 1x8x8
        edm_pkl(str(path), dataset=gray8)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "(3, 8, 8)" in msg and "(1, 8, 8)" in msg
    assert "dataset.fashion_mnist (fashion_mnist-train)" in msg and "3-channel dataset" in msg
    gray32 = FashionMNIST(data_dir=tmp_path / "fmnist", resolution=32, system_dir=None)
    with pytest.raises(ValueError, match=r"dataset\.fashion_mnist\.resolution = 8\. .*3-channel"):
        edm_pkl(str(path), dataset=gray32)

    # The state-dict teacher shares the check; a dataset of the right shape passes.
    kwargs = {k: MODEL_KWARGS[k] for k in ("img_resolution", "in_channels", "model_channels", "channel_mult",
                                           "num_blocks", "attn_resolutions", "augment_dim")}
    torch.save(written["net"].state_dict(), tmp_path / "w.pt")
    rgb16 = ImageDataset(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), name="rgb16")
    with pytest.raises(ConfigError, match=r"w\.pt: .*\(3, 8, 8\), but ImageDataset \(rgb16\) gives \(3, 16, 16\)\. "
                                          r"Bind 8x8 images"):
        state_dict_teacher(str(tmp_path / "w.pt"), precond="vp", dataset=rgb16, **kwargs)
    rgb8 = ImageDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), name="rgb8")
    teacher = state_dict_teacher(str(tmp_path / "w.pt"), precond="vp", dataset=rgb8, **kwargs)
    assert teacher.sample_x0(2).shape == (2, 3, 8, 8) and teacher.source == str(tmp_path / "w.pt")


# -- class-conditional networks (edm-cifar10-32x32-cond-vp.pkl, EDMPrecond around DDPM++) --------
@pytest.fixture(scope="module")
def written_cond(tmp_path_factory):
    root = tmp_path_factory.mktemp("edm-cond")
    net = _random_net(1, label_dim=4)
    out = {"net": net, "marker": root / "module_src_ran"}
    for precond in ("VPPrecond", "EDMPrecond"):
        out[precond] = root / f"edm-tiny-cond-{precond}.pkl"
        write_edm_pickle(out[precond], net, out["marker"], precond, record_kwargs={**MODEL_KWARGS, "label_dim": 4})
    return out


def _one_hot(classes, label_dim=4):
    return torch.nn.functional.one_hot(torch.tensor(classes), label_dim).to(torch.float64)


@pytest.mark.parametrize("precond", ["VPPrecond", "EDMPrecond"])
def test_class_conditional_denoise_equals_edms_wrapper_with_labels(written_cond, written, precond):
    teacher = edm_pkl(str(written_cond[precond]))
    assert teacher.label_dim == 4 and not written_cond["marker"].exists()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    x_t, labels = x * (1 + sigma[:, None, None, None]), _one_hot([0, 3, 1])
    want = _edm_wrapper_float32(written_cond["net"], precond, x_t, sigma, labels)
    got = teacher.denoise(x_t, sigma, class_labels=labels)
    assert ((got.float() - want).abs().amax() / want.abs().amax()).item() <= 1e-5
    other = teacher.denoise(x_t, sigma, class_labels=_one_hot([1, 0, 2]))   # the label matters
    assert (other - got)[1:].abs().amax() > 1e-3 * got.abs().amax()
    with pytest.raises(ValueError, match=r"class-conditional \(4 classes\): its denoiser needs class_labels"):
        teacher.denoise(x_t, sigma)                                           # EDM would answer for zeros
    with pytest.raises(ValueError, match=r"one-hot of shape \(N, label_dim\) = \(3, 4\), got \(3, 3\)"):
        teacher.denoise(x_t, sigma, class_labels=labels[:, :3])
    with pytest.raises(ValueError, match="is unconditional: it takes no class_labels"):
        edm_pkl(str(written["EDMPrecond"])).denoise(x_t, sigma, class_labels=labels)


def test_class_conditional_teacher_draws_each_image_with_its_label(tmp_path, written_cond):
    from precondlab.data.images import DatasetError, ImageDataset
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ImageDataset(images, labels=[0, 1, 2, 3, 1, 2], name="tiny-labelled")
    teacher = edm_pkl(str(written_cond["EDMPrecond"]), dataset=data)
    x0, labels = teacher.sample_data(32, torch.Generator().manual_seed(3))
    assert labels.shape == (32, 4) and labels.dtype == torch.float32 and bool((labels.sum(1) == 1).all())
    torch.testing.assert_close(x0, teacher.sample_x0(32, torch.Generator().manual_seed(3)))   # the same draws
    for row, label in zip(x0, labels.argmax(1)):   # each image comes with its own label
        (match,) = [i for i in range(6) if torch.equal(row, images[i].double() / 127.5 - 1)]
        assert data.labels[match] == label
    with pytest.raises(DatasetError, match="has no labels, but the teacher is class-conditional"):
        edm_pkl(str(written_cond["EDMPrecond"]), dataset=ImageDataset(images, name="unlabelled"))
    with pytest.raises(DatasetError, match=r"labels run from 0 to 5, but the teacher knows 4 classes"):
        edm_pkl(str(written_cond["EDMPrecond"]), dataset=ImageDataset(images, labels=[0, 1, 2, 3, 4, 5]))
