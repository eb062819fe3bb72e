"""`facenas export`: a facenas face model -> one ONNX file with insightface's recognition contract, verified.

Contract (face-ecosystem.md 1.7-1.9): one input `data`, float32 NCHW `[N, 3, 112, 112]` with only the batch
symbolic, RGB, normalised `(x - 127.5) / 127.5` outside the graph; one output, the raw embedding; a single file.
A model trained on grey or at another size still meets it: a fixed 1x1 convolution turns RGB into grey (luma
weights; normalisation commutes with it because the weights sum to 1) and an average pool or a resize brings
112 to the trained size, inside the graph. Nodes are never named `Sub`/`Mul` at the start of the graph, so
insightface's `ArcFaceONNX` keeps normalising outside.

Every export is verified before it is reported, always by putting the same input pixels through both sides: the
contract's 112x112 RGB input through the wrapper in PyTorch and through onnxruntime (cosine > 0.99999 on aligned,
face-like crops, batch sizes 1 and 7), and `insightface.model_zoo.get_model` routing the file to `ArcFaceONNX`
with `get_feat` giving the same embeddings. Given a calibration set, its pairs go through both sides the same way
(fitted once to the contract's input): the embeddings must agree as above, and the two verification accuracies go
on the card. They can differ only where a pair's distance lies on the two sides of one of the protocol's
thresholds (float noise of ~1e-6 can move a pair across 0.01-spaced thresholds); such a difference is a warning
with both figures, and a difference with no such pair is an error, since the embedding differences cannot explain
it. The calibration set also gives the card's threshold.

The model is never compared at its trained size against the graph at 112: shrinking the pairs to the trained
size outside the graph (OpenCV, rounded to uint8) and pooling in float inside it are two different inputs, and
their accuracies may differ for reasons that have nothing to do with the export.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from facenas import __version__
from facenas.config import TargetConfig
from facenas.data.faces.types import PairSet
from facenas.errors import ExportError
from facenas.evaluate.metrics import (
    THRESHOLDS,
    accuracy_per_threshold,
    l2_normalize,
    squared_distances,
    threshold_for_far,
)
from facenas.evaluate.verify import MEAN, STD
from facenas.export.card import (
    INPUT_CONTRACT,
    OPERATING_FARS,
    ModelCard,
    OperatingPoint,
    Threshold,
    card_path,
    sha256_file,
)

log = logging.getLogger(__name__)

CONTRACT_SIZE = 112
MIN_COSINE = 0.99999
DEFAULT_OPSET = 17
#: What the int8 comparison of `facenas export --quantize int8` times each file with (batch and precision set per
#: measurement) when no latency target is given.
COMPARISON_TARGET = TargetConfig(repeats=20, warmup=1)


class ContractWrapper(nn.Module):
    """Normalised RGB 112x112 in, the trained model's own input inside, the raw embedding out."""

    def __init__(self, model: nn.Module, channels: int, size: int) -> None:
        super().__init__()
        self.model = model
        self.to_grey: Optional[nn.Module] = None
        if channels == 1:
            conv = nn.Conv2d(3, 1, 1, bias=False)
            conv.weight.data = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            conv.weight.requires_grad_(False)
            self.to_grey = conv
        self.size = size
        self.pool: Optional[nn.Module] = None
        if size != CONTRACT_SIZE and CONTRACT_SIZE % size == 0:
            self.pool = nn.AvgPool2d(CONTRACT_SIZE // size)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        x = data
        if self.to_grey is not None:
            x = self.to_grey(x)
        if self.pool is not None:
            x = self.pool(x)
        elif self.size != CONTRACT_SIZE:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x)


def face_crops(count: int = 7, seed: int = 0) -> np.ndarray:
    """Aligned, face-like RGB crops (uint8 N, 3, 112, 112) for verifying an export."""
    from facenas.data.faces.synthetic import synthetic_faces

    faces = synthetic_faces(count, 1, seed=seed, first_identity=900_000)
    return faces.images


def normalise(images: np.ndarray) -> np.ndarray:
    """The contract's preprocessing, outside the graph (float32 NCHW from uint8 NCHW)."""
    return (images.astype(np.float32) - MEAN) / STD


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(l2_normalize(a) * l2_normalize(b), axis=1)))


