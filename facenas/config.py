"""YAML configuration -> frozen, validated models.

Every knob of a run lives here with the authors' value as its default (method.md sections 2-4), and every CLI flag
maps to one key. A config file may name a `base:` file whose values it overrides, so that a job file shows only
what differs. Unknown keys are errors that name the file, the key path and the closest valid key; range and
cross-field problems name the keys and the fix. Derived values are computed by functions, never written back.

pydantic does the type checking and coercion; the wrapper below only turns its errors into one message each.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facenas.errors import ConfigError

DATASETS = ("digits", "mnist-idx", "mnist", "cifar10", "cifar100", "fashionmnist", "kmnist", "emnist-balanced")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DepthConfig(_Section):
    """Depth phase (method.md section 3.1): width fixed at the maximum, all separable 3x3."""

    min: int = Field(10, ge=1, description="smallest depth; the phase starts here unless `start` is set")
    start: Optional[int] = Field(None, ge=1, description="first depth tried (default: min)")
    max: int = Field(100, ge=1, description="the phase stops once this depth has been tried")
    step: int = Field(1, ge=1)
    start_epochs: int = Field(10, ge=1, description="epoch budget of the first depth candidate")
    epoch_step: int = Field(1, ge=0, description="epochs added per depth candidate tried")
    accept_gain: float = Field(0.10, ge=0, description="points a deeper net must gain to become the incumbent")
    drop_tolerance: float = Field(0.05, ge=0, description="a drop larger than this counts as a failure")
    break_count: int = Field(2, ge=0, description="failures tolerated; the next one stops the phase")

    @property
    def first(self) -> int:
        return self.min if self.start is None else self.start

    @model_validator(mode="after")
    def _ranges(self) -> "DepthConfig":
        if self.min > self.max:
            raise ValueError(f"depth.min = {self.min} is above depth.max = {self.max}; make min <= max")
        if not self.min <= self.first <= self.max:
            raise ValueError(f"depth.start = {self.start} must lie between depth.min and depth.max")
        return self


class WidthConfig(_Section):
    """Width phase (method.md section 3.2): depth fixed, C lowered by `step`, epochs raised by `epoch_step`."""

    max: int = Field(64, ge=1, description="width of the depth phase, where the width phase starts")
    start: Optional[int] = Field(None, ge=1, description="width of the depth phase (default: max)")
    min: int = Field(16, ge=1)
    step: int = Field(2, ge=1)
    epoch_step: int = Field(2, ge=0, description="epochs added per width candidate: narrower nets train longer")
    tolerance: float = Field(0.0, ge=0, description="a narrower net is accepted at >= incumbent - tolerance")
    break_count: int = Field(2, ge=0)

    @property
    def first(self) -> int:
        return self.max if self.start is None else self.start

    @model_validator(mode="after")
    def _ranges(self) -> "WidthConfig":
        if self.min > self.max:
            raise ValueError(f"width.min = {self.min} is above width.max = {self.max}; make min <= max")
        if not self.min <= self.first <= self.max:
            raise ValueError(f"width.start = {self.start} must lie between width.min and width.max")
        if (self.first - self.min) % self.step:
            raise ValueError(
                f"width.start - width.min = {self.first - self.min} is not a multiple of width.step = {self.step};"
                " the width phase would step below width.min"
            )
        return self


class MicroConfig(_Section):
    """Operation and kernel passes (method.md sections 3.3-3.4), parameter-matched at a fixed budget."""

    epochs: int = Field(2, ge=1, description="epoch budget of every micro candidate")
    param_slack_m: float = Field(0.01, ge=0, description="a candidate may exceed the budget by this (millions)")
    kernels: tuple[int, ...] = Field((5,), description="kernel sizes tried against the default 3")
    ops: bool = Field(True, description="run the operation pass")
    kernel_pass: bool = Field(True, description="run the kernel pass")
    macro_fraction: Optional[float] = Field(
        None, gt=0, le=4, description="micro budget as a share of the macro budget: every micro candidate trains "
                                      "max(epochs, ceil(macro_fraction x macro epochs)) epochs, so that it can learn "
                                      "at all (faces); None: `epochs`, as the authors")

    @model_validator(mode="after")
    def _kernels(self) -> "MicroConfig":
        bad = [k for k in self.kernels if k not in (5, 7)]
        if bad:
            raise ValueError(f"micro.kernels = {list(self.kernels)}: only 5 and 7 can be tried against 3")
        return self


class NoiseConfig(_Section):
    """Acceptance rules in units of a score's measured noise (the face search), instead of the authors' points.

    `std` is the standard deviation of one architecture's score over training seeds at the proxy budget
    (bench/face_score_noise.py measures it). A difference of two independent scores then has a standard error of
    std x sqrt(2), and each rule is z of those: a deeper net must gain `depth_gain_z` of them, a drop of more than
    `depth_drop_z` counts as a failure, a narrower net may be `width_tolerance_z` worse, and a micro change must
    gain `micro_gain_z`. Without `std` the point-valued keys apply, exactly as the authors' code (classification).
    """

    std: Optional[float] = Field(None, gt=0, description="measured std of one candidate's score over seeds")
    depth_gain_z: float = Field(2.0, ge=0)
    depth_drop_z: float = Field(1.0, ge=0)
    width_tolerance_z: float = Field(1.0, ge=0)
    micro_gain_z: float = Field(1.0, ge=0)


class RandomSearchConfig(_Section):
    """Random search (`search.strategy: random`, `facenas.search.random_search`): the baseline a search strategy
    must beat at equal cost. At least one limit is required; every limit set applies (the first reached ends the
    run), and an explicit `max_epoch_macs` or `max_wall_s` replaces the one read from `budget_from`."""

    epochs: Optional[int] = Field(
        None, ge=1, description="epoch budget of every random candidate (default: the budget the egnas macro phases "
                                "give a uniform net of the candidate's depth and width)")
    budget_from: Optional[str] = Field(
        None, description="an egnas run directory or its journal.sqlite (--budget-from): stop at the epochs x MACs "
                          "and the summed candidate wall time that run spent")
    max_epoch_macs: Optional[int] = Field(
        None, ge=1, description="stop before the first candidate whose epochs x MACs would take the total past this")
    max_wall_s: Optional[float] = Field(None, gt=0, description="stop once the candidates' summed wall time "
                                                                "reaches this (seconds)")
    max_candidates: Optional[int] = Field(None, ge=1, description="stop after this many candidates")

    LIMITS: ClassVar[tuple[str, ...]] = ("budget_from", "max_epoch_macs", "max_wall_s", "max_candidates")


class TargetConfig(_Section):
    """Where the found net will run, for measuring each candidate's latency (`facenas.export.latency`): the net
    exported as `facenas export` writes it (insightface's 3x112x112 contract) and timed on onnxruntime's CPU
    provider, `repeats` timed calls after `warmup` untimed ones; the median is the latency, the interquartile range
    its spread. `facenas export` measures the exported file the same way."""

    runtime: Literal["onnxruntime"] = Field("onnxruntime", description="the serving runtime (onnxruntime, CPU)")
    threads: int = Field(1, ge=1, le=256, description="onnxruntime intra-op threads")
    batch: int = Field(1, ge=1, le=1024, description="faces per call")
    precision: Literal["fp32", "int8"] = Field(
        "fp32", description="fp32, or int8 (onnxruntime static QDQ quantisation, as `facenas export --int8`)")
    repeats: int = Field(50, ge=5, le=10_000, description="timed calls")
    warmup: int = Field(5, ge=0, le=1000, description="untimed calls first")
    measure: bool = Field(False, description="measure every candidate's latency (always done when "
                                             "search.constraints.max_latency_ms is set)")


class ConstraintsConfig(_Section):
    """Budgets of a deployment-aware search. A candidate over any of them is journaled as skipped, never trained;
    the depth phase stops growing at the budget, and micro changes are proposed only within it. None: no limit
    (the search is then exactly the unconstrained one)."""

    max_params: Optional[int] = Field(None, ge=1, description="parameters")
    max_macs: Optional[int] = Field(None, ge=1, description="multiply-accumulates of one forward pass")
    max_latency_ms: Optional[float] = Field(None, gt=0, description="median latency on search.target, ms")

    def any(self) -> bool:
        return any(v is not None for v in (self.max_params, self.max_macs, self.max_latency_ms))


class SearchSpec(_Section):
    """Everything the strategy needs to decide; nothing about how candidates are trained."""

    depth: DepthConfig = DepthConfig()
    width: WidthConfig = WidthConfig()
    micro: MicroConfig = MicroConfig()
    noise: NoiseConfig = NoiseConfig()
    target_accuracy: float = Field(100.0, description="the depth phase stops once the incumbent reaches "
                                                      "target_accuracy - target_tolerance")
    target_tolerance: float = Field(0.1, ge=0)
    score_dtype: Literal["float32", "float64"] = Field(
        "float32", description="arithmetic of score comparisons; the authors compared float32 tensors")
    strategy: Literal["egnas", "random"] = Field(
        "egnas", description="egnas: the greedy macro-micro search; random: random architectures of the same space "
                             "at a given cost, the baseline (search.random)")
    random: RandomSearchConfig = RandomSearchConfig()
    target: TargetConfig = TargetConfig()
    constraints: ConstraintsConfig = ConstraintsConfig()

    @model_validator(mode="after")
    def _random_needs_a_limit(self) -> "SearchSpec":
        given = [f"search.random.{key}" for key, value in self.random if value is not None]
        if self.strategy == "egnas" and given:
            raise ValueError(f"{', '.join(given)} only apply to search.strategy: random (--strategy random); remove "
                             "them or choose the random strategy")
        if self.strategy == "random" and not any(getattr(self.random, key) is not None
                                                 for key in RandomSearchConfig.LIMITS):
            raise ValueError("search.strategy: random needs a budget: search.random.budget_from (--budget-from, an "
                             "egnas run directory to match its cost), or search.random.max_epoch_macs, "
                             "search.random.max_wall_s or search.random.max_candidates")
        return self

    @model_validator(mode="after")
    def _one_kind_of_rule(self) -> "SearchSpec":
        if self.noise.std is not None:
            # a point rule changed from its default next to a measured noise would be silently ignored; a default
            # (as a resolved config.yaml or a journal's copy holds every key) is harmless
            points = [f"search.{section}.{key}" for section, keys in (("depth", ("accept_gain", "drop_tolerance")),
                                                                       ("width", ("tolerance",)))
                      for key in keys
                      if getattr(getattr(self, section), key) != type(getattr(self, section)).model_fields[key].default]
            if points:
                raise ValueError(f"{', '.join(points)} and search.noise.std both set: with a measured noise the "
                                 "rules are the search.noise.*_z keys; remove one or the other")
        return self


@dataclass(frozen=True)
class Rules:
    """The thresholds the strategy compares with, in score points (see `NoiseConfig`)."""

    depth_gain: float
    depth_drop: float
    width_tolerance: float
    micro_gain: float


def decision_rules(spec: SearchSpec) -> Rules:
    """The authors' point rules, or z standard errors of a difference of two scores where the noise is known."""
    n = spec.noise
    if n.std is None:
        return Rules(spec.depth.accept_gain, spec.depth.drop_tolerance, spec.width.tolerance, 0.0)
    se = n.std * math.sqrt(2.0)
    return Rules(n.depth_gain_z * se, n.depth_drop_z * se, n.width_tolerance_z * se, n.micro_gain_z * se)


def micro_epochs(micro: MicroConfig, macro_epochs: int) -> int:
    """Every micro candidate's budget: `epochs`, or a share of the macro budget where `macro_fraction` is set."""
    if micro.macro_fraction is None:
        return micro.epochs
    return max(micro.epochs, math.ceil(micro.macro_fraction * macro_epochs))


class DataConfig(_Section):
    dataset: str = Field("digits", description=f"one of {', '.join(DATASETS)}")
    root: str = Field("data", description="folder holding the dataset files (--data-root)")
    download: bool = Field(False, description="download torchvision datasets that are missing (needs internet)")
    protocol: Literal["holdout", "paper"] = Field(
        "holdout", description="holdout: score on a validation split of the training set; paper: on the test "
                               "split, as the authors did")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the training pool held out for validation")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share held out as test where a source has one split")
    train_subset: Optional[int] = Field(None, ge=1, description="cap on training images (stratified), for proxies")
    flip: Optional[bool] = Field(None, description="random horizontal flip (default: as the paper, per dataset)")
    crop_size: Optional[int] = Field(None, ge=1, description="random crop side (default: 32, or the image side)")
    crop_padding: int = Field(4, ge=0)
    cutout: int = Field(16, ge=0, description="cutout square side, 0 to disable")

    @model_validator(mode="after")
    def _known(self) -> "DataConfig":
        if self.dataset not in DATASETS:
            close = difflib.get_close_matches(self.dataset, DATASETS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"data.dataset = {self.dataset!r} is not one of {', '.join(DATASETS)}{hint}")
        if self.download and self.dataset == "mnist-idx":
            raise ValueError(
                "data.download (--download) does nothing for dataset mnist-idx: its idx files are read from data.root "
                "(--data-root) as they are; put t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (and the "
                "train-* pair, if you have it) there, or use dataset mnist (--set data.dataset=mnist), which "
                "torchvision downloads")
        if self.download and self.dataset == "digits":
            raise ValueError("data.download (--download) does nothing for dataset digits: they ship inside "
                             "scikit-learn")
        return self


