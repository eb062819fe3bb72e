"""Latency of a face network on its serving runtime, measured rather than predicted.

The service runs the exported model on onnxruntime's CPU provider (`facenas serve`), and neither parameters nor
MACs tell how long that takes: onnxruntime fuses operations and picks a kernel per operation, and a depthwise
convolution does far less work per memory access than a full one, so nets of equal MACs need not take equal time.
So a candidate's latency is measured where it will run: the net is exported exactly as `facenas export` writes it
(insightface's 3x112x112 contract, the same wrapper, exporter and opset; for int8 the same static QDQ quantisation)
and timed on onnxruntime with the service's session options. `facenas export` times its file with the same function
(`onnx_latency`), so the search's figure and the exported model's agree.

The latency is the median of `repeats` individually timed calls after `warmup` untimed ones; the interquartile
range is its spread, which says how far two measurements of the same net may differ on a busy machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facenas.config import TargetConfig
from facenas.errors import ExportError
from facenas.evaluate.verify import session_options
from facenas.export.onnx import (
    CONTRACT_SIZE,
    ContractWrapper,
    calibration_crops,
    export_graph,
    face_crops,
    normalise,
    quantize_qdq,
)
from facenas.models import BackboneSpec, build_backbone, build_model
from facenas.models.checkpoint import describe_face_model, first_line
from facenas.space.arch import Arch


class LatencyError(ExportError):
    """A latency could not be measured: onnxruntime is missing, or the model does not export or does not run."""


@dataclass(frozen=True)
class Latency:
    """Milliseconds per call of `batch` faces: the median and quartiles of `repeats` timed calls."""

    median_ms: float
    q25_ms: float
    q75_ms: float
    repeats: int
    threads: int
    batch: int
    precision: str

    @property
    def spread_ms(self) -> float:
        """The interquartile range: how much a second measurement of the same model may move."""
        return self.q75_ms - self.q25_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread_ms": self.spread_ms}


def _onnxruntime(subject: str) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise LatencyError(f"{subject}: measuring latency needs onnxruntime, which is not installed "
                           "(pip install onnxruntime)") from None
    return onnxruntime


def _measure(model: bytes | str | Path, target: TargetConfig, subject: str) -> Latency:
    ort = _onnxruntime(subject)
    if not isinstance(model, bytes):
        if not Path(model).is_file():
            raise LatencyError(f"{subject}: no such ONNX file")
        model = str(model)
    try:
        session = ort.InferenceSession(model, sess_options=session_options(target.threads),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise LatencyError(f"{subject}: not a loadable ONNX model ({first_line(exc)})") from None
    first = session.get_inputs()[0]
    shape = (target.batch, 3, CONTRACT_SIZE, CONTRACT_SIZE)
    if len(first.shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(first.shape, shape)):
        raise LatencyError(f"{subject}: input {first.name!r} has shape {first.shape}; latency is measured on the "
                           f"face contract's [N, 3, {CONTRACT_SIZE}, {CONTRACT_SIZE}]")
    feed = {first.name: normalise(np.repeat(face_crops(1), target.batch, axis=0))}
    times = np.empty(target.repeats)
    try:
        for _ in range(target.warmup):
            session.run(None, feed)
        for i in range(target.repeats):
            began = time.perf_counter()
            session.run(None, feed)
            times[i] = time.perf_counter() - began
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise LatencyError(f"{subject}: onnxruntime failed to run it ({first_line(exc)})") from None
    q25, median, q75 = np.percentile(times * 1000, [25, 50, 75])
    return Latency(float(median), float(q25), float(q75), target.repeats, target.threads, target.batch,
                   target.precision)


def onnx_latency(model: bytes | str | Path, target: TargetConfig) -> Latency:
    """Time an ONNX model (a file, or its bytes) with the contract's input on `target`: `facenas export`'s
    measurement of its file, and the search's of each candidate (`arch_latency`)."""
    subject = "ONNX model (in memory)" if isinstance(model, bytes) else str(model)
    return _measure(model, target, subject)


def arch_model(arch: Arch | BackboneSpec, seed: int = 0) -> torch.nn.Module:
    """`arch` (a searched chain or a hand-designed backbone) built in eval mode with weights drawn under `seed`,
    leaving the global random state as it was.

    Batch norms get statistics and scales drawn like a trained net's: left at their initial values they would be
    equal tensors, which the exporter merges into one initialiser behind Identity nodes, a graph no trained
    checkpoint gives.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (build_backbone(arch) if isinstance(arch, BackboneSpec) else build_model(arch)).eval()
        with torch.no_grad():
            for norm in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
                for tensor, low, high in ((norm.running_mean, -0.1, 0.1), (norm.running_var, 0.8, 1.2),
                                          (norm.weight, 0.8, 1.2), (norm.bias, -0.1, 0.1)):
                    if tensor is not None:
                        tensor.uniform_(low, high)
    return model


def arch_graph(arch: Arch | BackboneSpec, precision: str = "fp32", seed: int = 0) -> bytes:
    """The ONNX bytes `facenas export` would write for a checkpoint of `arch` (int8: its `--quantize int8` file,
    calibrated on synthetic crops), with the weights of `arch_model`: latency does not depend on the weights."""
    try:
        model = arch_model(arch, seed)
        info = describe_face_model(model, arch)
        graph = export_graph(ContractWrapper(model, info.in_channels, info.input_size).eval())
        return quantize_qdq(graph, calibration_crops(None)) if precision == "int8" else graph
    except Exception as exc:  # noqa: BLE001 - torch, onnx and onnxruntime's tools raise their own types
        raise LatencyError(f"{_subject(arch)}: could not be exported to ONNX to time it "
                           f"({first_line(exc)})") from None


def _subject(arch: Arch | BackboneSpec) -> str:
    return f"{'backbone' if isinstance(arch, BackboneSpec) else 'architecture'} {arch.short()}"


def arch_latency(arch: Arch | BackboneSpec, target: TargetConfig, seed: int = 0) -> Latency:
    """A candidate's (or a hand design's) latency on `target`, measured on the model `facenas export` would write
    for it."""
    subject = _subject(arch)
    _onnxruntime(subject)  # before building and exporting anything
    return _measure(arch_graph(arch, target.precision, seed), target, subject)


def latency_report(latency: Latency, target: TargetConfig) -> dict[str, Any]:
    """What a report or a model card keeps of a measurement: the figures and how they were taken (a latency means
    little without the runtime, its version and the machine's cores)."""
    import onnxruntime

    return {**latency.to_dict(), "runtime": target.runtime, "warmup": target.warmup,
            "onnxruntime_version": onnxruntime.__version__, "cpus": os.cpu_count()}