@dataclass
class Verification:
    ort_vs_torch_min_cosine: dict[str, float] = field(default_factory=dict)
    insightface_class: str = ""
    insightface_min_cosine: float = float("nan")
    accuracy_checkpoint: Optional[float] = None  # the PyTorch wrapper on the calibration pairs at the contract's input
    accuracy_onnx: Optional[float] = None
    calibration_min_cosine: Optional[float] = None  # ONNX vs PyTorch over every calibration image
    max_distance_difference: Optional[float] = None  # largest |d^2 ONNX - d^2 PyTorch| over the calibration pairs
    pairs_across_a_threshold: Optional[int] = None  # pairs whose decision differs at some protocol threshold
    warnings: list[str] = field(default_factory=list)


def verify_onnx(path: Path, wrapper: nn.Module, crops: np.ndarray) -> Verification:
    import onnxruntime as ort

    result = Verification()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].name != "data" or len(outputs) != 1:
        raise ExportError(f"{path}: expected one input 'data' and one output, got {[i.name for i in inputs]} -> "
                          f"{[o.name for o in outputs]}")
    shape = inputs[0].shape
    if isinstance(shape[0], int) or list(shape[1:]) != [3, CONTRACT_SIZE, CONTRACT_SIZE]:
        raise ExportError(f"{path}: input shape {shape} breaks the contract [N, 3, 112, 112]")
    x = normalise(crops)
    with torch.inference_mode():
        reference = wrapper(torch.from_numpy(x)).numpy()
    for batch in (1, 7):
        got = np.concatenate([session.run(None, {"data": x[i:i + batch]})[0] for i in range(0, len(x), batch)])
        result.ort_vs_torch_min_cosine[str(batch)] = _min_cosine(got, reference)
        if result.ort_vs_torch_min_cosine[str(batch)] < MIN_COSINE:
            raise ExportError(f"{path}: onnxruntime and PyTorch disagree at batch {batch} (cosine "
                              f"{result.ort_vs_torch_min_cosine[str(batch)]:.7f} < {MIN_COSINE})")
    from insightface.model_zoo import get_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_model(str(path), providers=["CPUExecutionProvider"])
    result.insightface_class = type(model).__name__ if model is not None else "None"
    if result.insightface_class != "ArcFaceONNX":
        raise ExportError(f"{path}: insightface.model_zoo.get_model does not recognise it as a recognition model "
                          f"(got {result.insightface_class})")
    bgr = [np.ascontiguousarray(img.transpose(1, 2, 0)[:, :, ::-1]) for img in crops]
    feats = model.get_feat(bgr)
    result.insightface_min_cosine = _min_cosine(np.asarray(feats), reference)
    if result.insightface_min_cosine < MIN_COSINE:
        raise ExportError(f"{path}: insightface's get_feat disagrees with PyTorch (cosine "
                          f"{result.insightface_min_cosine:.7f})")
    return result


def choose_threshold(dist: np.ndarray, issame: np.ndarray, name: str) -> Threshold:
    """The squared-distance threshold with the best accuracy over all pairs of the calibration set."""
    accuracy = accuracy_per_threshold(dist, issame, THRESHOLDS)
    best = float(THRESHOLDS[int(np.argmax(accuracy))])
    predicted = dist < best
    far = float((predicted & ~issame).sum() / max((~issame).sum(), 1))
    tar = float((predicted & issame).sum() / max(issame.sum(), 1))
    return Threshold(cosine=1 - best / 2, squared_distance=best, chosen_on=name, pairs=int(len(issame)),
                     rule="best accuracy over all pairs of the set (insightface threshold grid)", far=far, tar=tar,
                     accuracy=float(accuracy.max()))


def operating_points(dist: np.ndarray, issame: np.ndarray,
                     targets: tuple[float, ...] = OPERATING_FARS) -> list[OperatingPoint]:
    """Thresholds at target FARs on all pairs of the calibration set; a target is left out where the set has too few
    mismatched pairs to show one false accept at it (n x FAR < 1): its threshold would be a guess."""
    negatives = int((~issame).sum())
    points = []
    for target in targets:
        if negatives * target < 1:
            continue
        t = threshold_for_far(dist, issame, target)
        predicted = dist < t
        points.append(OperatingPoint(target_far=target, cosine=1 - t / 2, squared_distance=t,
                                     far=float((predicted & ~issame).sum() / negatives),
                                     tar=float((predicted & issame).sum() / max(int(issame.sum()), 1)),
                                     negatives=negatives))
    return points


