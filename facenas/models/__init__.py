"""Networks built from `facenas.space.Arch` values."""

from facenas.models.chain import ChainNet, build_model, module_param_count

__all__ = ["ChainNet", "build_model", "module_param_count"]