class ModelConfig(_Section):
    stem_stride: int = Field(1, ge=1, le=2)
    reductions: int = Field(2, ge=0, le=5)
    shortcut: Optional[bool] = Field(
        None, description="identity shortcut around every searched layer whose input and output shapes match (x + "
                          "layer(x)); unset or false: the paper's plain chain (every replay of the authors' runs)")
    embedding_dim: int = Field(512, ge=1, description="faces: size of the embedding")
    embedding_head: Literal["gdc", "pool"] = Field(
        "gdc", description="faces: global depthwise conv (MobileFaceNet) or global average pooling before the Linear "
                           "(the searched chain and timm backbones; mobilefacenet and iresnet keep their own heads)")
    #: Hand-designed baselines (facenas.models.backbones builds them; this module stays torch-free).
    BACKBONES: ClassVar[tuple[str, ...]] = ("mobilefacenet", "iresnet18", "iresnet50")
    backbone: Optional[str] = Field(
        None, description="faces: None trains the searched architecture given by --arch; else a hand-designed "
                          "baseline: mobilefacenet, iresnet18, iresnet50 (insightface arcface_torch) or timm:<name>")
    backbone_width: float = Field(1.0, gt=0, description="faces: width multiplier of the backbone's channels")
    backbone_params: Optional[int] = Field(
        None, ge=1, description="faces: choose the backbone's width whose parameter count is closest to this")

    @model_validator(mode="after")
    def _backbone(self) -> "ModelConfig":
        name = self.backbone
        if name is not None:
            if name.startswith("timm:"):
                if not name[len("timm:"):].strip():
                    raise ValueError("model.backbone 'timm:' names no model; write timm:<name>, e.g. timm:resnet18")
            elif name not in self.BACKBONES:
                raise ValueError(f"model.backbone {name!r} is unknown; valid: {', '.join(self.BACKBONES)} or "
                                 "timm:<name> (any timm model)")
        if self.backbone_width != 1.0 and self.backbone_params is not None:
            raise ValueError(f"model.backbone_width ({self.backbone_width}) and model.backbone_params "
                             f"({self.backbone_params}) both set: the width is chosen from the parameter count; "
                             "remove one")
        if (self.backbone_width != 1.0 or self.backbone_params is not None) and name is None:
            raise ValueError("model.backbone_width and model.backbone_params need model.backbone")
        if name is not None and name.startswith("timm:") and (self.backbone_width != 1.0 or self.backbone_params):
            raise ValueError(f"model.backbone_width / model.backbone_params apply to {', '.join(self.BACKBONES)}; "
                             f"for {name} choose the timm variant of the size you need")
        return self


