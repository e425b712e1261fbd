"""EDM's ADM network (DhariwalUNet): its tensor names and shapes as EDM's constructor makes them,
its residual block against EDM's formulas, and a class-conditional ADM snapshot in EDM's pickle
format read strictly, as a teacher equal to EDM's wrapper and as the start of a student."""

import math

import pytest
import torch
import torch.nn.functional as F

from precondlab.nets.dhariwalunet import DhariwalUNet
from precondlab.nets.songunet import UNetBlock
from precondlab.students.dhariwalunet import DhariwalUNetStudent
from precondlab.students.songunet import init_from_teacher
from precondlab.teachers.edm_pkl import edm_pkl

# 64 and 128 channels: one and two attention heads (EDM: one per 64 channels; none below 64)
ADM = dict(img_resolution=16, in_channels=3, out_channels=3, label_dim=5, augment_dim=0, model_channels=32,
           channel_mult=[2, 4], num_blocks=2, attn_resolutions=[8], dropout=0.1)


def edm_adm_shapes(img_resolution, in_channels, out_channels, label_dim, model_channels, channel_mult, num_blocks,
                   attn_resolutions, channel_mult_emb=4, **_):
    """The state dict EDM's DhariwalUNet.__init__ builds, name -> shape, written out from its rules
    (a second reading of training/networks.py, independent of precondlab/nets)."""
    E, shapes = model_channels * channel_mult_emb, {}

    def conv(name, cin, cout, kernel, resample=False):
        if kernel:
            shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, kernel, kernel), (cout,)
        if resample:
            shapes[f"{name}.resample_filter"] = (1, 1, 2, 2)

    def norm(name, c):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)

    def block(name, cin, cout, up=False, down=False, attention=False):
        norm(f"{name}.norm0", cin)
        conv(f"{name}.conv0", cin, cout, 3, up or down)
        shapes[f"{name}.affine.weight"], shapes[f"{name}.affine.bias"] = (2 * cout, E), (2 * cout,)  # adaptive scale
        norm(f"{name}.norm1", cout)
        conv(f"{name}.conv1", cout, cout, 3)
        if cin != cout or up or down:
            conv(f"{name}.skip", cin, cout, 1 if cin != cout else 0, up or down)   # resample_proj=False
        if attention and cout // 64:                            # heads of 64 channels
            norm(f"{name}.norm2", cout)
            conv(f"{name}.qkv", cout, 3 * cout, 1)
            conv(f"{name}.proj", cout, cout, 1)
        return cout

    shapes.update({"map_layer0.weight": (E, model_channels), "map_layer0.bias": (E,),
                   "map_layer1.weight": (E, E), "map_layer1.bias": (E,)})
    if label_dim:
        shapes["map_label.weight"] = (E, label_dim)              # no bias
    cout, skips = in_channels, []
    for level, mult in enumerate(channel_mult):
        res = img_resolution >> level
        if level == 0:
            conv(f"enc.{res}x{res}_conv", cout, model_channels * mult, 3)
            cout = model_channels * mult
        else:
            block(f"enc.{res}x{res}_down", cout, cout, down=True)
        skips.append(cout)
        for i in range(num_blocks):
            cout = block(f"enc.{res}x{res}_block{i}", cout, model_channels * mult, attention=res in attn_resolutions)
            skips.append(cout)
    for level, mult in reversed(list(enumerate(channel_mult))):
        res = img_resolution >> level
        if level == len(channel_mult) - 1:
            block(f"dec.{res}x{res}_in0", cout, cout, attention=True)
            block(f"dec.{res}x{res}_in1", cout, cout)
        else:
            block(f"dec.{res}x{res}_up", cout, cout, up=True)
        for i in range(num_blocks + 1):
            cout = block(f"dec.{res}x{res}_block{i}", cout + skips.pop(), model_channels * mult,
                         attention=res in attn_resolutions)
    norm("out_norm", cout)
    conv("out_conv", cout, out_channels, 3)
    return shapes


def test_tensor_names_and_shapes_are_edms():
    ours = {k: tuple(v.shape) for k, v in DhariwalUNet(**ADM).state_dict().items()}
    assert ours == edm_adm_shapes(**ADM)
    # the real ImageNet-64 network: EDM's published size (296M parameters)
    with torch.device("meta"):
        big = DhariwalUNet(img_resolution=64, in_channels=3, out_channels=3, label_dim=1000)
    assert {k: tuple(v.shape) for k, v in big.state_dict().items()} == edm_adm_shapes(
        64, 3, 3, 1000, 192, [1, 2, 3, 4], 3, [32, 16, 8])
    assert 295e6 < sum(p.numel() for p in big.parameters()) < 297e6


