"""Decision rules in units of the measured noise, and micro budgets that scale with the macro budget (issue 8)."""

from __future__ import annotations

import math

import pytest

from facenas.config import (
    DepthConfig,
    MicroConfig,
    NoiseConfig,
    SearchSpec,
    WidthConfig,
    decision_rules,
    micro_epochs,
    parse_config,
)
from facenas.errors import ConfigError
from facenas.search.strategy import Outcome
from tests.search.test_strategy import drive


def spec(noise: NoiseConfig | None = None, **micro) -> SearchSpec:
    noise = noise or NoiseConfig()
    return SearchSpec(depth=DepthConfig(min=3, max=6, start_epochs=3, epoch_step=1),
                      width=WidthConfig(max=12, min=8, step=2, epoch_step=2),
                      micro=MicroConfig(**{"epochs": 2, **micro}), noise=noise)


def by_depth(candidate):
    """Each extra layer gains one point; narrower nets lose half a point per step; conv layers gain 1.2 points."""
    arch = candidate.arch
    return Outcome(60.0 + arch.depth - (12 - arch.width) / 4 + 1.2 * sum(arch.ops), 50.0)


def test_without_a_measured_noise_the_authors_point_rules_apply():
    rules = decision_rules(spec())
    assert (rules.depth_gain, rules.depth_drop, rules.width_tolerance, rules.micro_gain) == (0.10, 0.05, 0.0, 0.0)
    _, result = drive(spec(), by_depth)
    assert result.macro_depth == 6  # +1 point per layer clears the authors' 0.10


def test_gains_below_z_standard_errors_are_not_accepted():
    noise = NoiseConfig(std=1.0, depth_gain_z=2.0, depth_drop_z=1.0, width_tolerance_z=1.0, micro_gain_z=1.0)
    rules = decision_rules(spec(noise))
    assert rules.depth_gain == pytest.approx(2 * math.sqrt(2)) and rules.micro_gain == pytest.approx(math.sqrt(2))
    candidates, result = drive(spec(noise), by_depth)
    # +1 point a layer is within the noise when one score's std is 1 point: D4 (+1) and D5 (+2) do not replace D3;
    # D6 (+3 over the incumbent D3) clears 2 x 1.41
    assert result.macro_depth == 6 and [c.arch.depth for c in candidates if c.phase == "depth"] == [3, 4, 5, 6]
    _, result = drive(spec(noise), lambda c: Outcome(60.0 + 0.5 * c.arch.depth, 50.0))
    assert result.macro_depth == 3  # +1.5 points over D3 at most: never enough
    # a narrower net losing 0.5 point a step stays within one standard error of a difference: accepted down to 8
    assert result.macro_width == 8
    # a conv layer's +1.2 points is below one standard error (1.41): no micro change is kept
    assert result.ops == (0,) * 3


def test_point_rules_and_a_noise_std_together_are_refused():
    with pytest.raises(ConfigError, match="search.depth.accept_gain and search.noise.std both set"):
        parse_config({"search": {"depth": {"accept_gain": 0.5}, "noise": {"std": 1.0}}})


def test_micro_budgets_can_be_a_share_of_the_macro_budget():
    assert micro_epochs(MicroConfig(epochs=2), 9) == 2
    assert micro_epochs(MicroConfig(epochs=1, macro_fraction=0.5), 9) == 5
    assert micro_epochs(MicroConfig(epochs=6, macro_fraction=0.5), 9) == 6
    candidates, result = drive(spec(macro_fraction=0.5), by_depth)
    micro = [c for c in candidates if c.phase in ("ops", "kernels")]
    assert micro and {c.epochs for c in micro} == {math.ceil(0.5 * result.macro_epochs)}


def test_a_resolved_noise_config_loads_back():
    import yaml

    from facenas.config import resolved_dict, to_yaml

    config = parse_config({"task": "faces", "search": {"noise": {"std": 1.5}}})
    assert parse_config(yaml.safe_load(to_yaml(config))) == config
    assert parse_config(resolved_dict(config)) == config  # the journal's copy
