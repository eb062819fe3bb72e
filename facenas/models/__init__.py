"""Networks built from `facenas.space.Arch` values, and the hand-designed baselines (`BackboneSpec` values)."""

from facenas.models.backbones import BackboneSpec, build_backbone, count_macs_module, match_width
from facenas.models.chain import ChainNet, build_model, module_param_count

__all__ = ["BackboneSpec", "ChainNet", "build_backbone", "build_model", "count_macs_module", "match_width",
           "module_param_count"]