def test_adaptive_block_is_edms_formula():
    """EDM's UNetBlock with ADM's settings, written out: scale-and-shift by the embedding, skip
    resampled without a projection, sums unscaled, GroupNorm eps 1e-5, heads of 64 channels."""
    torch.manual_seed(0)
    block = UNetBlock(128, 128, 32, down=True, attention=True, eps=1e-5, adaptive_scale=True, skip_scale=1.0,
                      resample_proj=False, channels_per_head=64).double().eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, emb = torch.randn(2, 128, 8, 8, dtype=torch.float64), torch.randn(2, 32, dtype=torch.float64)

    def gn(h, m):
        return F.group_norm(h, 32, m.weight, m.bias, eps=1e-5)
    box = torch.full((128, 1, 2, 2), 0.25, dtype=torch.float64)            # the [1, 1] filter, 2x down
    h = F.conv2d(F.conv2d(F.silu(gn(x, block.norm0)), box, stride=2, groups=128), block.conv0.weight,
                 block.conv0.bias, padding=1)
    scale, shift = (emb @ block.affine.weight.T + block.affine.bias)[:, :, None, None].chunk(2, dim=1)
    h = F.silu(shift + gn(h, block.norm1) * (scale + 1))
    h = F.conv2d(h, block.conv1.weight, block.conv1.bias, padding=1)
    y = h + F.conv2d(x, box, stride=2, groups=128)                       # skip: the resampled input
    q, k, v = F.conv2d(gn(y, block.norm2), block.qkv.weight, block.qkv.bias).reshape(2 * 2, 64, 3, -1).unbind(2)
    w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(64)).softmax(dim=2)
    a = torch.einsum("nqk,nck->ncq", w, v).reshape(2, 128, 4, 4)
    want = F.conv2d(a, block.proj.weight, block.proj.bias) + y
    assert block.num_heads == 2 and block.skip.weight is None
    torch.testing.assert_close(block(x, emb), want)


@pytest.fixture(scope="module")
def adm_snapshot(tmp_path_factory):
    from test_edm_pkl import write_edm_pickle
    root = tmp_path_factory.mktemp("adm")
    torch.manual_seed(3)
    net = DhariwalUNet(**ADM).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, value in sorted(net.state_dict().items()):
            if not name.endswith("resample_filter"):
                value.copy_(torch.randn(value.shape, generator=g) * 0.1)
    path = root / "edm-tiny-imagenet-16x16-cond-adm.pkl"   # as edm-imagenet-64x64-cond-adm.pkl: fp16, EDMPrecond
    write_edm_pickle(path, net, root / "marker", "EDMPrecond", model_class="DhariwalUNet", record_kwargs=ADM,
                     extra_state={"use_fp16": True})
    return {"path": path, "net": net, "marker": root / "marker"}


def test_a_class_conditional_adm_snapshot_is_a_teacher_equal_to_edms_wrapper(adm_snapshot):
    from test_edm_pkl import _edm_wrapper_float32
    with pytest.warns(UserWarning, match="honoured on CUDA only"):
        teacher = edm_pkl(str(adm_snapshot["path"]))
    assert not adm_snapshot["marker"].exists()                  # no embedded code ran
    assert type(teacher.net) is DhariwalUNet and teacher.label_dim == 5 and teacher.shape == (3, 16, 16)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    x_t = x * (1 + sigma[:, None, None, None])
    labels = torch.nn.functional.one_hot(torch.tensor([4, 0, 2]), 5).double()
    want = _edm_wrapper_float32(adm_snapshot["net"], "EDMPrecond", x_t, sigma, labels)
    got = teacher.denoise(x_t, sigma, class_labels=labels)
    assert ((got.float() - want).abs().amax() / want.abs().amax()).item() <= 1e-5
    with pytest.raises(ValueError, match="class-conditional"):
        teacher.denoise(x_t, sigma)


def test_an_adm_student_starts_as_its_teacher(adm_snapshot):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = edm_pkl(str(adm_snapshot["path"]))
    kwargs = {k: ADM[k] for k in ("img_resolution", "label_dim", "model_channels", "channel_mult", "num_blocks",
                                  "attn_resolutions")}
    student = DhariwalUNetStudent(dim=3 * 16 * 16, **kwargs).eval()
    copied, skipped = init_from_teacher(student, teacher.net)
    assert len(copied) == len(teacher.net.state_dict())                       # all of the teacher
    assert {name.split(".")[0] for name in skipped} == {"map_layer0_s", "map_layer1_s"}   # only the s-path is new
    x, c = torch.randn(2, 3, 16, 16), torch.tensor([0.3, -1.0])
    labels = torch.nn.functional.one_hot(torch.tensor([1, 3]), 5).float()
    with torch.no_grad():   # the s-path starts at zero: whatever s, the student is its teacher
        torch.testing.assert_close(student(x, c, c.flip(0), class_labels=labels), teacher.net(x, c, class_labels=labels))
    with pytest.raises(ValueError, match="got no class_labels"):
        student(x, c, c)
