"""SongUNet: shapes, EDM-compatible names and numbers, CTM's s-path, teacher initialisation."""

from __future__ import annotations

import pytest
import torch

from precondlab import registry
from precondlab.nets.songunet import SongUNet
from precondlab.students.songunet import SongUNetStudent, init_from_teacher

TINY = dict(img_resolution=8, in_channels=3, model_channels=16, channel_mult=[1, 2],
            num_blocks=1, attn_resolutions=[4])


def _randomise(net: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    """Every tensor but the fixed FIR filters, drawn in name order (zero-init layers hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    sd = net.state_dict()
    with torch.no_grad():
        for name in sorted(sd):
            if not name.endswith("resample_filter"):
                sd[name].copy_(torch.randn(sd[name].shape, generator=g) * scale)


def _student(**kw) -> SongUNetStudent:
    torch.manual_seed(0)
    return SongUNetStudent(**{**TINY, **kw}).eval()


def test_student_shapes_image_and_flat():
    net = _student(dim=3 * 8 * 8)
    x = torch.randn(4, 3, 8, 8)
    assert net(x, torch.rand(4), torch.rand(4)).shape == x.shape
    flat = net(x.reshape(4, -1).double(), torch.tensor(0.3), torch.tensor(-0.2))
    assert flat.shape == (4, 192) and flat.dtype == torch.float64


def test_student_checks_dim_and_is_registered():
    with pytest.raises(ValueError, match="dim=10"):
        SongUNetStudent(dim=10, **TINY)
    net = registry.create("student", "songunet", dim=192, **TINY)
    assert isinstance(net, SongUNet) and net.s_conditioning


def test_edm_state_dict_names():
    """The names EDM's CIFAR-10 DDPM++ checkpoint uses (spot checks, incl. attention and aux)."""
    names = set(SongUNet(img_resolution=32, in_channels=3, out_channels=3, augment_dim=9,
                         model_channels=16, channel_mult=[2, 2, 2]).state_dict())
    for name in ["map_augment.weight", "map_layer0.weight", "map_layer1.bias", "enc.32x32_conv.weight",
                 "enc.32x32_block0.norm0.weight", "enc.32x32_block0.affine.weight",
                 "enc.16x16_down.conv0.resample_filter", "enc.16x16_down.skip.weight",
                 "enc.16x16_block0.qkv.weight", "enc.16x16_block0.proj.bias", "enc.16x16_block0.norm2.weight",
                 "dec.8x8_in0.qkv.weight", "dec.8x8_in1.conv1.weight", "dec.16x16_block4.qkv.weight",
                 "dec.32x32_up.skip.resample_filter", "dec.32x32_aux_norm.weight", "dec.32x32_aux_conv.weight"]:
        assert name in names, name
    assert "map_augment.bias" not in names and "dec.16x16_block3.qkv.weight" not in names


# Outputs of EDM's own training/networks.py SongUNet for the same weights and inputs
# (weights from _randomise(seed=0), x from seed 1): pins down layouts such as the qkv split.
GOLDEN = {
    "ddpmpp": (dict(attn_resolutions=[4, 8]), -8.798090934753418,
               [0.5189517736434937, 0.8765585422515869, -0.3310076594352722, -0.24757929146289825]),
    "ncsnpp": (dict(embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                    resample_filter=[1, 3, 3, 1]), -111.52706909179688,
               [0.5927621126174927, 0.6455807685852051, -0.5519236326217651, -1.7688796520233154]),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_matches_edm_numbers(name):
    extra, total, head = GOLDEN[name]
    net = SongUNet(**{**TINY, "out_channels": 3, **extra}).eval()
    _randomise(net)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = net(x, torch.tensor([-1.2, 0.7]))
    assert y.sum().item() == pytest.approx(total, abs=1e-3)
    torch.testing.assert_close(y.flatten()[::37][:4], torch.tensor(head), atol=1e-4, rtol=1e-4)


def test_s_path_is_zero_at_init_and_trainable():
    net = _student()
    assert net.map_layer1_s.weight.abs().max() == 0 and net.map_layer1_s.bias.abs().max() == 0
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.1, -0.5])
    s1, s2 = torch.tensor([-1.0, -1.2]), torch.tensor([0.3, 0.05])
    assert torch.equal(net(x, t, s1), net(x, t, s2))
    # The same with every other layer random (at init near-zero residual branches mute the embedding).
    _randomise(net)
    with torch.no_grad():
        net.map_layer1_s.weight.zero_()
        net.map_layer1_s.bias.zero_()
    assert torch.equal(net(x, t, s1), net(x, t, s2))
    net(x, t, s1).square().sum().backward()
    assert net.map_layer1_s.weight.grad.abs().sum() > 0  # zero weights still receive gradient
    with torch.no_grad():
        net.map_layer1_s.weight.normal_(0, 0.5)
    a, b = net(x, t, s1), net(x, t, s2)
    assert (a - b).abs().max() > 1e-2 * a.abs().max()


