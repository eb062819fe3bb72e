from __future__ import annotations

import torch
from torch import nn

from facenas.models import build_model
from facenas.models.layers import PlainConv, SeparableConv
from facenas.space.arch import Arch, Profile


def test_layers_are_preactivation_relu_op_bn():
    model = build_model(Arch(8, 4, [0, 1, 0, 1], [3, 5, 7, 3], Profile.paper(3, 10)))
    sep, conv = model.layers[0], model.layers[1]
    assert isinstance(sep, SeparableConv) and isinstance(conv, PlainConv)
    assert [type(m) for m in sep] == [nn.ReLU, nn.Conv2d, nn.Conv2d, nn.BatchNorm2d]
    assert sep[1].groups == sep[1].in_channels and sep[1].kernel_size == (3, 3) and sep[2].kernel_size == (1, 1)
    assert [type(m) for m in conv] == [nn.ReLU, nn.Conv2d, nn.BatchNorm2d]
    assert conv[1].kernel_size == (5, 5) and conv[1].padding == (2, 2)
    assert all(c.bias is None for c in model.modules() if isinstance(c, nn.Conv2d))
    # the stem has no activation
    assert [type(m) for m in model.stem] == [nn.Conv2d, nn.BatchNorm2d]


def test_reductions_halve_resolution_and_double_channels():
    arch = Arch.uniform(6, 9, Profile.paper(1, 10))
    model = build_model(arch).eval()
    x = torch.zeros(2, 1, 28, 28)
    shapes = []
    h = model.stem(x)
    for layer in model.layers:
        h = layer(h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes[2] == (6, 28, 28) and shapes[3] == (12, 14, 14) and shapes[6] == (24, 7, 7)
    assert model(x).shape == (2, 10)


def test_embedding_head_outputs_embedding():
    profile = Profile(in_channels=3, stem_stride=2, reductions=3, head="embedding", embedding_dim=32,
                      input_size=112)
    model = build_model(Arch.uniform(4, 5, profile)).eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 112, 112)).shape == (3, 32)


def test_shortcuts_wrap_exactly_the_shape_preserving_layers():
    from facenas.models.chain import Residual
    from facenas.space.count import count_params

    profile = Profile(in_channels=1, stem_stride=1, reductions=3, head="embedding", embedding_dim=16,
                      input_size=32, shortcut=True)
    arch = Arch(4, 8, [0, 1, 0, 1, 1, 0, 0, 1], [3] * 8, profile)
    model = build_model(arch).eval()
    wrapped = [i for i, layer in enumerate(model.layers) if isinstance(layer, Residual)]
    # layer 0 goes from the stem's 2C to C and layers 2, 4, 6 reduce: every other layer keeps its shape
    assert wrapped == [i for i, s in enumerate(arch.layers()) if s.stride == 1 and s.c_in == s.c_out] == [1, 3, 5, 7]
    x = torch.randn(2, 4, 16, 16)
    layer = model.layers[1]
    with torch.no_grad():
        assert torch.allclose(layer(x), x + layer.layer(x))
    plain = Arch(4, 8, arch.ops, arch.kernels, Profile(**{**profile.to_dict(), "shortcut": False}))
    assert count_params(arch) == count_params(plain) == sum(p.numel() for p in model.parameters())
    assert not any(isinstance(m, Residual) for m in build_model(plain).modules())


def test_the_shortcut_survives_json_and_the_short_form_and_plain_chains_serialise_as_before():
    profile = Profile(in_channels=1, reductions=3, head="embedding", input_size=56, shortcut=True)
    arch = Arch(9, 5, [1, 0, 0, 1, 0], [3, 5, 3, 3, 7], profile)
    assert Arch.from_json(arch.to_json()) == arch and arch.short().endswith(" +res")
    assert Arch.parse_short(arch.short(), Profile(in_channels=1, reductions=3, head="embedding",
                                                  input_size=56)) == arch
    plain = Arch.parse_short("D5 C9 ops 10010 k 35337", Profile.paper())
    assert "shortcut" not in plain.to_dict()["profile"] and not plain.profile.shortcut
    assert plain.short() == "D5 C9 ops 10010 k 35337"
