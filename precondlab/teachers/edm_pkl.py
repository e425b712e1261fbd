"""Teacher from an official EDM checkpoint (``edm-*.pkl``), read without EDM's code.

EDM snapshots are ``pickle.dump(dict(ema=..., loss_fn=..., augment_pipe=..., dataset_kwargs=...))``
where every network object goes through ``torch_utils.persistence``: it is pickled as a call
``_reconstruct_persistent_obj(meta)`` with ``meta = {type: 'class', version: 6, module_src: <the
whole source of training/networks.py>, class_name, state: the object's __dict__}``. Plain pickle
loading would *execute module_src*. We never do: a restricted unpickler maps that function to
a stand-in that keeps ``(class_name, state)`` as a :class:`ModuleRecord`, and allows only what
the networks' state needs:

* ``torch.storage._load_from_bytes`` - each storage is embedded as legacy ``torch.save`` bytes;
  we reopen them with ``torch.load(weights_only=True)``;
* ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` (checked, re-implemented calls);
* ``collections.OrderedDict``, torch dtypes, numpy scalars of numeric dtype (EDM stores
  ``np.sqrt(0.5)`` as a block attribute), ``torch.nn.ModuleDict`` (as a record: ``enc``/``dec``).

Anything else raises :class:`CheckpointError` naming the file and the refused global.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import io
import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from precondlab.errors import CheckpointError, UserInputError  # noqa: F401 - CheckpointError re-exported
from precondlab.hashing import update_with_file, update_with_tensor
from precondlab.nets.dhariwalunet import DhariwalUNet
from precondlab.nets.songunet import SongUNet
from precondlab.preconditioners.base import edm_scalings
from precondlab.registry import register
from precondlab.schedules import EDMSchedule, Schedule, _bcast
from precondlab.teachers.base import Teacher, check_labels

EDM_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
DEFAULT_PKL = "edm-cifar10-32x32-uncond-vp.pkl"
PRECONDS = {"VPPrecond": "vp", "VEPrecond": "ve", "EDMPrecond": "edm"}
# What EDM's pretrained files are (its README and training/networks.py): edm-* (config F) are
# EDMPrecond; baseline-* are VPPrecond / VEPrecond (cifar10, ffhq, afhqv2) or iDDPMPrecond
# (baseline-imagenet); "vp"/"ve" in a file name is the architecture (DDPM++ / NCSN++), "adm" is
# DhariwalUNet; "cond" files are class-conditional.
REFUSED_PRECONDS = {
    "iDDPMPrecond": "its noise levels are rounded to the 1000 discrete steps of improved DDPM and its "
                    "network predicts a learned variance too; precondlab reads continuous-time wrappers only "
                    "(VPPrecond, VEPrecond, EDMPrecond)",
}


def missing_file_message(path: Path) -> str:
    name = path.name if path.name.startswith("edm-") else DEFAULT_PKL
    return (f"EDM checkpoint not found: {path}. Download it from {EDM_URL}{name} and save it at that "
            f"path, or point the config at where it lies (teacher.edm_pkl.path = '...').")


# -- records standing in for EDM's objects ------------------------------------------------------
class ModuleRecord:
    """What an EDM object was, as data: its class name and its ``__dict__`` (never its code)."""

    def __init__(self, class_name: str, state: dict, version: int | None = None, source_chars: int = 0):
        self.class_name, self.state, self.version, self.source_chars = class_name, state, version, source_chars

    def __repr__(self) -> str:
        return f"ModuleRecord({self.class_name}, {len(self.state)} fields)"

    @property
    def modules(self) -> dict:
        return self.state.get("_modules") or {}

    def named_tensors(self, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
        """Parameters and persistent buffers by dotted name, in ``nn.Module.state_dict`` order."""
        transient = set(self.state.get("_non_persistent_buffers_set") or ())
        for name, value in (self.state.get("_parameters") or {}).items():
            if value is not None:
                yield prefix + name, value
        for name, value in (self.state.get("_buffers") or {}).items():
            if value is not None and name not in transient:
                yield prefix + name, value
        for name, child in self.modules.items():
            if isinstance(child, ModuleRecord):
                yield from child.named_tensors(f"{prefix}{name}.")
            elif child is not None:
                raise CheckpointError(f"submodule {prefix}{name} is a {type(child).__name__}, not a module record")


class _ContainerRecord(ModuleRecord):
    """torch.nn.ModuleDict & co. are pickled by class (NEWOBJ) then filled by BUILD."""

    def __init__(self):  # pickle's NEWOBJ calls __new__ only; BUILD calls __setstate__.
        super().__init__(type(self).__name__, {})

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"{type(self).__name__} state is a {type(state).__name__}, not a dict")
        self.class_name, self.state, self.version, self.source_chars = type(self).__name__, state, None, 0


_CONTAINERS = {name: type(name, (_ContainerRecord,), {}) for name in ("ModuleDict", "ModuleList", "Sequential")}


class _EasyDict(dict):
    """dnnlib.EasyDict is a dict with attribute access; the data is all we keep."""


# -- the allowed callables: each checks its arguments, none can reach arbitrary code ----------
def _persistent_record(meta: Any) -> ModuleRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise CheckpointError("persistent object without the expected meta {type: 'class', state: {...}}")
    src = meta.get("module_src")
    return ModuleRecord(str(meta.get("class_name")), meta["state"], meta.get("version"),
                        len(src) if isinstance(src, str) else 0)  # the source is measured, never run


def _storage_from_bytes(data: bytes):
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("embedded storage is not bytes")
    from precondlab.safe_load import load_tensors
    storage = load_tensors(data, "embedded tensor storage")
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"embedded storage bytes hold a {type(storage).__name__}")
    return storage


def _tensor(storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"tensor storage is a {type(storage).__name__}")
    if backward_hooks:
        raise CheckpointError("tensor carries backward hooks")
    return torch._utils._rebuild_tensor_v2(storage, int(offset), tuple(size), tuple(stride),
                                           bool(requires_grad), collections.OrderedDict(), metadata)


def _parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, torch.Tensor) or backward_hooks:
        raise CheckpointError("parameter without a plain tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))  # extra attributes dropped


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
        raise CheckpointError(f"numpy scalar of dtype {dtype!r} (only numeric ones are read)")
    return _NP_SCALAR(dtype, data).item()


try:
    _NP_SCALAR = np._core.multiarray.scalar  # numpy >= 2
except AttributeError:  # pragma: no cover - numpy 1.x
    _NP_SCALAR = np.core.multiarray.scalar

_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,   # written by numpy 1.x (EDM's release)
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # written by numpy 2.x
    ("numpy", "dtype"): np.dtype,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    **{("torch.nn.modules.container", name): cls for name, cls in _CONTAINERS.items()},
}


class _RestrictedUnpickler(pickle._Unpickler):
    """pickle's own Python unpickler, so that its memo is a dict we can reach: each embedded
    storage's bytes leave the memo once the storage is made from them. The C unpickler keeps
    every bytes object until load() returns, which puts a floor of 2x the file on the peak
    (benchmarks/teacher_load_memory.py: 2.0x with it, 1.0x without the floor)."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def _storage_dropping_bytes(self, data: bytes):
        storage = _storage_from_bytes(data)
        # The bytes, and the argument tuple holding them, were memoized a few entries back: blank
        # those entries (EDM writes each storage's bytes once, so nothing refers back to them; the
        # entries stay, as the memo's next index is its length).
        for key in sorted(self.memo, reverse=True)[:8]:
            value = self.memo[key]
            if value is data or (type(value) is tuple and any(item is data for item in value)):
                self.memo[key] = None
        return storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return self._storage_dropping_bytes
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(f"{self.path}: refused to load global {module}.{name}: an EDM checkpoint "
                              f"holds only networks and tensors, and this loader runs no code from a pickle.")

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self.path}: unexpected persistent id {pid!r} (not a plain EDM pickle)")