# -- faces --------------------------------------------------------------------------------------------------------

class SyntheticFacesConfig(_Section):
    identities: int = Field(120, ge=4)
    images_per_identity: int = Field(10, ge=2)
    seed: int = Field(0, ge=0)


class FaceAugmentConfig(_Section):
    """Probabilities of each albumentations transform (0 disables it)."""

    flip: float = Field(0.5, ge=0, le=1)
    affine: float = Field(0.3, ge=0, le=1, description="small shift, scale and rotation")
    brightness_contrast: float = Field(0.3, ge=0, le=1)
    blur: float = Field(0.1, ge=0, le=1)
    grey: float = Field(0.05, ge=0, le=1)


class FaceDataConfig(_Section):
    source: str = Field("synthetic", description="'synthetic', an image folder (one sub-folder per identity), or an "
                                                 "insightface RecordIO folder or .rec")
    synthetic: SyntheticFacesConfig = SyntheticFacesConfig()
    landmarks: Optional[str] = Field(None, description="file of 'relative/path x1 y1 ... x5 y5' lines for folders")
    channels: Literal[1, 3] = Field(3, description="3: RGB (grey images replicated); 1: build the network for grey")
    size: int = Field(112, ge=16, description="image side the network sees")
    crop_fraction: float = Field(1.0, gt=0, le=1, description="centre crop share where no landmarks are known")
    heldout_identities: int = Field(20, ge=2, description="identities kept out of training; the search's "
                                                          "verification pairs come from them")
    heldout_pairs_per_fold: int = Field(30, ge=1)
    pair_folds: int = Field(10, ge=2)
    test_identities: int = Field(0, ge=0, description="identities neither the search nor training ever sees: the "
                                                      "people of the final comparison (0: none kept apart)")
    test_pairs_per_fold: Optional[int] = Field(None, ge=1, description="matched and mismatched pairs per fold of the "
                                                                       "test people (default heldout_pairs_per_fold)")
    train_identities: Optional[int] = Field(None, ge=2, description="proxy subset of the training identities")
    max_images_per_identity: Optional[int] = Field(None, ge=1)
    min_images_per_identity: int = Field(2, ge=1)
    skip_bad: bool = Field(False, description="leave out (and report) unreadable images instead of stopping")
    augment: FaceAugmentConfig = FaceAugmentConfig()


