"""The architecture value type of the paper's chain family (method.md section 1).

An architecture is `(C, D, ops[0..D-1], kernels[0..D-1])` plus a `Profile` that fixes everything the search
does not touch: input channels, stem stride, how many reduction layers and where, and the head. Both are frozen
values: they can be hashed, compared, logged and stored in the journal as JSON. Only `facenas.models` turns them
into modules; this module imports no torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterable

from facenas.errors import ArchError

#: Operation ids as the authors' code numbers them: 0 = depthwise-separable, 1 = standard convolution.
OP_SEPARABLE = 0
OP_CONV = 1
OP_NAMES = {OP_SEPARABLE: "sep", OP_CONV: "conv"}
KERNEL_SIZES = (3, 5, 7)
HEADS = ("classifier", "embedding")
EMBEDDING_HEADS = ("gdc", "pool")
ARCH_FORMAT = "facenas.arch/1"
_SHORT = re.compile(r"D(\d+)\s+C(\d+)\s+ops\s+([0-9]+)\s+k\s+([0-9]+)(\s+\+res)?")


@dataclass(frozen=True)
class LayerSpec:
    """One body layer: pre-activation ReLU -> op -> BN, from `c_in` to `c_out` channels."""

    index: int
    c_in: int
    c_out: int
    stride: int
    op: int
    kernel: int
    shortcut: bool = False  # x + layer(x): the profile asks for it and the shapes match


@dataclass(frozen=True)
class Profile:
    """What stays fixed while the search moves: input, stem, reductions and head.

    The paper's profile (`Profile.paper`) has a stride-1 stem to 2C channels, two reduction layers at
    floor(D/3) and floor(2D/3) and a linear classifier. The face profile adds a stem stride, more reductions and an
    embedding head (global depthwise conv or global pooling -> Linear -> BatchNorm1d).
    """

    in_channels: int = 3
    num_classes: int = 10
    stem_stride: int = 1
    stem_multiplier: int = 2
    reductions: int = 2
    head: str = "classifier"
    embedding_dim: int = 512
    embedding_head: str = "gdc"
    input_size: int = 32
    #: Identity shortcut around every layer whose input and output shapes match (stride 1, same channels): the
    #: face profile's option that lets deep chains train under a margin loss. Off (the paper's plain chain) by
    #: default; `to_dict` leaves it out while off, so plain architectures serialise as before.
    shortcut: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.in_channels not in (1, 3):
            problems.append(f"in_channels must be 1 (grey) or 3 (colour), got {self.in_channels}")
        if self.stem_stride not in (1, 2):
            problems.append(f"stem_stride must be 1 or 2, got {self.stem_stride}")
        if self.stem_multiplier < 1:
            problems.append(f"stem_multiplier must be >= 1, got {self.stem_multiplier}")
        if not 0 <= self.reductions <= 5:
            problems.append(f"reductions must be between 0 and 5, got {self.reductions}")
        if self.head not in HEADS:
            problems.append(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head == "classifier" and self.num_classes < 2:
            problems.append(f"num_classes must be >= 2 for a classifier head, got {self.num_classes}")
        if self.head == "embedding":
            if self.embedding_dim < 1:
                problems.append(f"embedding_dim must be >= 1, got {self.embedding_dim}")
            if self.embedding_head not in EMBEDDING_HEADS:
                problems.append(
                    f"embedding_head must be one of {', '.join(EMBEDDING_HEADS)}, got {self.embedding_head!r}"
                )
        if self.input_size < 1:
            problems.append(f"input_size must be >= 1, got {self.input_size}")
        if not isinstance(self.shortcut, bool):
            problems.append(f"shortcut must be true or false, got {self.shortcut!r}")
        if problems:
            raise ArchError("invalid profile: " + "; ".join(problems))

    @classmethod
    def paper(cls, in_channels: int = 3, num_classes: int = 10, input_size: int = 32) -> "Profile":
        """The authors' classification profile (method.md section 1)."""
        return cls(in_channels=in_channels, num_classes=num_classes, input_size=input_size)

    def reduction_layers(self, depth: int) -> tuple[int, ...]:
        """Layers that halve the resolution and double the channels: floor(j * D / (r + 1)) for j = 1..r.

        For r = 2 this is the authors' `[D // 3, 2 * D // 3]`; for r = 3 the face profile's quarters.
        """
        r = self.reductions
        return tuple((j * depth) // (r + 1) for j in range(1, r + 1))

    def feature_size(self, input_size: int | None = None) -> int:
        """Side of the last feature map for a square input ("same" padding rounds up at each stride)."""
        side = self.input_size if input_size is None else input_size
        side = -(-side // self.stem_stride)
        for _ in range(self.reductions):
            side = -(-side // 2)
        return side

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.shortcut:
            del data["shortcut"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Profile":
        if not isinstance(data, dict):
            raise ArchError(f"profile must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArchError(f"unknown profile keys {unknown}; valid keys are {sorted(known)}")
        return cls(**data)


def _as_int_tuple(name: str, values: Iterable[Any]) -> tuple[int, ...]:
    try:
        items = tuple(values)
    except TypeError as exc:
        raise ArchError(f"{name} must be a list of integers, got {values!r}") from exc
    out = []
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, int):
            if hasattr(v, "__index__") and not isinstance(v, bool):
                v = int(v)  # numpy integers
            else:
                raise ArchError(f"{name}[{i}] must be an integer, got {v!r}")
        out.append(v)
    return tuple(out)


@dataclass(frozen=True)
class Arch:
    """A chain architecture: width C, depth D, one op and one kernel per layer, and its profile."""

    width: int
    depth: int
    ops: tuple[int, ...]
    kernels: tuple[int, ...]
    profile: Profile = field(default_factory=Profile)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", _as_int_tuple("ops", self.ops))
        object.__setattr__(self, "kernels", _as_int_tuple("kernels", self.kernels))
        problems = []
        for name in ("width", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ArchError(f"{name} must be an integer, got {value!r}")
        if self.width < 1:
            problems.append(f"width must be >= 1, got {self.width}")
        min_depth = self.profile.reductions + 1
        if self.depth < min_depth:
            problems.append(
                f"depth must be >= {min_depth} (layer 0 plus {self.profile.reductions} reduction layers), "
                f"got {self.depth}"
            )
        if len(self.ops) != self.depth:
            problems.append(f"ops has {len(self.ops)} entries but depth is {self.depth}")
        if len(self.kernels) != self.depth:
            problems.append(f"kernels has {len(self.kernels)} entries but depth is {self.depth}")
        bad_ops = sorted({(i, o) for i, o in enumerate(self.ops) if o not in OP_NAMES})
        if bad_ops:
            i, o = bad_ops[0]
            problems.append(f"ops[{i}] = {o} is not an operation (0 = separable, 1 = conv)")
        bad_k = [(i, k) for i, k in enumerate(self.kernels) if k not in KERNEL_SIZES]
        if bad_k:
            i, k = bad_k[0]
            problems.append(f"kernels[{i}] = {k} is not a kernel size; choose one of {list(KERNEL_SIZES)}")
        if problems:
            raise ArchError("invalid architecture: " + "; ".join(problems))

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def uniform(cls, width: int, depth: int, profile: Profile | None = None, op: int = OP_SEPARABLE,
                kernel: int = 3) -> "Arch":
        """Every layer the same op and kernel: the macro phases' candidates (all separable 3x3)."""
        if isinstance(depth, int) and depth < 0:
            raise ArchError(f"invalid architecture: depth must be >= 1, got {depth}")
        return cls(width, depth, (op,) * max(depth, 0), (kernel,) * max(depth, 0), profile or Profile())

    def with_width(self, width: int) -> "Arch":
        return replace(self, width=width)

    def with_op(self, layer: int, op: int) -> "Arch":
        ops = list(self.ops)
        ops[layer] = op
        return replace(self, ops=tuple(ops))

    def with_kernel(self, layer: int, kernel: int) -> "Arch":
        kernels = list(self.kernels)
        kernels[layer] = kernel
        return replace(self, kernels=tuple(kernels))

    # -- structure ----------------------------------------------------------------------------------------
    @property
    def stem_channels(self) -> int:
        return self.profile.stem_multiplier * self.width

    @property
    def out_channels(self) -> int:
        """Channels of the last layer: C doubled at each reduction."""
        return self.width * 2 ** self.profile.reductions

    def layers(self) -> tuple[LayerSpec, ...]:
        """The body, layer by layer: the single source of truth for both the builder and the counters."""
        reductions = set(self.profile.reduction_layers(self.depth))
        specs = []
        c_prev, c_curr = self.stem_channels, self.width
        for i in range(self.depth):
            stride = 1
            if i in reductions:
                c_curr *= 2
                stride = 2
            shortcut = self.profile.shortcut and stride == 1 and c_prev == c_curr
            specs.append(LayerSpec(i, c_prev, c_curr, stride, self.ops[i], self.kernels[i], shortcut))
            c_prev = c_curr
        return tuple(specs)

    # -- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ARCH_FORMAT,
            "width": self.width,
            "depth": self.depth,
            "ops": list(self.ops),
            "kernels": list(self.kernels),
            "profile": self.profile.to_dict(),
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Arch":
        if not isinstance(data, dict):
            raise ArchError(f"an architecture must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format", ARCH_FORMAT)
        if fmt != ARCH_FORMAT:
            raise ArchError(f"unsupported architecture format {fmt!r}; expected {ARCH_FORMAT!r}")
        missing = [k for k in ("width", "depth", "ops", "kernels") if k not in data]
        if missing:
            raise ArchError(f"architecture is missing {', '.join(missing)}")
        unknown = sorted(set(data) - {"format", "width", "depth", "ops", "kernels", "profile"})
        if unknown:
            raise ArchError(f"unknown architecture keys {unknown}")
        profile = Profile.from_dict(data["profile"]) if "profile" in data else Profile()
        return cls(data["width"], data["depth"], data["ops"], data["kernels"], profile)

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArchError(f"architecture is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def parse_short(cls, text: str, profile: Profile | None = None) -> "Arch":
        """The inverse of `short()`: `D18 C50 ops 0010... k 3333...` under `profile` (which `short` leaves out)."""
        match = _SHORT.fullmatch(text.strip())
        if match is None:
            raise ArchError(f"{text!r} is not an architecture's short form; expected e.g. 'D4 C8 ops 0100 k 3353'")
        depth, width, ops, kernels, res = match.groups()
        profile = profile or Profile()
        if res:
            profile = replace(profile, shortcut=True)
        return cls(int(width), int(depth), tuple(map(int, ops)), tuple(map(int, kernels)), profile)

    def short(self) -> str:
        """A compact, greppable form for logs: `D18 C50 ops 001000000010000000 k 333333333333333335` (`+res` at
        the end where the profile adds identity shortcuts)."""
        return (f"D{self.depth} C{self.width} ops {''.join(map(str, self.ops))} "
                f"k {''.join(map(str, self.kernels))}" + (" +res" if self.profile.shortcut else ""))

    def __str__(self) -> str:
        return self.short()
