"""The closed-form counts must equal the built network's, and reproduce the authors' logged counts."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from facenas.models import build_model, module_param_count
from facenas.space.arch import Arch, Profile
from facenas.space.count import count_macs, count_params
from tests.conftest import REPLAY_LOGS


@st.composite
def architectures(draw):
    face = draw(st.booleans())
    reductions = draw(st.integers(1, 3)) if face else 2
    profile = Profile(
        in_channels=draw(st.sampled_from([1, 3])), num_classes=draw(st.integers(2, 120)),
        stem_stride=draw(st.sampled_from([1, 2])) if face else 1, reductions=reductions,
        head="embedding" if face else "classifier", embedding_dim=draw(st.integers(8, 64)),
        embedding_head=draw(st.sampled_from(["gdc", "pool"])), input_size=draw(st.sampled_from([16, 28, 32, 56])),
    )
    depth = draw(st.integers(reductions + 1, 14))
    ops = draw(st.lists(st.integers(0, 1), min_size=depth, max_size=depth))
    kernels = draw(st.lists(st.sampled_from([3, 5, 7]), min_size=depth, max_size=depth))
    return Arch(draw(st.integers(1, 24)), depth, ops, kernels, profile)


@settings(max_examples=60, deadline=None)
@given(architectures())
def test_closed_form_params_equal_built_module(arch):
    assert count_params(arch) == module_param_count(build_model(arch))


@settings(max_examples=15, deadline=None)
@given(architectures())
def test_macs_equal_flop_counter(arch):
    model = build_model(arch).eval()
    x = torch.zeros(1, arch.profile.in_channels, arch.profile.input_size, arch.profile.input_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert count_macs(arch) == counter.get_total_flops() // 2


def test_cifar10_t_counts_from_the_authors_log():
    # The authors' CIFAR-10 "T" run: its width candidate D=26, C=46, all separable 3x3, logged as 0.413826 MB,
    # and its final architecture (macro width 46 with the micro ops and kernels), 0.466312 M in the paper's table.
    profile = Profile.paper(3, 10)
    assert count_params(Arch.uniform(46, 26, profile)) == 413_826
    ops = [1, 0, 1] + [0] * 23
    kernels = [5 if i in (13, 17) else 3 for i in range(26)]
    assert count_params(Arch(46, 26, ops, kernels, profile)) == 466_312


@pytest.mark.parametrize("log", REPLAY_LOGS, ids=lambda p: p.stem)
def test_every_logged_candidate_count_is_reproduced(log):
    from facenas.search.replay import profile_for

    data = json.loads(log.read_text())
    dataset = str(data["args"]).split("dataset='")[1].split("'")[0]
    profile = profile_for(dataset)
    for cand in data["candidates"]:
        arch = Arch(cand["width"], cand["depth"], cand["ops"], cand["kernels"], profile)
        assert round(count_params(arch) / 1e6, 6) == cand["params_m"]


def test_macs_scale_with_input_size():
    arch = Arch.uniform(8, 4, Profile.paper(1, 10))
    assert count_macs(arch, 64) > count_macs(arch, 32) > count_macs(arch, 28)
    with pytest.raises(ValueError):
        count_macs(arch, 0)