class MarginConfig(_Section):
    """insightface's combined margin: target logit s * (cos(m1 * theta + m2) - m3)."""

    loss: Literal["arcface", "cosface", "combined"] = "arcface"
    s: float = Field(64.0, gt=0)
    m1: Optional[float] = Field(None, ge=1, description="default 1")
    m2: Optional[float] = Field(None, ge=0, lt=3.2, description="default 0.5 for arcface, 0 otherwise")
    m3: Optional[float] = Field(None, ge=0, lt=1, description="default 0.35 for cosface, 0 otherwise")
    # unset (None) rather than 0 by default, so that runs and fingerprints from before these keys stay valid
    hold_epochs: Optional[float] = Field(None, ge=0, description="epochs trained without any margin first (a "
                                                                 "normalised softmax start); unset: none")
    warmup_epochs: Optional[float] = Field(None, ge=0, description="then epochs over which the margins grow linearly "
                                                                   "from 0 to their values; unset: at once")

    def margins(self) -> tuple[float, float, float]:
        defaults = {"arcface": (1.0, 0.5, 0.0), "cosface": (1.0, 0.0, 0.35), "combined": (1.0, 0.3, 0.2)}[self.loss]
        m1, m2, m3 = (d if v is None else v for v, d in zip((self.m1, self.m2, self.m3), defaults))
        return m1, m2, m3