def test_init_from_teacher_copies_matching_tensors():
    teacher = SongUNet(**{**TINY, "out_channels": 3}).eval()
    _randomise(teacher, seed=3)
    student = _student()
    copied, skipped = init_from_teacher(student, teacher.state_dict())
    assert sorted(copied) == sorted(teacher.state_dict())
    assert {k for k, why in skipped.items() if why == "not in teacher"} == {
        k for k in student.state_dict() if k.startswith(("map_layer0_s", "map_layer1_s", "map_noise_s"))}
    for name in copied:
        assert torch.equal(student.state_dict()[name], teacher.state_dict()[name])
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.2, -0.4])
    torch.testing.assert_close(student(x, t, torch.tensor([-1.0, 0.0])), teacher(x, t), rtol=0, atol=0)

    # 'model.'-prefixed names (an EDM Precond's state dict) and shape mismatches.
    bigger = SongUNet(**{**TINY, "out_channels": 3, "model_channels": 32})
    copied, skipped = init_from_teacher(_student(), {f"model.{k}": v for k, v in bigger.state_dict().items()})
    assert "map_layer0.weight" in skipped and "shape" in skipped["map_layer0.weight"]
    assert "enc.8x8_conv.weight" not in copied


def test_compiles_without_graph_breaks_and_matches_eager():
    """experiment.compile's path: the student traces as one graph (fullgraph=True fails on any
    graph break) and gives the eager numbers, forward and gradients."""
    import torch._dynamo

    eager = _student()
    _randomise(eager)
    compiled = _student()
    compiled.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    compiled.compile(backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t, s = torch.tensor([0.3, -0.2]), torch.tensor([-0.5, -1.0])
    out_e, out_c = eager(x, t, s), compiled(x, t, s)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    out_e.square().sum().backward()
    out_c.square().sum().backward()
    for (name, p_e), p_c in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch._dynamo.reset()


def test_adaptive_dsm_weight_uses_the_output_convolution():
    """CTM scales the DSM term by |grad_last L_ctm| / |grad_last L_dsm|: the UNet student names
    its last layer, so the weight is adapted (not left at dsm_weight) and finite."""
    from precondlab.preconditioners.ctm import CTMPrecond
    from precondlab.teachers.gmm import GMMTeacher
    from precondlab.training.objectives import CTMObjective

    student = _student(dim=192).train()
    assert student.last_layer() is student.dec["8x8_aux_conv"].weight
    teacher = GMMTeacher(dim=192, num_components=2, seed=0)
    objective = CTMObjective(num_timesteps=6, dsm_weight=1.0, dsm_adaptive=True)
    x0 = teacher.sample_x0(4, torch.Generator().manual_seed(0)).float()
    loss, logs = objective(student, student, CTMPrecond(), teacher, x0, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and torch.isfinite(logs["dsm_weight"])
    assert float(logs["dsm_weight"]) != 1.0


def test_student_rejects_images_of_another_size():
    net = _student(dim=3 * 8 * 8)
    with pytest.raises(ValueError, match=r"3x8x8 images .*\(4, 1, 8, 8\) \(64 per example\).*in_channels"):
        net(torch.randn(4, 1, 8, 8), torch.rand(4), torch.rand(4))
    with pytest.raises(ValueError, match=r"\(2, 768\)"):
        net(torch.randn(2, 3 * 16 * 16), torch.rand(2), torch.rand(2))