def read_edm_pickle(path: str | Path) -> Any:
    """Unpickle an EDM snapshot into dicts, tensors and ModuleRecords; runs none of its code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(missing_file_message(path))
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        try:
            return _RestrictedUnpickler(f, path).load()
        except CheckpointError as exc:
            msg = str(exc)
            raise CheckpointError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
            raise CheckpointError(f"{path}: not a readable EDM pickle ({type(exc).__name__}: {exc})") from exc


# -- from records to our network ----------------------------------------------------------------
@dataclass
class EDMCheckpoint:
    """The parts of an EDM snapshot a teacher needs, as plain data."""

    path: Path
    precond: str                          # 'vp', 've' or 'edm'
    precond_class: str                    # EDM's class name, e.g. 'VPPrecond'
    precond_params: dict                  # beta_d, beta_min, M, sigma_data, sigma_min, ... as stored
    model_kwargs: dict                    # the network's constructor arguments as recorded
    state_dict: dict[str, torch.Tensor]   # the inner model's tensors, EDM's names
    keys: list[str]                       # top-level keys of the snapshot
    model_class: str = "SongUNet"         # EDM's network class: a key of NETWORKS


# EDM's network classes and ours, whose arguments and tensor names are EDM's
NETWORKS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def _init_kwargs(record: ModuleRecord, path: Path) -> dict:
    """Constructor arguments recorded by persistence (``_init_args``/``_init_kwargs`` in the state)."""
    args, kwargs = record.state.get("_init_args"), record.state.get("_init_kwargs")
    if kwargs is None:
        raise CheckpointError(f"{path}: {record.class_name} has no recorded init kwargs")
    names = list(inspect.signature(NETWORKS[record.class_name]).parameters)  # EDM's order for its own arguments
    merged = dict(zip(names, args or ()))
    merged.update(kwargs)
    return merged


def load_edm_checkpoint(path: str | Path, key: str = "ema") -> EDMCheckpoint:
    path = Path(path)
    data = read_edm_pickle(path)
    if not isinstance(data, dict) or key not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: expected a dict with key {key!r} (EDM snapshots hold 'ema'), found {found}")
    net = data[key]
    if isinstance(net, ModuleRecord) and net.class_name in REFUSED_PRECONDS:
        raise CheckpointError(f"{path}: {key!r} is {net.class_name}, not supported: "
                              f"{REFUSED_PRECONDS[net.class_name]}")
    if not isinstance(net, ModuleRecord) or net.class_name not in PRECONDS:
        kind = net.class_name if isinstance(net, ModuleRecord) else type(net).__name__
        raise CheckpointError(f"{path}: {key!r} is {kind}; supported: {', '.join(PRECONDS)}")
    model = net.modules.get("model")
    if not isinstance(model, ModuleRecord) or model.class_name not in NETWORKS:
        kind = model.class_name if isinstance(model, ModuleRecord) else type(model).__name__
        raise CheckpointError(f"{path}: the network is {kind}; supported: SongUNet (DDPM++/NCSN++: EDM's "
                              f"CIFAR-10, FFHQ-64 and AFHQv2-64 checkpoints) and DhariwalUNet (ADM: ImageNet-64)")
    fields = ("sigma_data", "beta_d", "beta_min", "M", "epsilon_t", "sigma_min", "sigma_max", "label_dim", "use_fp16")
    params = {k: net.state[k] for k in fields if k in net.state}
    model_kwargs = _init_kwargs(model, path)
    label_dims = {int(params.get("label_dim") or 0), int(model_kwargs.get("label_dim") or 0)}
    if len(label_dims) > 1:
        raise CheckpointError(f"{path}: the wrapper says label_dim = {params.get('label_dim')}, its network "
                              f"{model_kwargs.get('label_dim')}: not a snapshot EDM wrote")
    # no copy: the tensors were rebuilt from storages of their own, and build_songunet adopts them
    # as the network's weights (benchmarks/teacher_load_memory.py measures the peak)
    state_dict = {name: t.detach() for name, t in model.named_tensors()}
    return EDMCheckpoint(path, PRECONDS[net.class_name], net.class_name, params, model_kwargs, state_dict,
                         sorted(data), model.class_name)


def build_songunet(kwargs: dict, state_dict: dict[str, torch.Tensor], source: str,
                   model_class: str = "SongUNet") -> SongUNet | DhariwalUNet:
    """EDM's network (SongUNet, or DhariwalUNet) from recorded kwargs, loaded strictly; mismatches
    name the tensors."""
    cls = NETWORKS[model_class]
    unknown = sorted(set(kwargs) - set(inspect.signature(cls).parameters))
    if unknown:
        raise CheckpointError(f"{source}: {model_class} arguments we do not implement: {unknown}")
    with torch.device("meta"):   # shapes only: the loaded tensors become the weights (no second copy)
        net = cls(**kwargs)
    ours = net.state_dict()
    missing = sorted(set(ours) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(ours))
    wrong = sorted(f"{k} {tuple(state_dict[k].shape)} vs ours {tuple(ours[k].shape)}"
                   for k in set(ours) & set(state_dict) if state_dict[k].shape != ours[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(f"{source}: weights do not fit {model_class}({kwargs}): missing {missing[:10]}"
                              f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                              f"{' ...' if len(unexpected) > 10 else ''}, shape mismatches {wrong[:10]}")
    net.load_state_dict(state_dict, strict=True, assign=True)
    return net


# -- the teacher --------------------------------------------------------------------------------
class EDMNetTeacher(Teacher):
    """D(x, t) of an EDM SongUNet or DhariwalUNet under EDM's VP, VE or EDM preconditioning, with t = sigma.

    All three of EDM's wrappers take the unscaled x = x_0 + sigma * n, so the teacher lives on
    our EDM schedule whatever its training SDE. As EDM's wrappers do, the scalings and the
    wrapper's arithmetic are float32 whatever the caller's dtype (the result is returned in the
    caller's dtype), so D equals EDM's own ``net(x, sigma)`` to round-off.

    EDM's released ``edm-*`` checkpoints (``edm-cifar10-32x32-uncond-vp.pkl`` included: "vp" is
    the DDPM++ architecture) are EDMPrecond, whose noise label log(sigma) / 4 is the student's
    too. VPPrecond (EDM's ``baseline-*-vp.pkl``) feeds c_noise = (M - 1) * sigma_inv(sigma), a
    DDPM timestep in [0, 999]: a student initialised from such a teacher sees other noise labels
    (and c_in, c_out) than the teacher did and starts near, not at, it.

    A class-conditional network (``label_dim > 0``, e.g. ``edm-cifar10-32x32-cond-vp.pkl``) takes
    one-hot ``class_labels`` (N, label_dim) and refuses to run without them (EDM's wrapper would
    silently answer for an all-zero label); its data must be labelled, and ``sample_data`` draws
    each image's label with it.
    """

    def __init__(self,
                 net: SongUNet,                      # the raw network F
                 precond: str = "edm",               # 'edm', 'vp' or 've'
                 sigma_data: float = 0.5,            # EDM preconditioning
                 beta_d: float = 19.9,               # VP: extent of the beta schedule
                 beta_min: float = 0.1,              # VP: initial beta
                 M: int = 1000,                      # VP: DDPM timesteps
                 schedule: Schedule | None = None,   # time grid for students (default EDM's)
                 dataset: Any = None,                # anything with sample_x0(n, generator)
                 device: str | torch.device = "cpu",  # where the network runs
                 source: str | None = None,          # the checkpoint file, named in errors
                 use_fp16: bool = False):            # EDM's flag: float16 on CUDA (ImageNet-64's ADM)
        super().__init__(schedule or EDMSchedule())
        if precond not in ("edm", "vp", "ve"):
            raise ValueError(f"precond must be 'edm', 'vp' or 've', got {precond!r}")
        self.shape = (net.in_channels, net.img_resolution, net.img_resolution)
        self.dim = net.in_channels * net.img_resolution ** 2
        self.source = source or "in-memory network"
        check_dataset_shape(self.shape, dataset, self.source)  # before moving the net to the device
        self.net = net.to(device).eval().requires_grad_(False)
        self.precond, self.sigma_data, self.beta_d, self.beta_min, self.M = precond, sigma_data, beta_d, beta_min, M
        self.dataset, self.device = dataset, torch.device(device)
        self.label_dim = int(net.label_dim)
        self.use_fp16 = bool(use_fp16)
        if self.use_fp16 and self.device.type != "cuda":
            warnings.warn(f"{self.source}: the snapshot asks for float16 (use_fp16), honoured on CUDA only: on the "
                          f"{self.device.type} its network runs in float32, as EDM's own code does there", stacklevel=2)
        if self.label_dim and dataset is not None:
            if not hasattr(dataset, "sample_labelled"):
                from precondlab.config import ConfigError
                raise ConfigError(f"{self.source} is class-conditional ({self.label_dim} classes), but its dataset "
                                  f"{type(dataset).__name__} cannot draw labelled images (sample_labelled)")
            dataset.check_labels(self.label_dim)

    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """VP: the t in [0, 1] whose sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) is sigma.
        EDM's own float32 expression, log(1 + sigma^2) rather than log1p: at sigma_min = 0.002 the
        two differ by ~2% and the network was trained on EDM's."""
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def scalings(self, sigma: torch.Tensor):
        """c_skip, c_out, c_in, c_noise of EDM's Table 1 for this preconditioning."""
        one = torch.ones_like(sigma)
        if self.precond == "vp":
            return one, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)
        if self.precond == "ve":
            return one, sigma, one, torch.log(0.5 * sigma)
        return edm_scalings(sigma, self.sigma_data)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(self, x, class_labels)
        n = x.shape[0]
        # EDM's wrappers: x and sigma in float32, the network in its own dtype, D in float32
        img = x.reshape(n, *self.shape).to(self.device, torch.float32)
        sigma = torch.as_tensor(t).to(self.device, torch.float32).reshape(-1).expand(n)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        dtype = self.net.map_layer0.weight.dtype
        labels = class_labels.to(self.device, torch.float32) if class_labels is not None else None
        # use_fp16 on CUDA: EDM runs the network in float16; here autocast's float16 (convolutions and
        # matmuls in float16, normalisations and softmax in float32), the wrapper's arithmetic in float32
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_fp16 and self.device.type == "cuda"):
            F_x = self.net((_bcast(c_in, img) * img).to(dtype), c_noise.to(dtype), class_labels=labels)
        D = _bcast(c_skip, img) * img + _bcast(c_out, img) * F_x.to(torch.float32)
        return D.to(x.device, x.dtype).reshape(x.shape)

    def sample_x0(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.dataset is None or not hasattr(self.dataset, "sample_x0"):
            raise NotImplementedError(
                f"{type(self).__name__} ({self.source}) holds a network, not its data: bind a dataset "
                f"with sample_x0(n, generator), e.g. teacher.edm_pkl.dataset = @dataset.<name>()")
        return self.dataset.sample_x0(n, generator).to("cpu", torch.float64).reshape(n, *self.shape)

    def sample_data(self, n: int, generator: torch.Generator | None = None):
        """(images, one-hot labels drawn with them) for a class-conditional network, else (images, None)."""
        if not self.label_dim:
            return self.sample_x0(n, generator), None
        self.sample_x0(0)   # the missing-dataset message
        x0, labels = self.dataset.sample_labelled(n, self.label_dim, generator)
        return x0.to("cpu", torch.float64).reshape(n, *self.shape), labels

    @property
    def dtype(self) -> torch.dtype:
        """The network's dtype: statistics (AnalyticODE) are estimated in it, not in float64."""
        return self.net.map_layer0.weight.dtype

    def fingerprint(self) -> str:
        """sha256 of what the denoiser and its data are: the checkpoint file's bytes (or, for an
        in-memory network, its tensors), the preconditioning and the dataset's images. Computed
        once per teacher; keys the AnalyticODE statistics cache."""
        cached = getattr(self, "_fingerprint", None)
        if cached is not None and cached[0] == self.source:
            return cached[1]
        h = hashlib.sha256()
        params = {"precond": self.precond, "sigma_data": self.sigma_data, **({"use_fp16": True} if self.use_fp16 else {})}
        if self.precond == "vp":
            params.update(beta_d=self.beta_d, beta_min=self.beta_min, M=self.M)
        h.update(json.dumps(params, sort_keys=True).encode())
        path = Path(self.source)
        if path.is_file():
            h.update(b"file:")
            update_with_file(h, path)
        else:
            for name, tensor in self.net.state_dict().items():
                update_with_tensor(h, name, tensor)
        h.update(b"data:" + _dataset_fingerprint(self.dataset).encode())
        self._fingerprint = (self.source, h.hexdigest())
        return self._fingerprint[1]

    def describe(self) -> dict:
        return {"teacher": type(self).__name__, "dim": self.dim, "precond": self.precond, "source": self.source}


def _dataset_registry_name(dataset: Any) -> str | None:
    """The name the dataset's class is registered under (``fashion_mnist``), if it is."""
    from precondlab import registry
    cls = type(dataset)
    for entry in registry.list_entries("dataset"):
        if entry.obj is cls or (entry.module == cls.__module__
                                and getattr(entry.obj, "__qualname__", None) == cls.__qualname__):
            return entry.name
    return None


def check_dataset_shape(shape: tuple[int, int, int], dataset: Any, source: str) -> None:
    """A ConfigError when the dataset's images (its ``shape``, (C, H, W)) are not what the network
    at ``source`` takes; datasets that do not say their shape are not checked."""
    found = getattr(dataset, "shape", None) if dataset is not None else None
    try:
        found = tuple(int(v) for v in found) if found is not None else None
    except (TypeError, ValueError):
        return
    if found is None or len(found) != 3 or found == tuple(shape):
        return
    from precondlab.config import ConfigError
    c, r = shape[0], shape[1]
    name = _dataset_registry_name(dataset)
    label = f"dataset.{name}" if name else type(dataset).__name__
    if getattr(dataset, "name", None):
        label += f" ({dataset.name})"
    todo = []
    if found[1:] != tuple(shape[1:]):
        if name and "resize" in inspect.signature(type(dataset)).parameters:
            todo.append(f"Set dataset.{name}.resolution = {r}.")
        else:
            todo.append(f"Bind {r}x{r} images (resized, e.g., with EDM's dataset_tool.py --resolution={r}).")
    if found[0] != c:
        todo.append(f"Bind a {c}-channel dataset (the one the network was trained on): it cannot take "
                    f"{found[0]}-channel images.")
    raise ConfigError(
        f"{source}: the teacher network takes images of shape (C, H, W) = {tuple(shape)}, but {label} "
        f"gives {found}. {' '.join(todo)} Or use a teacher trained on this data (precondlab train-teacher), "
        f"with the student's IMG_CHANNELS / IMG_RESOLUTION set to its shape.")


def _dataset_fingerprint(dataset: Any) -> str:
    """A dataset's identity: its own fingerprint(), else its class, describe() and image bytes."""
    if dataset is None:
        return "none"
    fp = getattr(dataset, "fingerprint", None)
    if callable(fp):
        return str(fp())
    h = hashlib.sha256(f"{type(dataset).__module__}.{type(dataset).__qualname__}".encode())
    describe = getattr(dataset, "describe", None)
    if callable(describe):
        h.update(json.dumps(describe(), sort_keys=True, default=str).encode())
    for attr in ("images", "labels", "points"):
        value = getattr(dataset, attr, None)
        if isinstance(value, torch.Tensor):
            update_with_tensor(h, attr, value)
    return h.hexdigest()


@register("teacher", "edm_pkl")
def edm_pkl(path: str = f"checkpoints/{DEFAULT_PKL}",  # an official EDM snapshot (.pkl)
            key: str = "ema",                            # which network of the snapshot
            schedule: Schedule | None = None,            # time grid for students
            dataset: Any = None,                         # data sampler (sample_x0)
            device: str = "cpu") -> EDMNetTeacher:       # where the network runs
    """An official EDM checkpoint (VP/VE/EDM wrapper around a SongUNet or DhariwalUNet,
    unconditional or class-conditional) read safely; t = sigma."""
    ckpt = load_edm_checkpoint(path, key)
    net = build_songunet(ckpt.model_kwargs, ckpt.state_dict, str(ckpt.path), ckpt.model_class)
    keep = {k: ckpt.precond_params[k] for k in ("sigma_data", "beta_d", "beta_min", "M") if k in ckpt.precond_params}
    return EDMNetTeacher(net, ckpt.precond, schedule=schedule, dataset=dataset, device=device,
                         source=str(ckpt.path), use_fp16=bool(ckpt.precond_params.get("use_fp16")), **keep)