class VerifySetConfig(_Section):
    """A benchmark evaluated during `facenas train` (never used to choose an architecture)."""

    name: str
    bin: Optional[str] = None
    lfw_dir: Optional[str] = None
    pairs: Optional[str] = None

    @model_validator(mode="after")
    def _one_kind(self) -> "VerifySetConfig":
        if bool(self.bin) == bool(self.lfw_dir):
            raise ValueError(f"verify set {self.name!r}: give either bin, or lfw_dir with pairs")
        if self.lfw_dir and not self.pairs:
            raise ValueError(f"verify set {self.name!r}: lfw_dir needs pairs (the pairs.txt file)")
        return self


#: Train keys that say how and where a run executes, not what it computes: left out of the search's fingerprint
#: and of checkpoint identities, so a run may resume with other values.
EXECUTION_KEYS = frozenset({"device", "threads", "eval_batch_size", "stream", "workers", "prefetch", "compile", "gpus",
                            "log_every"})


class FaceTrainConfig(_Section):
    epochs: int = Field(20, ge=1, description="facenas train (the search sets each candidate's own budget)")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    margin: MarginConfig = MarginConfig()
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: fp16 on CUDA, fp32 on CPU")
    channels_last: Literal["auto", "on", "off"] = "auto"
    device: str = "auto"
    threads: Optional[int] = Field(None, ge=1)
    stream: Literal["auto", "on", "off"] = Field(
        "auto", description="read the training set while training (decode, align and augment in DataLoader workers) "
                            "instead of decoding it into memory first; auto: `facenas train` streams (unless "
                            "faces.data.skip_bad, which needs every image decoded first), the search's proxy keeps "
                            "its small set in memory")
    workers: int = Field(0, ge=0, description="DataLoader processes that read, align and augment a streamed training "
                                              "set (0: in the training process)")
    prefetch: int = Field(4, ge=1, description="batches each DataLoader worker prepares ahead")
    eval_batch_size: int = Field(256, ge=1)
    eval_every: int = Field(1, ge=1, description="epochs between verification runs")
    checkpoint_every_steps: int = Field(0, ge=0, description="also checkpoint every N steps (0: each epoch only)")
    log_every: int = Field(10, ge=1, description="steps between TensorBoard loss/lr points (each reads the loss "
                                                 "back from the device)")
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        "off", description="torch.compile the training step's model and head with this mode (off: eager)")
    gpus: int = Field(1, ge=1, description="facenas train: processes on this machine, one per GPU, started "
                                           "through torchrun (DDP); with device cpu, gloo processes")
    partial_fc: Optional[float] = Field(
        None, gt=0, le=1, description="Partial FC (insightface): class centres sharded across the DDP ranks, each "
                                      "step scoring this share of them (the batch's classes always; 0.1-0.3 for "
                                      "large sets); unset: the plain margin head")
    sync_bn: Optional[bool] = Field(None, description="true: under DDP on GPUs, BatchNorm statistics over the "
                                                      "global batch (SyncBatchNorm) instead of each rank's share")

    @field_validator("stream", "channels_last", mode="before")
    @classmethod
    def _switch_words(cls, value: Any) -> Any:
        """YAML reads a bare on/off (`--set faces.train.stream=off`) as a boolean: take it as the word."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class FaceScoreConfig(_Section):
    """How a face candidate is scored on the held-out people (bench/face_score_noise.py measures the choices).

    Defaults are the first facenas design (10-fold accuracy on balanced pairs, best epoch); the face configs set
    what measured less noisy, with the reason in their comments.
    """

    metric: Literal["accuracy", "auc", "tar", "dprime"] = Field(
        "accuracy", description="accuracy: 10-fold verification accuracy (%); auc: ROC AUC (%); tar: TAR at "
                                "far (%); dprime: separation of genuine and impostor similarities, (mean_g - mean_i) "
                                "/ sqrt((var_g + var_i) / 2), x 10")
    far: float = Field(0.01, gt=0, lt=1, description="the FAR of metric tar")
    pairs: Literal["balanced", "all"] = Field(
        "balanced", description="balanced: heldout_pairs_per_fold matched and mismatched pairs per fold; all: every "
                                "genuine pair of the held-out people and impostor_ratio times as many impostor pairs")
    impostor_ratio: float = Field(1.0, gt=0)
    reduce: Literal["max", "last", "mean_last"] = Field(
        "max", description="max: the best epoch (the paper's proxy, but a maximum over noisy epochs on the same "
                           "pairs is biased upwards); last: the final epoch; mean_last: mean of the last `last_k`")
    last_k: int = Field(2, ge=1)
    common_random_numbers: bool = Field(
        False, description="train every candidate with the run's seed (same initialisation stream, data order and "
                           "augmentation) instead of its own, so that comparisons cancel the noise they share")


class FacesConfig(_Section):
    data: FaceDataConfig = FaceDataConfig()
    score: FaceScoreConfig = FaceScoreConfig()
    train: FaceTrainConfig = FaceTrainConfig()
    verify: tuple[VerifySetConfig, ...] = ()


class TrainConfig(_Section):
    """The proxy trainer (method.md section 2): plain momentum SGD, cosine to 0, clip 5, cross-entropy."""

    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.025, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(3e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    lr_schedule: Literal["cosine_step", "authors_epoch"] = Field(
        "cosine_step", description="cosine_step: per-step cosine reaching 0 after exactly E epochs; authors_epoch:"
                                   " the authors' per-epoch stepping (epoch e uses the rate of e+1, last epoch 0)")
    eval_batch_size: int = Field(1000, ge=1)
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="NHWC memory layout. auto: on where it is faster (CPU: width >= 16, where oneDNN's "
                            "NHWC kernels win; CUDA: with fp16/bf16 autocast)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision; fp32 as the authors. bf16 is fast on CPUs with AMX and on GPUs; "
                            "fp16 needs CUDA")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    threads: Optional[int] = Field(None, ge=1, description="CPU threads for torch (default: torch's choice)")
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        "off", description="torch.compile the training forward with this mode (off: eager); pays on a GPU for "
                           "long runs, its compile time does not for a short proxy")


class FinalConfig(_Section):
    """Final training of the found architecture (method.md section 4)."""

    epochs: int = Field(600, ge=1)
    checkpoint_every: int = Field(1, ge=1, description="epochs between resumable checkpoints")


class RayConfig(_Section):
    """A search on a Ray cluster (`run.executor: ray`): each candidate is a Ray task with these resources."""

    address: Optional[str] = Field(
        None, description="a running cluster to join (e.g. 10.0.0.1:6379, or auto); unset: start a local cluster")
    cpus_per_candidate: float = Field(1.0, gt=0, description="CPUs each candidate's task reserves (its torch threads)")
    gpus_per_candidate: float = Field(0.0, ge=0, description="GPUs each candidate's task reserves (0.5: two share one)")
    max_retries: int = Field(3, ge=0, description="times a candidate is retried when its worker or node dies")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of the local cluster ray.init() starts (default: "
                                                            "all); ignored with an address")


class RunConfig(_Section):
    out: Optional[str] = Field(None, description="run directory (default: runs/<name>)")
    resume: bool = Field(False, description="continue the run in `out` where it stopped")
    retry_failed: bool = Field(False, description="on resume, train the first failed candidate (and what followed "
                                                  "it) again, e.g. after fixing what made it fail")
    max_consecutive_failures: int = Field(
        5, ge=0, description="stop the search when this many candidates in a row fail (a broken setup rather than "
                             "bad candidates); 0 never stops")
    executor: Literal["subprocess", "inline", "ray"] = Field(
        "subprocess", description="subprocess: each candidate in a child process so memory cannot leak; inline: "
                                  "in this process (debugging); ray: each candidate a Ray task (run.ray)")
    workers: int = Field(
        1, ge=1, description="candidates trained at once: the scheduler trains ahead of the strategy on idle "
                             "workers (speculatively) and the path and result stay those of a serial run")
    ray: RayConfig = RayConfig()
    cache: bool = Field(True, description="decode a face search's in-memory sets once per run into memory-mapped "
                                          "arrays under <run dir>/cache, opened by every candidate and worker (on "
                                          "several machines the run directory must be a shared path)")

    @model_validator(mode="after")
    def _workers_need_processes(self) -> "RunConfig":
        if self.executor == "inline" and self.workers > 1:
            raise ValueError(f"run.executor = inline trains one candidate at a time in this process; with "
                             f"run.workers = {self.workers} use run.executor = subprocess (local) or ray")
        return self


class Config(_Section):
    """A whole run: `facenas search`, `facenas train-final`, `facenas train`."""

    name: str = "search"
    task: Literal["classification", "faces"] = Field("classification", description="what the search optimises")
    seed: int = Field(0, ge=0)
    data: DataConfig = DataConfig()
    faces: FacesConfig = FacesConfig()
    model: ModelConfig = ModelConfig()
    search: SearchSpec = SearchSpec()
    train: TrainConfig = TrainConfig()
    final: FinalConfig = FinalConfig()
    run: RunConfig = RunConfig()

    def out_dir(self) -> Path:
        return Path(self.run.out) if self.run.out else Path("runs") / self.name

    @model_validator(mode="after")
    def _keys_the_task_reads(self) -> "Config":
        """A key that the chosen task never reads is an error naming the key it does read: a silently ignored
        `train.device` on a face search would train on the wrong device without a word."""
        unused = [key for key in _explicit_keys(self) if _task_of_key(key) not in (None, self.task)]
        if unused:
            lines = [f"{key} is not read by a {self.task} run (task: {self.task})"
                     + (f"; set {_key_for(key, self.task)} instead" if _key_for(key, self.task) else "")
                     for key in unused]
            raise ValueError("; ".join(lines))
        return self


# Sections and keys that only one task reads; everything else is shared.
_TASK_ONLY = {"data": "classification", "train": "classification", "final": "classification",
              "faces": "faces", "model.embedding_dim": "faces", "model.embedding_head": "faces",
              "model.backbone": "faces", "model.backbone_width": "faces", "model.backbone_params": "faces"}
# Where the other task keeps the same setting.
_EQUIVALENT = {("data.root", "faces"): "faces.data.source",
               ("train.", "faces"): "faces.train.", ("faces.train.", "classification"): "train.",
               ("data.", "faces"): "faces.data.", ("faces.data.", "classification"): "data.",
               ("final.epochs", "faces"): "faces.train.epochs"}


def _explicit_keys(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted keys that were given (in a file, a flag or `--set`) rather than defaulted."""
    keys = []
    for name in sorted(model.model_fields_set):
        value = getattr(model, name)
        if isinstance(value, BaseModel) and value.model_fields_set:
            keys.extend(_explicit_keys(value, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _task_of_key(key: str) -> Optional[str]:
    for prefix, task in _TASK_ONLY.items():
        if key == prefix or key.startswith(prefix + "."):
            return task
    return None


def _key_for(key: str, task: str) -> Optional[str]:
    """The key a `task` run reads for the setting `key` names, if it has one."""
    for (prefix, to_task), replacement in _EQUIVALENT.items():
        if to_task == task and key.startswith(prefix):
            candidate = replacement + key[len(prefix):]
            node: Any = Config
            for part in candidate.split("."):
                field = getattr(node, "model_fields", {}).get(part)
                if field is None:
                    return None
                node = field.annotation
            return candidate
    return None


# -- loading ---------------------------------------------------------------------------------------------------

def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"{path}: `base:` files form a cycle ({' -> '.join(map(str, seen + (path,)))})")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / str(base)).resolve()
    return _deep_merge(_read_yaml(base_path, seen + (path,)), data)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is {type(child).__name__} {child!r}, not a mapping of keys")
        node = child
    node[parts[-1]] = value


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys at `loc` (the parent of a bad key), for the "closest key" hint."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def _explain(exc: ValidationError, source: str, model: type[BaseModel]) -> ConfigError:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            valid = _field_names(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))!r}?" if close else ""
            lines.append(f"unknown key {key!r}{hint} (valid here: {', '.join(valid)})")
        elif err["type"] == "value_error":
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(msg if not key else f"{msg}")
        else:
            lines.append(f"{key} = {err.get('input')!r}: {err['msg']}")
    return ConfigError(f"{source}: " + "; ".join(lines))


