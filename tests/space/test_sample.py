"""Random architectures at a parameter budget (issue 8): reproducible, inside the space, within the tolerance."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from facenas.config import load_config
from facenas.errors import ArchError
from facenas.space.arch import OP_CONV, OP_SEPARABLE, Arch, Profile
from facenas.space.count import count_params
from facenas.space.sample import SearchSpace, sample_archs, solve_width, space_from_config
from facenas.train.evaluators import task_profile
from tests.conftest import ROOT

FACES = ROOT / "configs/search/faces-synthetic.yaml"
DIGITS = ROOT / "configs/search/digits.yaml"


def _space(path=FACES, overrides=None) -> SearchSpace:
    cfg = load_config(path, overrides)
    return space_from_config(cfg, task_profile(cfg))


def test_the_space_is_what_the_config_lets_the_search_choose():
    space = _space()
    assert (space.depth_min, space.depth_max) == (4, 10)
    assert space.ops == (OP_SEPARABLE, OP_CONV) and space.kernels == (3, 5)
    assert space.profile.head == "embedding" and space.profile.reductions == 3 and space.profile.input_size == 56
    assert _space(overrides={"search.micro.kernels": [7, 5]}).kernels == (3, 5, 7)
    off = _space(overrides={"search.micro.ops": False, "search.micro.kernel_pass": False})
    assert off.ops == (OP_SEPARABLE,) and off.kernels == (3,)
    # a depth range starting below layer 0 + reductions starts at the profile's minimum instead
    assert _space(overrides={"search.depth.min": 1}).depth_min == 4
    with pytest.raises(ArchError, match="raise search.depth.max"):
        _space(overrides={"search.depth.min": 1, "search.depth.max": 3})


def test_same_seed_same_architectures_and_a_shorter_list_is_a_prefix():
    space = _space()
    first = sample_archs(space, 100_000, seed=7, count=5)
    assert sample_archs(space, 100_000, seed=7, count=5) == first
    assert sample_archs(space, 100_000, seed=7, count=2) == first[:2]
    assert len(set(first)) == 5


def test_different_seeds_differ():
    space = _space()
    draws = [tuple(sample_archs(space, 100_000, seed=s, count=3)) for s in range(4)]
    assert len(set(draws)) == 4


@pytest.mark.parametrize("path,target,tolerance", [(FACES, 100_000, 0.03), (FACES, 40_000, 0.01),
                                                   (DIGITS, 5_000, 0.03), (DIGITS, 466_312, 0.005)])
def test_every_draw_is_within_the_tolerance_and_inside_the_space(path, target, tolerance):
    space = _space(path, {"search.micro.kernels": [5, 7]})
    archs = sample_archs(space, target, seed=1, count=20, tolerance=tolerance)
    assert len(set(archs)) == 20
    for arch in archs:
        assert abs(count_params(arch) - target) <= tolerance * target
        assert space.depth_min <= arch.depth <= space.depth_max
        assert set(arch.kernels) <= {3, 5, 7} and set(arch.ops) <= {OP_SEPARABLE, OP_CONV}
        assert arch.profile == space.profile
    kernels = Counter(k for arch in archs for k in arch.kernels)
    assert set(kernels) == {3, 5, 7}  # each allowed kernel turns up


def test_kernels_and_ops_only_from_the_allowed_sets():
    space = _space(overrides={"search.micro.ops": False})  # kernels 3 and 5, separable only
    for arch in sample_archs(space, 100_000, seed=2, count=20):
        assert set(arch.kernels) <= {3, 5} and set(arch.ops) == {OP_SEPARABLE}


def test_depth_is_drawn_over_the_whole_range():
    space = _space(DIGITS)  # depth 3..12; at 200k parameters every depth can meet the budget
    depths = Counter(arch.depth for arch in sample_archs(space, 200_000, seed=0, count=200, tolerance=0.05))
    assert set(depths) == set(range(3, 13))


def test_solve_width_finds_the_closest_width():
    profile = Profile(in_channels=3, head="embedding", embedding_dim=64, reductions=3, input_size=56)
    arch = Arch(1, 6, (0, 1, 0, 0, 1, 0), (3, 5, 7, 3, 3, 5), profile)
    counts = {w: count_params(replace(arch, width=w)) for w in range(1, 120)}
    for target in (1, 5_000, 123_456, 400_000, counts[37], counts[37] + 1):
        solved, params = solve_width(arch, target)
        best = min(counts, key=lambda w: (abs(counts[w] - target), w))
        assert (solved.width, params) == (best, counts[best])


def test_an_impossible_target_says_why():
    with pytest.raises(ArchError, match=r"cannot draw an architecture of 100 parameters .* even at width 1 the "
                                        r"smallest of 1,000 draws has [\d,]+ parameters \(depth 3\)"):
        sample_archs(_space(DIGITS), 100, seed=0, count=50)
    tiny = SearchSpace(Profile.paper(1, 10, 8), 3, 3, (OP_SEPARABLE,), (3,))  # one choice per width
    with pytest.raises(ArchError, match="only 1 distinct architectures"):
        sample_archs(tiny, 10_000, seed=0, count=2, max_tries=50)
    with pytest.raises(ArchError, match="must be >= 1"):
        sample_archs(tiny, 0, seed=0)


def test_a_budget_keeps_only_the_draws_inside_it_and_says_when_none_is():
    from facenas.space.count import count_macs

    space = _space()
    free = sample_archs(space, 100_000, seed=5, count=8)
    cap = sorted(count_macs(a) for a in free)[3]  # about half of the free draws are inside
    inside = sample_archs(space, 100_000, seed=5, count=4, within=lambda a: count_macs(a) <= cap)
    assert len(set(inside)) == 4 and all(count_macs(a) <= cap for a in inside)
    assert [a for a in free if count_macs(a) <= cap][:2] == inside[:2]  # the same stream, the refused left out
    with pytest.raises(ArchError, match="all over the budget"):
        sample_archs(space, 100_000, seed=5, within=lambda a: False, max_tries=50)
