from __future__ import annotations

import json

import pytest

from facenas.errors import ArchError
from facenas.space.arch import Arch, Profile


def test_json_round_trip_keeps_everything():
    profile = Profile(in_channels=1, num_classes=47, stem_stride=2, reductions=3, head="embedding",
                      embedding_dim=128, embedding_head="pool", input_size=112)
    arch = Arch(24, 9, [0, 1, 0, 0, 1, 0, 0, 0, 1], [3, 5, 7, 3, 3, 5, 3, 3, 3], profile)
    again = Arch.from_json(arch.to_json())
    assert again == arch
    assert json.loads(arch.to_json())["format"] == "facenas.arch/1"


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=8, depth=4, ops=[0] * 4, kernels=[3, 4, 3, 3]), "kernels[1] = 4 is not a kernel size"),
    (dict(width=8, depth=0, ops=[], kernels=[]), "depth must be >= 3"),
    (dict(width=8, depth=4, ops=[0] * 3, kernels=[3] * 4), "ops has 3 entries but depth is 4"),
    (dict(width=8, depth=4, ops=[0, 2, 0, 0], kernels=[3] * 4), "ops[1] = 2 is not an operation"),
    (dict(width=0, depth=4, ops=[0] * 4, kernels=[3] * 4), "width must be >= 1"),
])
def test_invalid_architectures_are_explained(kwargs, message):
    with pytest.raises(ArchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Arch(**kwargs)


def test_from_json_rejects_unknown_keys_and_bad_json():
    with pytest.raises(ArchError, match="unknown architecture keys"):
        Arch.from_dict({"width": 8, "depth": 3, "ops": [0] * 3, "kernels": [3] * 3, "colour": "red"})
    with pytest.raises(ArchError, match="not valid JSON"):
        Arch.from_json("{width: 8")
    with pytest.raises(ArchError, match="missing depth"):
        Arch.from_dict({"width": 8, "ops": [], "kernels": []})


def test_paper_reduction_layers_and_channels():
    arch = Arch.uniform(46, 26, Profile.paper(3, 10))
    assert arch.profile.reduction_layers(26) == (26 // 3, 2 * 26 // 3)
    layers = arch.layers()
    assert (layers[0].c_in, layers[0].c_out) == (92, 46)  # stem 2C -> C
    strided = [spec.index for spec in layers if spec.stride == 2]
    assert strided == [8, 17]
    assert layers[8].c_out == 92 and layers[17].c_out == 184 and layers[-1].c_out == 184


def test_face_profile_places_three_reductions_at_quarters():
    profile = Profile(stem_stride=2, reductions=3, head="embedding", input_size=112)
    assert profile.reduction_layers(16) == (4, 8, 12)
    assert profile.feature_size() == 7  # 112 -> 56 -> 28 -> 14 -> 7
    assert Profile(stem_stride=1, reductions=3, head="embedding", input_size=56).feature_size() == 7


def test_profile_validation():
    with pytest.raises(ArchError, match="in_channels must be 1"):
        Profile(in_channels=2)
    with pytest.raises(ArchError, match="head must be one of"):
        Profile(head="softmax")


def test_mutators_return_new_values():
    arch = Arch.uniform(16, 6)
    assert arch.with_op(2, 1).ops == (0, 0, 1, 0, 0, 0)
    assert arch.with_kernel(5, 7).kernels[-1] == 7
    assert arch.with_width(12).width == 12 and arch.width == 16
    assert arch.short() == "D6 C16 ops 000000 k 333333"


def test_parse_short_rejects_what_is_not_a_short_form():
    with pytest.raises(ArchError, match="not an architecture's short form"):
        Arch.parse_short("D4 C8 ops 0101")
    with pytest.raises(ArchError, match="ops has 3 entries but depth is 4"):
        Arch.parse_short("D4 C8 ops 010 k 3333")
