"""Random architectures of the search space at a parameter budget: the baseline NAS results are held to.

A search's result only means something next to what chance finds in the same space at the same size, so the
sampler draws from exactly the choices the search could make (its config's depth range, operations and kernels,
under its profile) and holds every draw to the same parameter count.

Why this sampling: depth, per-layer operation and per-layer kernel are drawn uniformly over their discrete choices,
and the draw is kept only if some width brings it within the tolerance of the budget. That is uniform sampling over
the discrete choices conditioned on the budget (rejection sampling), with no preference the search's greedy order
would add. The width is solved, not drawn: at a given depth, ops and kernels the parameter count grows with the
width, so the budget fixes it (a drawn width would almost never meet the budget, and redrawing until one did would
only waste draws). Counts are closed-form (`facenas.space.count`), so thousands of draws cost well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np

from facenas.config import Config, SearchSpec
from facenas.errors import ArchError
from facenas.space.arch import OP_CONV, OP_NAMES, OP_SEPARABLE, Arch, Profile
from facenas.space.count import count_params

DEFAULT_TOLERANCE = 0.03
#: Draws allowed per architecture asked for before the target is declared out of reach.
MAX_TRIES = 1000


@dataclass(frozen=True)
class SearchSpace:
    """The discrete choices of a search: a depth range, the operations and kernels per layer, and the profile."""

    profile: Profile
    depth_min: int
    depth_max: int
    ops: tuple[int, ...] = (OP_SEPARABLE, OP_CONV)
    kernels: tuple[int, ...] = (3,)

    def __post_init__(self) -> None:
        floor = self.profile.reductions + 1
        if self.depth_max < floor:
            raise ArchError(f"depth range {self.depth_min}..{self.depth_max} lies below the profile's minimum "
                            f"depth {floor} (layer 0 plus {self.profile.reductions} reduction layers); raise "
                            f"search.depth.max")
        if self.depth_min > self.depth_max:
            raise ArchError(f"depth range {self.depth_min}..{self.depth_max} is empty")
        if not self.ops or any(o not in OP_NAMES for o in self.ops):
            raise ArchError(f"ops must be a non-empty subset of {sorted(OP_NAMES)}, got {list(self.ops)}")
        if not self.kernels or any(k not in (3, 5, 7) for k in self.kernels):
            raise ArchError(f"kernels must be a non-empty subset of [3, 5, 7], got {list(self.kernels)}")

    def describe(self) -> str:
        ops = "/".join(OP_NAMES[o] for o in self.ops)
        kernels = "/".join(map(str, self.kernels))
        return f"depth {self.depth_min}..{self.depth_max}, ops {ops}, kernels {kernels}"


def space_from_config(config: Config, profile: Profile) -> SearchSpace:
    """The space a search with this config explores: what its phases could choose, nothing more.

    Depth: `search.depth.min..max`, raised to the profile's minimum depth (layer 0 plus the reductions) where the
    config's minimum lies below it. Operations: separable and conv, or separable only where the operation pass is
    off. Kernels: 3 plus `search.micro.kernels`, or 3 only where the kernel pass is off.
    """
    return space_from_spec(config.search, profile)


def space_from_spec(spec: SearchSpec, profile: Profile) -> SearchSpace:
    """`space_from_config` from the search section alone (what the random search strategy holds)."""
    micro = spec.micro
    depth = spec.depth
    ops = (OP_SEPARABLE, OP_CONV) if micro.ops else (OP_SEPARABLE,)
    kernels = tuple(sorted({3, *micro.kernels})) if micro.kernel_pass else (3,)
    floor = profile.reductions + 1
    return SearchSpace(profile, max(depth.min, floor), depth.max, ops, kernels)


def solve_width(arch: Arch, target: int) -> tuple[Arch, int]:
    """The width whose parameter count is closest to `target` (the narrower one on a tie), with that count.

    The count grows strictly with the width (the stem alone adds parameters per channel), so a doubling search
    brackets the target and a bisection finds it in O(log C) closed-form counts.
    """
    def params(width: int) -> int:
        return count_params(replace(arch, width=width))

    lo, lo_params = 1, params(1)
    if lo_params >= target:
        return replace(arch, width=1), lo_params
    hi = 2
    while params(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # invariant: params(lo) < target <= params(hi)
        mid = (lo + hi) // 2
        if params(mid) < target:
            lo = mid
        else:
            hi = mid
    lo_params, hi_params = params(lo), params(hi)
    if target - lo_params <= hi_params - target:
        return replace(arch, width=lo), lo_params
    return replace(arch, width=hi), hi_params


def draw_choices(space: SearchSpace, rng: np.random.Generator) -> Arch:
    """One uniform draw of depth, ops and kernels, at width 1 (the width is solved afterwards)."""
    depth = int(rng.integers(space.depth_min, space.depth_max + 1))
    ops = rng.choice(np.asarray(space.ops), size=depth)
    kernels = rng.choice(np.asarray(space.kernels), size=depth)
    return Arch(1, depth, tuple(int(o) for o in ops), tuple(int(k) for k in kernels), space.profile)


def sample_archs(space: SearchSpace, target: int, seed: int, count: int = 1, tolerance: float = DEFAULT_TOLERANCE,
                 max_tries: int = MAX_TRIES, within: Optional[Callable[[Arch], bool]] = None) -> list[Arch]:
    """`count` distinct random architectures within `tolerance` (relative) of `target` parameters, and within a
    budget where `within` says so (a draw it refuses is drawn again: the sample is uniform over the part inside).

    The same seed gives the same list every time, and a shorter list is a prefix of a longer one (the draws come
    in order from one generator). Raises `ArchError` when `max_tries` draws per architecture asked for do not
    suffice (`max_tries` draws without a single hit end it early): the target is below the smallest network of the
    space, or widths step too coarsely near it.
    """
    if target < 1:
        raise ArchError(f"the parameter target must be >= 1, got {target}")
    if tolerance < 0:
        raise ArchError(f"the tolerance must be >= 0, got {tolerance}")
    if count < 1:
        raise ArchError(f"count must be >= 1, got {count}")
    if seed < 0:
        raise ArchError(f"the seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    high = target * (1 + tolerance)
    found: list[Arch] = []
    seen: set[Arch] = set()
    smallest: tuple[int, int] | None = None  # (params at width 1, depth) of the smallest draw
    refused = 0  # of the right size, but over the budget
    tries = max_tries * count
    for i in range(tries):
        if i == max_tries and not found:
            tries = i  # nothing at all in max_tries draws: more would not help
            break
        choices = draw_choices(space, rng)
        floor = count_params(choices)
        if smallest is None or floor < smallest[0]:
            smallest = (floor, choices.depth)
        if floor > high:  # too large even at width 1: no width can help
            continue
        arch, params = solve_width(choices, target)
        if abs(params - target) <= tolerance * target and arch not in seen:
            seen.add(arch)
            if within is not None and not within(arch):
                refused += 1
                continue
            found.append(arch)
            if len(found) == count:
                return found
    assert smallest is not None
    want = f"{target:,} parameters (within {tolerance:.1%})" + (" and the budget" if within is not None else "")
    if smallest[0] > high:
        raise ArchError(f"cannot draw an architecture of {want} in this space ({space.describe()}): even at width 1 "
                        f"the smallest of {tries:,} draws has {smallest[0]:,} parameters (depth {smallest[1]}); "
                        f"raise --params or lower search.depth.min")
    if not found and refused:
        raise ArchError(f"the {refused:,} distinct architectures of {target:,} parameters drawn were all over the "
                        "budget; raise it, or lower --params")
    if not found:
        raise ArchError(f"none of {tries:,} draws came within {want} in this space ({space.describe()}): near this "
                        f"size one channel more or less moves the count by more than the tolerance; raise "
                        f"--tolerance or choose another --params")
    raise ArchError(f"only {len(found)} distinct architectures of {want} turned up in {tries:,} draws in this space "
                    f"({space.describe()}); ask for fewer with --count or raise --tolerance")