def parse_config(data: dict[str, Any], source: str = "<config>", model: type[BaseModel] = Config) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, source, model) from None


def config_data(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A YAML config (with its `base:` chain) with dotted-key overrides applied, not yet validated."""
    return apply_overrides(_read_yaml(Path(path)) if path is not None else {}, overrides)


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Set dotted keys (`a.b.c`) in a config mapping, in place; None values are left out."""
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                model: type[BaseModel] = Config) -> Any:
    """Read a YAML config (with its `base:` chain), apply dotted-key overrides (the CLI flags), validate."""
    return parse_config(config_data(path, overrides), str(path) if path is not None else "<defaults>", model)


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` from `--set`, the value read as YAML (so numbers and lists keep their type)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. search.depth.max=12")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {exc}") from exc
    return key.strip(), value


def resolved_dict(config: BaseModel) -> dict[str, Any]:
    """Every key of a config with its value; for a run `Config`, only the keys its task reads, so that the copy
    (config.yaml, the journal's) loads back and shows nothing that had no effect."""
    data = config.model_dump(mode="json")
    if isinstance(config, Config):
        for key, task in _TASK_ONLY.items():
            if task != config.task:
                parent, _, leaf = key.rpartition(".")
                (data[parent] if parent else data).pop(leaf, None)
    return data


def to_yaml(config: BaseModel) -> str:
    """The resolved config, written into every run directory."""
    return yaml.safe_dump(resolved_dict(config), sort_keys=False)
