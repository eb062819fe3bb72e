"""Closed-form parameter and MAC counts of the chain family.

The search's micro phases match parameter budgets by lowering the width one channel at a time, which means
hundreds of counts per search; building a module for each would cost more than the decision it informs. These
formulas are exact (a property test compares them with built modules) and reproduce the authors' logged counts
(method.md section 1), e.g. CIFAR-10, D=26, C=46, all separable 3x3 -> 466,312 parameters.

MACs count the multiply-accumulates of convolutions and linear layers (BN, ReLU and pooling are left out, as
is usual for MAC figures), for one image of the given side.
"""

from __future__ import annotations

from facenas.space.arch import OP_SEPARABLE, Arch, LayerSpec


def _layer_params(layer: LayerSpec) -> int:
    k2 = layer.kernel * layer.kernel
    if layer.op == OP_SEPARABLE:
        conv = layer.c_in * k2 + layer.c_in * layer.c_out  # depthwise k x k, then pointwise 1x1
    else:
        conv = layer.c_in * layer.c_out * k2
    return conv + 2 * layer.c_out  # affine BatchNorm


def _head_params(arch: Arch) -> int:
    profile = arch.profile
    c_last = arch.out_channels
    if profile.head == "classifier":
        return c_last * profile.num_classes + profile.num_classes
    # embedding head: [GDC: depthwise conv over the whole map + BN2d] -> Linear (no bias) -> BatchNorm1d
    params = c_last * profile.embedding_dim + 2 * profile.embedding_dim
    if profile.embedding_head == "gdc":
        side = profile.feature_size()
        params += c_last * side * side + 2 * c_last
    return params


def count_params(arch: Arch) -> int:
    """Trainable parameters of the built network, head included."""
    stem = arch.profile.in_channels * arch.stem_channels * 9 + 2 * arch.stem_channels
    return stem + sum(_layer_params(layer) for layer in arch.layers()) + _head_params(arch)


def params_m(arch: Arch) -> float:
    """Parameters in millions, computed as the authors' `count_parameters_in_MB` does (count / 1e6)."""
    return count_params(arch) / 1e6


def _out_side(side: int, stride: int) -> int:
    return -(-side // stride)


def count_macs(arch: Arch, input_size: int | None = None) -> int:
    """Multiply-accumulates of one forward pass on a square image of side `input_size`.

    `input_size` defaults to the profile's nominal input side.
    """
    side = arch.profile.input_size if input_size is None else input_size
    if side < 1:
        raise ValueError(f"input_size must be >= 1, got {side}")
    side = _out_side(side, arch.profile.stem_stride)
    macs = side * side * arch.profile.in_channels * arch.stem_channels * 9
    for layer in arch.layers():
        side = _out_side(side, layer.stride)
        k2 = layer.kernel * layer.kernel
        if layer.op == OP_SEPARABLE:
            per_pixel = layer.c_in * k2 + layer.c_in * layer.c_out
        else:
            per_pixel = layer.c_in * layer.c_out * k2
        macs += side * side * per_pixel
    profile = arch.profile
    c_last = arch.out_channels
    if profile.head == "classifier":
        macs += c_last * profile.num_classes
    else:
        if profile.embedding_head == "gdc":
            # The GDC kernel spans the nominal final map; at other input sizes it is applied "valid".
            k = profile.feature_size()
            out = max(side - k + 1, 0)
            macs += out * out * c_last * k * k
        macs += c_last * profile.embedding_dim
    return macs