def export_graph(wrapper: nn.Module, opset: int = DEFAULT_OPSET) -> bytes:
    """The wrapped model as one self-contained ONNX file's bytes, in memory: what `facenas export` writes and what
    the search times (`facenas.export.latency`), so that both measure the same graph."""
    import onnx

    buffer = io.BytesIO()
    # The TorchScript exporter on purpose (dynamo=False): it gives the plain graph insightface's tools expect, and
    # torch's notice that another exporter is the default says nothing a user can act on.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, (torch.zeros(1, 3, CONTRACT_SIZE, CONTRACT_SIZE),), buffer,
                          input_names=["data"], output_names=["embedding"],
                          dynamic_axes={"data": {0: "N"}, "embedding": {0: "N"}}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    model = onnx.load_model_from_string(buffer.getvalue())
    for key, value in (("producer", f"facenas {__version__}"), ("input_contract", json.dumps(INPUT_CONTRACT))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass
class ExportReport:
    onnx: str
    card: str
    verification: Verification
    card_data: dict[str, Any]
    quantized: Optional[dict[str, Any]] = None
    latency: Optional[dict[str, Any]] = None  # `latency_report` of the file of the target's precision

    def to_dict(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "card": self.card, "verification": asdict(self.verification),
                "threshold": self.card_data.get("threshold"), "latency": self.latency, "quantized": self.quantized}


@dataclass(frozen=True)
class Measured:
    """One model on one pair set: what the card and the export check need."""

    accuracy: float
    dist: np.ndarray  # squared distance of each pair
    report: Any  # VerificationReport
    embeddings: np.ndarray  # normalised flip-test embeddings, (2N, D)


def measure(embedder: Any, pairs: PairSet, batch: int = 128) -> Measured:
    from facenas.evaluate.verify import evaluate_pairs

    report, emb = evaluate_pairs(embedder, pairs, batch_size=batch)
    return Measured(report.accuracy, squared_distances(emb.embeddings[0::2], emb.embeddings[1::2]), report,
                    emb.embeddings)


def pairs_across_thresholds(dist_a: np.ndarray, dist_b: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> int:
    """Pairs that some protocol threshold t classifies differently on the two sides (`d < t`).

    With none, every fold sees identical accuracy-per-threshold curves, so both sides choose the same thresholds
    and score exactly the same accuracy; only these pairs can make the two accuracies differ.
    """
    return int(np.sum(np.searchsorted(thresholds, dist_a, side="right")
                      != np.searchsorted(thresholds, dist_b, side="right")))


def compare_on_calibration(pytorch: Measured, onnx: Measured, verification: Verification, path: Path) -> None:
    """Both sides measured on the same calibration pixels: embeddings must agree, and accuracies may differ only
    as far as pairs moved across a threshold explain. Fills `verification`; raises `ExportError` where the export
    is wrong, warns (with both figures) where float noise moved a pair."""
    verification.accuracy_checkpoint, verification.accuracy_onnx = pytorch.accuracy, onnx.accuracy
    verification.calibration_min_cosine = float(np.min(np.sum(pytorch.embeddings * onnx.embeddings, axis=1)))
    verification.max_distance_difference = float(np.max(np.abs(pytorch.dist - onnx.dist)))
    crossing = pairs_across_thresholds(pytorch.dist, onnx.dist)
    verification.pairs_across_a_threshold = crossing
    if verification.calibration_min_cosine < MIN_COSINE:
        raise ExportError(f"{path}: onnxruntime and PyTorch disagree on the calibration images (cosine "
                          f"{verification.calibration_min_cosine:.7f} < {MIN_COSINE})")
    flipped = round(abs(pytorch.accuracy - onnx.accuracy) * len(pytorch.dist))
    if flipped and not crossing:
        raise ExportError(f"{path}: verification accuracy changed in export ({pytorch.accuracy:.4f} in PyTorch, "
                          f"{onnx.accuracy:.4f} in onnxruntime) although no pair's distance crossed a threshold; "
                          "float noise cannot explain that")
    if flipped:
        message = (f"calibration accuracy {pytorch.accuracy:.4f} in PyTorch, {onnx.accuracy:.4f} in onnxruntime on "
                   f"the same pixels: {crossing} pair(s) lie within {verification.max_distance_difference:.1e} of a "
                   "protocol threshold and float noise moved them across (not an export error)")
        verification.warnings.append(message)
        log.warning("%s: %s", path, message)


def _calibrate(card: ModelCard, measured: Measured, issame: np.ndarray, name: str) -> float:
    """Put the threshold and the evaluation of an exported model on its card."""
    card.threshold = choose_threshold(measured.dist, issame, name)
    card.thresholds_at_far = measured.report.tar_at_far
    card.operating_points = operating_points(measured.dist, issame)
    card.evaluation = {name: {k: v for k, v in measured.report.to_dict().items() if k != "roc"}}
    return measured.accuracy


def export_onnx(checkpoint: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET,
                calibration: Optional[PairSet] = None, calibration_name: str = "", quantize: Optional[str] = None,
                target: Optional[TargetConfig] = None) -> ExportReport:
    """Export, verify, choose the threshold, write the card; optionally also an int8 model with its own card.

    Given a latency `target`, the file of its precision (the int8 one for int8, which needs `quantize="int8"`) is
    timed as the search times a candidate (`facenas.export.latency`), and the report and that file's card record it.
    """
    from facenas.evaluate.verify import OnnxEmbedder, TorchEmbedder
    from facenas.models.checkpoint import describe_face_model, load_face_model

    if opset < 11:
        raise ExportError(f"opset {opset} is too old; insightface's contract needs 11 or newer")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: the output must end in .onnx")
    if target is not None and target.precision == "int8" and quantize != "int8":
        raise ExportError("a latency target of precision int8 times the int8 model: export it with --quantize int8 "
                          "(quantize='int8'), or time the float model with precision fp32")
    out.parent.mkdir(parents=True, exist_ok=True)
    model, network, _ = load_face_model(checkpoint)
    info = describe_face_model(model, network)  # a searched architecture or a hand-designed backbone
    if info.head != "embedding":
        raise ExportError(f"{checkpoint}: a classifier cannot be exported as a face embedding model")
    wrapper = ContractWrapper(model, info.in_channels, info.input_size).eval()
    out.write_bytes(export_graph(wrapper, opset))
    verification = verify_onnx(out, wrapper, face_crops())
    card = ModelCard(arch=info.description, arch_short=info.short, params=info.params, macs=info.macs,
                     embedding_size=info.embedding_dim, onnx_sha256=sha256_file(out), facenas_version=__version__,
                     source_checkpoint=str(checkpoint), trained_channels=info.in_channels,
                     trained_size=info.input_size)
    if calibration is not None:
        onnx_side = measure(OnnxEmbedder(out), calibration)
        # the contract's input on both sides: the wrapper in PyTorch, not the bare model at its trained size
        compare_on_calibration(measure(TorchEmbedder(wrapper, CONTRACT_SIZE, 3), calibration), onnx_side,
                               verification, out)
        _calibrate(card, onnx_side, calibration.issame, calibration_name)
        card.evaluation[calibration_name]["export_check"] = {
            "accuracy_pytorch": verification.accuracy_checkpoint, "accuracy_onnx": verification.accuracy_onnx,
            "max_distance_difference": verification.max_distance_difference,
            "pairs_across_a_threshold": verification.pairs_across_a_threshold, "warnings": verification.warnings}
    card_path(out).write_text(card.to_json())
    result = ExportReport(str(out), str(card_path(out)), verification, asdict(card))
    timed = out
    if quantize:
        result.quantized = quantize_int8(out, card, calibration, calibration_name, target)
        if target is not None and target.precision == "int8":
            timed = Path(result.quantized["int8_onnx"])
    if target is not None:
        result.latency = record_latency(timed, target)
    return result


def record_latency(path: Path, target: TargetConfig) -> dict[str, Any]:
    """Time an exported file on `target` and put the figures, with how they were measured, on its card."""
    from facenas.export.latency import latency_report, onnx_latency

    record = latency_report(onnx_latency(path, target), target)
    card_file = card_path(path)
    card = ModelCard.from_dict(json.loads(card_file.read_text()))
    card_file.write_text(replace(card, latency=record).to_json())
    return record


def calibration_crops(calibration: Optional[PairSet]) -> np.ndarray:
    """The images static quantisation calibrates on, at the contract's input: a calibration set's first 256, or
    synthetic face crops where there is none (as the search's int8 latency target has)."""
    from facenas.evaluate.verify import fit_images

    images = calibration.images[:256] if calibration is not None else face_crops(64, seed=1)
    return fit_images(images, CONTRACT_SIZE, 3)


def quantize_qdq(float_model: bytes | Path, images: np.ndarray) -> bytes:
    """onnxruntime's static QDQ quantisation (per-channel int8 weights and activations) calibrated on `images`
    (uint8 at the contract's input): the one int8 conversion of `facenas export --quantize int8` and of the
    search's int8 latency target, so that both time the same graph."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"data": normalise(images[i:i + 16])} for i in range(0, len(images), 16)])

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantized = (Path(tmp) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        if isinstance(float_model, bytes):
            source.write_bytes(float_model)
        else:
            source = Path(float_model)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return quantized.read_bytes()


def quantize_int8(float_path: Path, card: ModelCard, calibration: Optional[PairSet], calibration_name: str,
                  target: Optional[TargetConfig] = None) -> dict[str, Any]:
    """Static int8 quantisation (QDQ, per-channel) with onnxruntime's tools, compared side by side; latencies are
    timed with `target`'s threads, repeats and warm-up (default `COMPARISON_TARGET`) at batches 1 and 32."""
    from facenas.evaluate.verify import OnnxEmbedder
    from facenas.export.latency import onnx_latency

    int8_path = float_path.with_name(float_path.stem + ".int8.onnx")
    int8_path.write_bytes(quantize_qdq(float_path, calibration_crops(calibration)))
    base = target or COMPARISON_TARGET
    files = {"float32": (float_path, "fp32"), "int8": (int8_path, "int8")}
    latency = {f"latency_ms_batch{batch}": {
        name: onnx_latency(path, base.model_copy(update={"batch": batch, "precision": precision})).to_dict()
        for name, (path, precision) in files.items()} for batch in (1, 32)}
    crops = face_crops()
    floats = OnnxEmbedder(float_path).embed(crops)
    ints = OnnxEmbedder(int8_path).embed(crops)
    comparison: dict[str, Any] = {
        "int8_onnx": str(int8_path), "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights and "
                                               "activations, calibrated on the calibration images",
        "size_bytes": {"float32": float_path.stat().st_size, "int8": int8_path.stat().st_size},
        **latency,
        "embedding_min_cosine_vs_float": _min_cosine(ints, floats),
    }
    int8_card = ModelCard(**{**asdict(card), "threshold": None, "onnx_sha256": sha256_file(int8_path),
                             "quantization": "int8 (onnxruntime static QDQ)", "evaluation": {}, "latency": None})
    if calibration is not None:
        float_accuracy = card.evaluation[calibration_name]["accuracy"]  # measured by export_onnx already
        int8_accuracy = _calibrate(int8_card, measure(OnnxEmbedder(int8_path), calibration), calibration.issame,
                                   calibration_name)
        comparison["accuracy"] = {"float32": float_accuracy, "int8": int8_accuracy, "set": calibration_name}
    card_path(int8_path).write_text(int8_card.to_json())
    comparison["int8_card"] = str(card_path(int8_path))
    return comparison


def calibration_from_run(checkpoint: str | Path) -> tuple[Optional[PairSet], str]:
    """The held-out pairs of the training run a checkpoint comes from (its run directory's config.yaml)."""
    from facenas.config import load_config
    from facenas.data.faces.splits import load_face_splits

    path = Path(checkpoint)
    for folder in (path.parent, path.parent.parent):
        config_file = folder / "config.yaml"
        if config_file.exists():
            config = load_config(config_file)
            if config.task == "faces":
                splits = load_face_splits(config.faces.data, config.seed)
                return splits.pairs, f"held-out identities of {config.name} ({splits.description})"
    return None, ""
